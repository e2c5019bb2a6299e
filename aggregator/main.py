"""``servertrack aggregator``: keep per-server rollups and answer queries."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.common import endpoints
from servertrack.common.config import add_option, setup_logging
from servertrack.common.lifecycle import stop_on_signals


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack aggregator", description=__doc__)
    add_option(
        parser,
        "--batches",
        endpoints.AGGREGATOR_BATCHES,
        "endpoint to bind for the receiver's batches",
    )
    add_option(parser, "--query", endpoints.AGGREGATOR_QUERY, "endpoint to bind for API queries")
    add_option(
        parser,
        "--receiver-control",
        endpoints.RECEIVER_CONTROL,
        "receiver control endpoint (to look up server names)",
    )
    add_option(
        parser,
        "--snapshot",
        None,
        "file to snapshot the rollups to and restore from (none: memory only)",
    )
    add_option(parser, "--snapshot-interval", 30.0, "seconds between snapshots", float)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    config = AggregatorConfig(
        args.batches,
        args.query,
        args.receiver_control,
        snapshot=args.snapshot,
        snapshot_interval=args.snapshot_interval,
    )
    with zmq.Context() as context:
        daemon = AggregatorDaemon(config, context=context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            daemon.run()
    return 0
