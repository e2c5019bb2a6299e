"""A server's answer (``GET /servers/{name}/loads``) as the aggregator and an API reading Redis
both build it: the store's view as JSON bytes, and the time it is as of."""

from __future__ import annotations

import json
from typing import Any

from servertrack.common.buckets import iso_utc

AS_OF_HEADER = "ServerTrack-As-Of"
"""The response header that carries an answer's ``as_of``."""


def view_reply(view: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """``{"status": 200, "body": JSON bytes, "as_of": ISO time}``, or ``{"status": 404}``.

    ``as_of`` is ``now``, the clock of whoever read the store for this answer: every batch
    applied (every merge done) by then is in it. It travels beside the body, so the body stays a
    function of the state alone; a cached answer keeps the time it was read, and a client can
    tell how old what it was served is (the forwarder does)."""
    if view is None:
        return {"status": 404}
    return {"status": 200, "body": json.dumps(view).encode(), "as_of": iso_utc(now)}
