"""The ``--store`` flags, shared by ``servertrack run``, ``aggregator`` and ``api``.

``--store memory`` (the default) keeps the rollups in the aggregator's memory; a Redis URL
(``redis://``, ``rediss://``, ``redis+cluster://``) puts them in Redis, where several monitoring
hosts write and any number of APIs read.
"""

from __future__ import annotations

import argparse

from servertrack.common.config import add_option, non_negative_float, positive_float
from servertrack.store.redis_url import BadStoreUrl, parse_store_url, read_password_file

MEMORY = "memory"
DEFAULT_FLUSH = 1.0


def store_url(text: str) -> str:
    """``memory`` or a Redis URL this project can use (checked when the flag is read)."""
    if text == MEMORY:
        return text
    try:
        parse_store_url(text)
    except BadStoreUrl as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text!r}")
    return value


def add_store_options(parser: argparse.ArgumentParser, writer: bool) -> None:
    """``--store`` and ``--store-password-file``; with ``writer`` also the flush and replica
    flags of whoever merges into the store."""
    add_option(
        parser,
        "--store",
        MEMORY,
        "where the rollups live: memory, redis://HOST:PORT/DB, rediss://... (TLS) or "
        "redis+cluster://HOST:PORT[,HOST:PORT...]",
        store_url,
    )
    add_option(
        parser,
        "--store-password-file",
        None,
        "file whose first line is the Redis password (instead of one in the URL)",
    )
    add_option(
        parser,
        "--store-timeout",
        1.0,
        "seconds Redis may take to answer before the store counts as unavailable",
        positive_float,
    )
    if writer:
        add_option(
            parser,
            "--store-flush",
            DEFAULT_FLUSH,
            "seconds between two merges of the held batches into Redis",
            positive_float,
        )
        add_option(
            parser,
            "--store-wait-replicas",
            0,
            "a merge counts as done only once WAIT confirms this many replicas",
            replicas,
        )
        add_option(
            parser,
            "--store-hold",
            300.0,
            "seconds of batches held while Redis is unreachable (beyond: dropped and counted)",
            non_negative_float,
        )


def store_password(args: argparse.Namespace) -> str | None:
    """The password of ``--store-password-file``, if given (ValueError with the reason)."""
    path = getattr(args, "store_password_file", None)
    return read_password_file(path) if path else None
