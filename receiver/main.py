"""``servertrack receiver``: validate, de-duplicate and batch samples for the aggregator."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.common import endpoints
from servertrack.common.config import add_option, add_switch, setup_logging
from servertrack.common.lifecycle import stop_on_signals
from servertrack.receiver import curve
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
    add_option(
        parser,
        "--aggregator-query",
        endpoints.AGGREGATOR_QUERY,
        "aggregator query endpoint, asked at start for each server's newest seq ('' for none)",
    )
    add_switch(parser, "--accept-pickle", "also accept the legacy pickle.gz wire format")
    add_option(parser, "--flush-interval", 1.0, "seconds between batches", float)
    add_option(parser, "--retention", 300.0, "seconds of batches kept in the time index", float)
    add_option(
        parser,
        "--curve-secret",
        None,
        "this receiver's CURVE secret key file (from servertrack keys); needs --authorized-keys",
    )
    add_option(
        parser,
        "--authorized-keys",
        None,
        "directory of agents' public key files (*.key); only those agents are accepted, and a "
        "file added later admits its agent without a restart",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        curve.check_config(args.curve_secret, args.authorized_keys)
    except curve.CurveConfigError as err:
        raise SystemExit(f"servertrack receiver: {err}") from None
    config = ReceiverConfig(
        bind=args.bind,
        control=args.control,
        aggregator=args.aggregator,
        aggregator_query=args.aggregator_query or None,
        accept_pickle=args.accept_pickle,
        flush_interval=args.flush_interval,
        retention=args.retention,
        curve_secret=args.curve_secret,
        authorized_keys=args.authorized_keys,
    )
    with zmq.Context() as context:
        daemon = ReceiverDaemon(config, context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            daemon.run()
    return 0
