"""Helpers of the Redis host tests: reading a server's view on any API."""

from __future__ import annotations

from typing import Any

from servertrack.testing.hosts import HostUnderTest, http_json

VISIBLE = 10.0
"""Seconds within which a sample recorded on one host shows on every API (flush + batch)."""


def loads(base: str, name: str) -> tuple[int, Any]:
    """``GET /servers/{name}/loads`` on the API at ``base``: status and body."""
    return http_json("GET", f"{base}/servers/{name}/loads")


def shown(base: str, name: str, samples: int) -> dict[str, Any] | None:
    """The server's view on ``base`` once it holds ``samples`` samples in its hours."""
    status, view = loads(base, name)
    if status == 200 and sum(b["samples"] for b in view["hours"]) == samples:
        return view
    return None


def pid_of(host: HostUnderTest, daemon: str) -> int | None:
    """The pid of the host's ``daemon`` child, or None while it has none."""
    try:
        return host.child(daemon).pid
    except LookupError:  # between a death and the restart
        return None
