"""Bearer tokens for the HTTP API: one for records (POST), one for reads (GET).

Either token is optional; a scope without a token stays open. ``/health`` and ``/openapi.json``
are always open, so load balancers and schema tools work without a secret. Tokens are compared
with :func:`hmac.compare_digest` so the answer time does not tell how much of a guess was right.
"""

from __future__ import annotations

import hmac

import falcon

OPEN_PATHS = frozenset({"/health", "/openapi.json"})
"""Never need a token: health checks and schema discovery."""
OPEN_PAGES = ("/ui/",)
"""Read without a token: the dashboard's pages and files (``/`` and under ``/ui/``), since a
browser cannot send a bearer header when it navigates. They hold no data: the data they fetch
(``/fleet``, ``/servers/{name}/loads``) needs the read token as every read does."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods under the read token; every other method is under the record token."""
REALM = "servertrack"


def _matches(presented: str, token: bytes) -> bool:
    # WSGI hands headers over as latin-1 text: that gives back the bytes the client sent.
    try:
        raw = presented.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, token)


def bearer_ok(header: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` as a bearer token."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    return scheme.lower() == "bearer" and _matches(presented.strip(), token)


class TokenAuth:
    """Falcon middleware: refuses a request without the token its scope needs with a 401.

    It runs before routing, so without the token an unknown path answers 401, not 404: a client
    without the token learns nothing about which paths exist.
    """

    def __init__(self, record_token: str | None = None, read_token: str | None = None) -> None:
        self.record_token = record_token.encode() if record_token else None
        self.read_token = read_token.encode() if read_token else None

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        reads = req.method in READ_METHODS
        if req.path in OPEN_PATHS or (
            reads and (req.path == "/" or req.path.startswith(OPEN_PAGES))
        ):
            return
        token = self.read_token if reads else self.record_token
        if token is None:
            return
        scope = "read" if reads else "record"
        header = req.get_header("Authorization")
        if not header:
            raise _unauthorized(f"this {scope} request needs 'Authorization: Bearer <token>'")
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not _matches(presented.strip(), token):
            raise _unauthorized(
                f"the bearer token is not valid for {scope} requests", 'error="invalid_token"'
            )


def _unauthorized(description: str, extra: str | None = None) -> falcon.HTTPUnauthorized:
    challenge = f'Bearer realm="{REALM}"' + (f", {extra}" if extra else "")
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description=description, challenges=[challenge]
    )
