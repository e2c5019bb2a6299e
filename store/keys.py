"""Redis key names of the store.

Per server, under the hash tag ``{<name>}`` so that one Function call covers them all and a
cluster keeps them on one node: ``st:{<name>}:m`` (minute ring), ``st:{<name>}:h`` (hour cells,
meta and per-writer guards), ``st:{<name>}:i`` (per-writer health). The index is sharded in
``SHARDS`` pairs under the tag ``{#<k>}`` (``#`` cannot appear in a server name):
``st:{#<k>}:idx`` (sorted set of names, all scored 0, so ordered by name) and ``st:{#<k>}:sum``
(hash of summary records). A name's shard is a stable hash of the name (CRC-32). Readers
cache answers until the change counter ``st:{#changes}:n``, which every writer raises after each
merge, moves.
"""

from __future__ import annotations

import zlib
from typing import Any

from redis.crc import key_slot

PREFIX = "st"
SHARDS = 64
CHANGES = f"{PREFIX}:{{#changes}}:n".encode()
"""The change counter (see the module docstring)."""


def server_keys(name: str) -> tuple[bytes, bytes, bytes]:
    """The minute, hour and health keys of server ``name``."""
    base = f"{PREFIX}:{{{name}}}:".encode()
    return base + b"m", base + b"h", base + b"i"


def shard_of(name: str) -> int:
    return zlib.crc32(name.encode()) % SHARDS


def shard_keys(shard: int) -> tuple[bytes, bytes]:
    """The index sorted set and the summary hash of shard ``shard``."""
    base = f"{PREFIX}:{{#{shard:02d}}}:".encode()
    return base + b"idx", base + b"sum"


def slot_of(key: bytes) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag's CRC16 modulo 16384)."""
    return key_slot(key)


def on_shard(shard: int, command: str, which: int, *args: Any) -> tuple[int, tuple[Any, ...]]:
    """A read command on shard ``shard``'s index (``which`` 0) or summary (1) key."""
    key = shard_keys(shard)[which]
    return slot_of(key), (command, key, *args)
