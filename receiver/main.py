"""``servertrack receiver``: validate, de-duplicate and batch samples for the aggregator."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.common import endpoints
from servertrack.common.config import add_option, add_switch, setup_logging
from servertrack.common.lifecycle import stop_on_signals
from servertrack.receiver.daemon import ReceiverConfig, ReceiverDaemon


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack receiver", description=__doc__)
    add_option(parser, "--bind", endpoints.INGEST, "endpoint the agents' PUB sockets connect to")
    add_option(
        parser,
        "--control",
        endpoints.RECEIVER_CONTROL,
        "endpoint for records from the API and requests from the aggregator",
    )
    add_option(
        parser, "--aggregator", endpoints.AGGREGATOR_BATCHES, "aggregator batch endpoint to push to"
    )
    add_switch(parser, "--accept-pickle", "also accept the legacy pickle.gz wire format")
    add_option(parser, "--flush-interval", 1.0, "seconds between batches", float)
    add_option(parser, "--retention", 300.0, "seconds of batches kept in the time index", float)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    config = ReceiverConfig(
        bind=args.bind,
        control=args.control,
        aggregator=args.aggregator,
        accept_pickle=args.accept_pickle,
        flush_interval=args.flush_interval,
        retention=args.retention,
    )
    with zmq.Context() as context:
        daemon = ReceiverDaemon(config, context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            daemon.run()
    return 0
