"""API errors: ``falcon.HTTPError`` subclasses, and the one serializer every error goes through.

Every error a client gets, ours and Falcon's own (unknown route, wrong method, unsupported media
type...), is the JSON object ``{"title", "reason", "description"}`` (plus ``index`` for the refused
item of a batch): ``title`` is the HTTP status text and ``reason`` a short machine-readable cause.
"""

from __future__ import annotations

import http
import json
from typing import Any

import falcon


def status_text(status: str | int | http.HTTPStatus) -> str:
    """``"404 Not Found"`` or ``404`` → ``"Not Found"``."""
    line: str = falcon.code_to_http_status(status)  # falcon's lru_cache wrapper loses the type
    return line[4:]


def status_reason(status: str | int | http.HTTPStatus) -> str:
    """``"405 Method Not Allowed"`` → ``"method_not_allowed"``."""
    return status_text(status).lower().replace(" ", "_").replace("-", "_")


class ApiError(falcon.HTTPError):
    """A client mistake or a backend outage, with the ``reason`` it is counted under."""

    def __init__(
        self,
        status: str,
        reason: str,
        description: str,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            status, title=status_text(status), description=description, headers=headers
        )
        self.reason = reason
        self.index = index


class BadRequest(ApiError):
    def __init__(self, reason: str, description: str, index: int | None = None) -> None:
        super().__init__(falcon.HTTP_400, reason, description, index)


class Unprocessable(ApiError):
    def __init__(self, reason: str, description: str, index: int | None = None) -> None:
        super().__init__(falcon.HTTP_422, reason, description, index)


class PayloadTooLarge(ApiError):
    def __init__(self, reason: str, description: str) -> None:
        super().__init__(falcon.HTTP_413, reason, description)


class NotFound(ApiError):
    def __init__(self, reason: str, description: str) -> None:
        super().__init__(falcon.HTTP_404, reason, description)


class ServiceUnavailable(ApiError):
    def __init__(self, reason: str, description: str) -> None:
        super().__init__(falcon.HTTP_503, reason, description)


def error_body(req: falcon.Request, error: falcon.HTTPError) -> dict[str, Any]:
    """The documented error shape for any ``HTTPError``."""
    body: dict[str, Any] = {
        "title": status_text(error.status),
        "reason": getattr(error, "reason", None) or status_reason(error.status),
        "description": error.description or f"{req.method} {req.path}: {status_text(error.status)}",
    }
    index = getattr(error, "index", None)
    if index is not None:
        body["index"] = index
    return body


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """``App.set_error_serializer``: JSON whatever the client accepts."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(error_body(req, error)).encode()
