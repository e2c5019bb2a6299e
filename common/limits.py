"""Limits that bound memory, shared by the daemons that enforce them."""

DEFAULT_MAX_SERVERS = 250_000
"""Server names tracked at most: about 2 GB of aggregator memory and 0.5 GB of receiver memory."""
DEFAULT_DEDUP_LIMIT = 1_000_000
"""(server, ts) keys of seq-less samples remembered for de-duplication, about 150 MB."""
