"""``servertrack aggregator``: keep per-server rollups and answer queries."""

from __future__ import annotations

import argparse
import contextlib
import logging

import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.aggregator.redis_rollups import RedisRollups
from servertrack.aggregator.store import RollupStore
from servertrack.common import endpoints, rpc
from servertrack.common.config import (
    add_option,
    endpoint,
    positive_float,
    positive_int,
    setup_logging,
)
from servertrack.common.lifecycle import fatal, hold_lock, stop_on_signals
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.store.options import MEMORY, add_store_options, store_password
from servertrack.store.redis_store import RedisStore

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack aggregator", description=__doc__)
    add_option(
        parser,
        "--batches",
        endpoints.AGGREGATOR_BATCHES,
        "endpoint to bind for the receiver's batches",
        endpoint,
    )
    add_option(
        parser, "--query", endpoints.AGGREGATOR_QUERY, "endpoint to bind for API queries", endpoint
    )
    add_option(
        parser,
        "--receiver-control",
        endpoints.RECEIVER_CONTROL,
        "receiver control endpoint (to look up server names)",
        endpoint,
    )
    add_option(
        parser,
        "--snapshot",
        None,
        "file to snapshot the rollups to and restore from (none: memory only)",
    )
    add_option(parser, "--snapshot-interval", 30.0, "seconds between snapshots", positive_float)
    add_option(
        parser,
        "--max-servers",
        DEFAULT_MAX_SERVERS,
        "servers tracked at most in memory; samples of new ones beyond it are dropped "
        "(server_limit). With --store redis the receivers' limits apply instead (a record is "
        "refused before it is answered, never dropped after)",
        positive_int,
    )
    add_store_options(parser, writer=True)
    return parser


def make_store(args: argparse.Namespace) -> RollupStore | None:
    """The store of ``--store``: None for the in-memory default (the daemon builds it).

    A Redis store is written with no server limit of its own: the receiver refuses a new
    server beyond its ``--max-servers`` before it answers, and anything it accepted must not be
    dropped afterwards for a limit it could not see (another host's, or the store's count of
    every host's servers). Each receiver tracks a name for 25 hours after its last sample,
    longer than Redis keeps the server, so a host's share of Redis stays within its limit
    (until its receiver restarts, which starts its table again from the servers Redis holds)."""
    if args.store == MEMORY:
        return None
    password = store_password(args)
    try:
        writer = RedisStore(
            args.store,
            password=password,
            max_servers=None,
            wait_replicas=args.store_wait_replicas,
            timeout=args.store_timeout,
        )
        reader = RedisStore(args.store, password=password, timeout=args.store_timeout)
    except ValueError as err:
        fatal(f"servertrack aggregator: {err}")
    return RedisRollups(writer, hold=args.store_hold, reader=reader)


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
        max_servers=args.max_servers,
        store_flush=args.store_flush,
    )
    store = make_store(args)
    if store is not None and args.snapshot:
        log.info("the rollups live in %s: no snapshot is written", args.store)
        config.snapshot = None
    lock = None
    if args.snapshot:
        try:
            lock = hold_lock(f"{args.snapshot}.lock", "the snapshot's directory")
        except OSError as err:
            fatal(f"servertrack aggregator: {err}")
    try:
        with zmq.Context() as context:
            daemon = AggregatorDaemon(config, store, context=context)
            with stop_on_signals(daemon.stop), contextlib.suppress(KeyboardInterrupt):
                try:
                    daemon.run()
                except rpc.BindError as err:
                    fatal(f"servertrack aggregator: {err}")
    finally:
        if lock is not None:
            lock.close()
    return 0
