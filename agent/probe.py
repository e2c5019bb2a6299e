"""What the agent measures on its node, with psutil."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import psutil

from servertrack.common.sample import MAX_IPS

ADDRESS_FAMILIES = (socket.AF_INET, socket.AF_INET6)


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost6", "ip6-localhost"})


def node_name(
    fqdn: Callable[[], str] = socket.getfqdn, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """The node's FQDN; its host name when the FQDN is only a name of the loopback.

    ``getfqdn`` answers ``localhost`` on a node whose host name ``/etc/hosts`` lists after
    ``localhost`` on ``127.0.0.1`` (common in containers and cloud images): every such node
    would report under one name and their samples would merge.
    """
    name = fqdn()
    if name.lower() in LOOPBACK_NAMES or not name:
        return hostname() or name
    return name


def node_addresses() -> list[str]:
    """The node's IP addresses, loopback and link-local scope suffixes left out."""
    found: list[str] = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family not in ADDRESS_FAMILIES:
                continue
            text = address.address.split("%", 1)[0]
            try:
                if ipaddress.ip_address(text).is_loopback:
                    continue
            except ValueError:
                continue
            if text not in found:
                found.append(text)
    return found[:MAX_IPS]


class PsutilProbe:
    """CPU and RAM percent. ``cpu_percent(None)`` compares with the previous call, so the first
    call (which returns a meaningless 0.0) happens here, at start-up, and every later call comes
    from the same thread."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)

    def cpu(self) -> float:
        return float(psutil.cpu_percent(interval=None))

    def ram(self) -> float:
        return float(psutil.virtual_memory().percent)
