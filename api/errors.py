"""A refused request of the dashboard's routes, rendered by the app like every other 4xx."""

from __future__ import annotations


class BadRequest(Exception):
    """A 400 with a short machine ``reason`` and a readable ``message`` (the app's JSON error
    shape: ``title``, ``reason``, ``description``)."""

    status = "400 Bad Request"
    index = None

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
