"""``servertrack aggregator``: keep per-server rollups and answer queries."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

import zmq

from servertrack.aggregator.daemon import AggregatorDaemon
from servertrack.aggregator.settings import AggregatorSettings
from servertrack.aggregator.store import RollupStore
from servertrack.alerts.cli import EXIT_BAD_FILE
from servertrack.alerts.rules import RulesError
from servertrack.common import rpc
from servertrack.common.config import setup_logging
from servertrack.common.lifecycle import fatal, hold_lock, stop_on_signals
from servertrack.store.options import MEMORY, store_password

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack aggregator", description=__doc__)
    AggregatorSettings.add_options(parser)
    return parser


def make_store(settings: AggregatorSettings) -> RollupStore | None:
    """The store of ``--store``: None for the in-memory default (the daemon builds it).

    A Redis store is written with no server limit of its own: the receiver refuses a new
    server beyond its ``--max-servers`` before it answers, and anything it accepted must not be
    dropped afterwards for a limit it could not see (another host's, or the store's count of
    every host's servers). Each receiver tracks a name for 25 hours after its last sample,
    longer than Redis keeps the server, so a host's share of Redis stays within its limit
    (until its receiver restarts, which starts its table again from the servers Redis holds)."""
    if settings.store == MEMORY:
        return None
    # Only a Redis store needs redis-py: memory mode never imports it.
    from servertrack.aggregator.redis_rollups import RedisRollups
    from servertrack.store.redis_store import RedisStore

    try:
        password = store_password(settings)
        writer = RedisStore(
            settings.store,
            password=password,
            max_servers=None,
            wait_replicas=settings.store_wait_replicas,
            timeout=settings.store_timeout,
        )
        reader = RedisStore(settings.store, password=password, timeout=settings.store_timeout)
    except ValueError as err:
        fatal(f"servertrack aggregator: {err}")
    return RedisRollups(writer, hold=settings.store_hold, reader=reader)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    settings = AggregatorSettings.checked(args)
    try:
        config = settings.daemon_config()
    except RulesError as err:  # changed since the flag was checked: refused as the flag would be
        print(f"servertrack aggregator: --rules: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_FILE
    store = make_store(settings)
    if store is not None and settings.snapshot:
        log.info("the rollups live in %s: no snapshot is written", settings.store)
        config.snapshot = None
    lock = None
    if settings.snapshot:
        try:
            lock = hold_lock(f"{settings.snapshot}.lock", "the snapshot's directory")
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
