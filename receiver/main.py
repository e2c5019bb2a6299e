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
    non_negative_float,
    non_negative_int,
    optional_endpoint,
    optional_tcp_endpoint,
    positive_float,
    positive_int,
    setup_logging,
)
from servertrack.common.lifecycle import fatal, stop_on_signals
from servertrack.common.limits import DEFAULT_DEDUP_LIMIT, DEFAULT_MAX_SERVERS
from servertrack.receiver import curve, graphite
from servertrack.receiver.daemon import ReceiverConfig, ReceiverDaemon
from servertrack.receiver.graphite_listener import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MIN_RATE,
)
from servertrack.receiver.ingest_limit import FilesTooFew


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
    add_option(
        parser,
        "--ingest-max-connections",
        0,
        "connections the --bind port holds at most (agents, one each); a newcomer beyond it is "
        "cut at once (ingest_connections_refused); 0 for what the open-files limit leaves",
        non_negative_int,
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
    add_option(
        parser,
        "--graphite",
        "",
        "tcp://HOST:PORT to take Graphite plaintext on, e.g. tcp://127.0.0.1:2003 ('' for off)",
        optional_tcp_endpoint,
    )
    add_option(
        parser,
        "--graphite-map",
        None,
        "file of rules mapping Graphite paths to a server's cpu or ram, tried before the "
        "built-in ones (see the README)",
    )
    add_option(
        parser,
        "--graphite-max-line",
        graphite.MAX_LINE,
        "bytes a Graphite line may hold; longer ones are discarded (line_too_long)",
        positive_int,
    )
    add_option(
        parser,
        "--graphite-rate",
        graphite.DEFAULT_RATE,
        "Graphite lines per second one connection may send; one over it is closed (rate_limited)",
        positive_float,
    )
    add_option(
        parser,
        "--graphite-max-connections",
        DEFAULT_MAX_CONNECTIONS,
        "Graphite connections open at most; newcomers beyond are closed at once",
        positive_int,
    )
    add_option(
        parser,
        "--graphite-idle-timeout",
        DEFAULT_IDLE_TIMEOUT,
        "seconds a Graphite connection may stay silent before it is closed",
        positive_float,
    )
    add_option(
        parser,
        "--graphite-line-timeout",
        DEFAULT_LINE_TIMEOUT,
        "seconds a Graphite line may take from its first byte to its newline; a connection "
        "slower than that is closed (slow_line)",
        positive_float,
    )
    add_option(
        parser,
        "--graphite-min-rate",
        DEFAULT_MIN_RATE,
        "bytes a second a Graphite connection must send on average over each "
        "--graphite-idle-timeout window, or be closed (slow_rate); 0 for no minimum",
        non_negative_float,
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
    rules: list[graphite.Rule] = []
    if args.graphite_map:
        try:
            rules = graphite.load_rules(args.graphite_map)
        except graphite.RuleError as err:
            fatal(f"servertrack receiver: --graphite-map: {err}")
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
        graphite=args.graphite or None,
        graphite_rules=tuple(rules),
        graphite_max_line=args.graphite_max_line,
        graphite_rate=args.graphite_rate,
        graphite_max_connections=args.graphite_max_connections,
        graphite_idle_timeout=args.graphite_idle_timeout,
        graphite_line_timeout=args.graphite_line_timeout,
        graphite_min_rate=args.graphite_min_rate,
        ingest_max_connections=args.ingest_max_connections or None,
    )
    with zmq.Context() as context:
        daemon = ReceiverDaemon(config, context)
        with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
            try:
                daemon.run()
            except (rpc.BindError, FilesTooFew) as err:
                fatal(f"servertrack receiver: {err}")
    return 0
