"""Limits that bound memory and open files, shared by the daemons that enforce them."""

import contextlib
import resource

DEFAULT_MAX_SERVERS = 250_000
"""Server names tracked at most: about 2 GB of aggregator memory and 0.5 GB of receiver memory."""
DEFAULT_DEDUP_LIMIT = 1_000_000
"""(server, ts) keys of seq-less samples remembered for de-duplication, about 150 MB."""


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (up to the hard limit);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft
