"""The ``--store`` flags, shared by ``servertrack run``, ``aggregator`` and ``api``.

``--store memory`` (the default) keeps the rollups in the aggregator's memory; a Redis URL
(``redis://``, ``rediss://``, ``redis+cluster://``) puts them in Redis, where several monitoring
hosts write and any number of APIs read.
"""

from __future__ import annotations

import argparse

from servertrack.common.config import non_negative_float, path, positive_float
from servertrack.common.settings import ConfigError, Option
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


STORE_OPTIONS = (
    Option(
        "--store",
        MEMORY,
        "where the rollups live: memory, redis://HOST:PORT/DB, rediss://... (TLS) or "
        "redis+cluster://HOST:PORT[,HOST:PORT...]",
        store_url,
    ),
    Option(
        "--store-password-file",
        None,
        "file whose first line is the Redis password (instead of one in the URL)",
        path,
    ),
    Option(
        "--store-timeout",
        1.0,
        "seconds Redis may take to answer before the store counts as unavailable",
        positive_float,
    ),
)
"""The store, its password file and its timeout: what the aggregator and every API reading the
store take."""
WRITER_OPTIONS = (
    Option(
        "--store-flush",
        DEFAULT_FLUSH,
        "seconds between two merges of the held batches into Redis",
        positive_float,
    ),
    Option(
        "--store-wait-replicas",
        0,
        "a merge counts as done only once WAIT confirms this many replicas",
        replicas,
    ),
    Option(
        "--store-hold",
        300.0,
        "seconds of batches held while Redis is unreachable (beyond: dropped and counted)",
        non_negative_float,
    ),
)
"""The flush and replica options of whoever merges into the store (the aggregator)."""


def check_password_file(file: str | None) -> None:
    """ConfigError naming ``--store-password-file`` when it is given but cannot be used."""
    if file:
        try:
            read_password_file(file)
        except BadStoreUrl as err:
            raise ConfigError(str(err), "--store-password-file") from None


def store_password(settings: object) -> str | None:
    """The password of ``--store-password-file`` (parsed arguments or settings), if given
    (ValueError with the reason)."""
    file = getattr(settings, "store_password_file", None)
    return read_password_file(file) if file else None
