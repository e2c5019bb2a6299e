"""Rollup stores beyond the in-memory one: Redis (one redis-server or a Redis Cluster)."""
