"""Rollup stores beyond the in-memory one: Redis (one redis-server or a Redis Cluster)."""

from servertrack.store.calls import MergeResult
from servertrack.store.cells import BatchColumns
from servertrack.store.health import ServerHealth
from servertrack.store.redis_nodes import CorruptKey, StoreUnavailable
from servertrack.store.redis_store import RedisStore
from servertrack.store.redis_url import BadStoreUrl, parse_store_url
from servertrack.store.summary import FleetRows

__all__ = [
    "BadStoreUrl",
    "BatchColumns",
    "CorruptKey",
    "FleetRows",
    "MergeResult",
    "RedisStore",
    "ServerHealth",
    "StoreUnavailable",
    "parse_store_url",
]
