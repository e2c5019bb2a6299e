"""``servertrack receiver``: validate, de-duplicate and batch samples for the aggregator."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.common import rpc
from servertrack.common.config import setup_logging
from servertrack.common.lifecycle import fatal, stop_on_signals
from servertrack.receiver.daemon import ReceiverDaemon
from servertrack.receiver.ingest_limit import FilesTooFew
from servertrack.receiver.settings import ReceiverSettings


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack receiver", description=__doc__)
    ReceiverSettings.add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    settings = ReceiverSettings.checked(args)
    with zmq.Context() as context:
        daemon = ReceiverDaemon(settings.daemon_config(), context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            try:
                daemon.run()
            except (rpc.BindError, FilesTooFew) as err:
                fatal(f"servertrack receiver: {err}")
    return 0
