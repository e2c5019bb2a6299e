"""Where ``--http granian`` may listen: loopback, or anywhere behind a proxy that buffers bodies.

Granian gives a request body no deadline (see :mod:`servertrack.api.bodies`): clients that
trickle bodies hold the body slots, and records are refused while they do. Behind a proxy that
reads each body whole before passing the request on (nginx does by default), no client can.
"""

from __future__ import annotations

import ipaddress

FLAG = "--behind-buffering-proxy"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; False for ``0.0.0.0``,
    ``*``, any other address and any other name."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def granian_exposure_error(http: str, host: str, behind_proxy: bool) -> str | None:
    """Why this server cannot listen on ``host`` as asked, or None when it can."""
    if http != "granian" or behind_proxy or is_loopback(host):
        return None
    return (
        f"--http granian listens beyond loopback ({host}) only behind a proxy that buffers "
        f"request bodies (nginx does by default): granian gives a slowly sent body no "
        f"deadline. Give {FLAG} if such a proxy is in front, or use --http waitress"
    )
