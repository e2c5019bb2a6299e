"""The API's parts, built from its settings: the backend, the read path over it, the admission
rule and the WSGI app. Both HTTP servers run what :func:`build_app` returns (granian builds it in
each of its worker processes); whoever calls it starts the read path and closes it.
"""

from __future__ import annotations

import argparse
import logging
import time

import zmq

from servertrack.api.admission import Admission
from servertrack.api.app import REQUEST_DEADLINE, create_app
from servertrack.api.backend import Backend
from servertrack.api.cache import CachedReads
from servertrack.api.daemons_backend import DaemonsBackend
from servertrack.api.fastpath import FastReads
from servertrack.api.read_path import ReadPath
from servertrack.api.stats import ApiStats
from servertrack.common import endpoints
from servertrack.common.buckets import Clock
from servertrack.common.lifecycle import fatal
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.promapi.remote_read import DEFAULT_LIMITS, Limits
from servertrack.store.options import MEMORY, store_password

log = logging.getLogger(__name__)


def make_backend(args: argparse.Namespace, context: zmq.SyncContext) -> Backend:
    """ZeroMQ to the host's daemons (the in-memory store), or Redis straight for reads."""
    receiver = args.receiver_control
    aggregator = args.aggregator_query
    if args.store == MEMORY:
        return DaemonsBackend(
            receiver or endpoints.RECEIVER_CONTROL,
            aggregator or endpoints.AGGREGATOR_QUERY,
            args.backend_timeout,
            context,
            record_timeout=args.record_timeout,
        )
    if aggregator and not receiver:
        fatal(
            "servertrack api: with a Redis --store, --aggregator-query needs --receiver-control "
            "(a host's daemons); give neither for a read replica"
        )
    # Only a Redis store needs redis-py: memory mode never imports it.
    from servertrack.api.store_backend import StoreBackend
    from servertrack.store.redis_store import RedisStore

    daemons = None
    if receiver:
        daemons = DaemonsBackend(
            receiver, aggregator, args.backend_timeout, context, record_timeout=args.record_timeout
        )
    try:
        store = RedisStore(
            args.store,
            password=store_password(args),
            timeout=min(args.store_timeout, args.backend_timeout * 2),
        )
    except ValueError as err:
        fatal(f"servertrack api: {err}")
    return StoreBackend(store, daemons)


def read_tokens(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The record and read tokens; exits with a message when a token file is given but unusable.

    Paths, not tokens, are passed on the command line, so ``ps`` never shows a token.
    """
    try:
        record = read_token_file(args.token_file) if args.token_file else None
        read = read_token_file(args.read_token_file) if args.read_token_file else None
    except TokenFileError as err:
        fatal(f"servertrack api: {err}")
    log.info(
        "bearer token needed for records: %s, for reads: %s",
        "yes" if record else "no",
        "yes" if read else "no",
    )
    return record, read


def assemble(
    backend: Backend,
    admission: Admission | None = None,
    clock: Clock = time.time,
    stats: ApiStats | None = None,
    cache: CachedReads | None = None,
    read_limits: Limits = DEFAULT_LIMITS,
) -> tuple[FastReads, ReadPath, ApiStats]:
    """The WSGI app over ``backend``: the read path (not started), the Falcon app behind the
    fast read entrance, and the API's own counters. ``admission`` defaults to no tokens and
    the default request deadline; ``clock`` decides records' default ts and the window."""
    admission = admission or Admission(None, None, REQUEST_DEADLINE)
    reads = ReadPath(backend, cache)
    stats = stats or ApiStats()
    stats.include("read_cache", reads.cache.counts)
    app = create_app(reads, admission, clock, stats, read_limits)
    return FastReads(app, reads, admission), reads, stats


def build_app(
    args: argparse.Namespace,
    context: zmq.SyncContext,
    record_token: str | None,
    read_token: str | None,
) -> tuple[FastReads, ReadPath, ApiStats]:
    """The WSGI app and its read path (not started), from the API's settings. Over the host's
    daemons the read cache follows the aggregator's generation; over Redis, the store's change
    counter (every host's writer raises it)."""
    admission = Admission(record_token, read_token, args.request_deadline)
    return assemble(make_backend(args, context), admission)
