"""``servertrack receiver``: validate, de-duplicate and batch samples for the aggregator."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.common import endpoints, rpc
from servertrack.common.config import (
    add_option,
    add_switch,
    endpoint,
    optional_endpoint,
    positive_float,
    positive_int,
    setup_logging,
)
from servertrack.common.lifecycle import fatal, stop_on_signals
from servertrack.common.limits import DEFAULT_DEDUP_LIMIT, DEFAULT_MAX_SERVERS
from servertrack.receiver import curve
from servertrack.receiver.daemon import ReceiverConfig, ReceiverDaemon


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack receiver", description=__doc__)
    add_option(
        parser, "--bind", endpoints.INGEST, "endpoint the agents' PUB sockets connect to", endpoint
    )
    add_option(
        parser,
        "--control",
        endpoints.RECEIVER_CONTROL,
        "endpoint for records from the API and requests from the aggregator",
        endpoint,
    )
    add_option(
        parser,
        "--aggregator",
        endpoints.AGGREGATOR_BATCHES,
        "aggregator batch endpoint to push to",
        endpoint,
    )
    add_option(
        parser,
        "--aggregator-query",
        endpoints.AGGREGATOR_QUERY,
        "aggregator query endpoint, asked at start for each server's newest seq ('' for none)",
        optional_endpoint,
    )
    add_switch(parser, "--accept-pickle", "also accept the legacy pickle.gz wire format")
    add_option(parser, "--flush-interval", 1.0, "seconds between batches", positive_float)
    add_option(
        parser, "--retention", 300.0, "seconds of batches kept in the time index", positive_float
    )
    add_option(
        parser,
        "--max-servers",
        DEFAULT_MAX_SERVERS,
        "server names tracked at most; samples of a new name beyond it are refused (server_limit)",
        positive_int,
    )
    add_option(
        parser,
        "--dedup-limit",
        DEFAULT_DEDUP_LIMIT,
        "(server, ts) keys of seq-less samples remembered for de-duplication at most",
        positive_int,
    )
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
        fatal(f"servertrack receiver: {err}")
    config = ReceiverConfig(
        bind=args.bind,
        control=args.control,
        aggregator=args.aggregator,
        aggregator_query=args.aggregator_query or None,
        accept_pickle=args.accept_pickle,
        flush_interval=args.flush_interval,
        retention=args.retention,
        max_servers=args.max_servers,
        dedup_limit=args.dedup_limit,
        curve_secret=args.curve_secret,
        authorized_keys=args.authorized_keys,
    )
    with zmq.Context() as context:
        daemon = ReceiverDaemon(config, context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            try:
                daemon.run()
            except rpc.BindError as err:
                fatal(f"servertrack receiver: {err}")
    return 0
