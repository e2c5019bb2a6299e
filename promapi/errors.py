"""The one error the Prometheus-facing modules raise for a client's mistake.

Each carries a ``reason`` declared in ``common/counters.py`` (``PROMETHEUS_REJECT_REASONS``):
the HTTP layer answers 400 with ``{"title", "reason", "description"}`` and counts the reason.
"""

from __future__ import annotations

from servertrack.common.counters import PROMETHEUS_REJECT_REASONS


class BadPromRequest(ValueError):
    """A scrape or remote-read request that cannot be answered; ``reason`` is its short cause."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in PROMETHEUS_REJECT_REASONS:
            raise ValueError(f"undeclared reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON error body every ServerTrack 400 has."""
        return {"title": "Bad Request", "reason": self.reason, "description": self.message}
