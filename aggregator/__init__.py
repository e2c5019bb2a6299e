"""Aggregator: exact per-minute and per-hour rollups per server, and the queries over them."""
