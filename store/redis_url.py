"""Where the Redis store lives, from one URL.

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``: one redis-server (port 6379, db 0 by default).
- ``rediss://...``: the same over TLS (the server's certificate is verified; ``?ca_file=PATH``
  names the CA bundle to verify it with).
- ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (or ``rediss+cluster://``): seed nodes of a Redis
  Cluster; the store learns the others from them. A cluster has only db 0.
- The password may be in the URL (percent-encoded), or in a file named by ``?password_file=PATH``
  (its first line), or passed to the store; a password given in two places is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

DEFAULT_PORT = 6379
SCHEMES = {
    "redis": (False, False),
    "rediss": (False, True),
    "redis+cluster": (True, False),
    "rediss+cluster": (True, True),
}
QUERY_KEYS = {"password_file", "ca_file"}


class BadStoreUrl(ValueError):
    """A store URL that cannot be used, with what is wrong in the message."""


@dataclass(frozen=True, slots=True)
class StoreAddress:
    cluster: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    def describe(self) -> str:
        """The address for logs: never the password."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        nodes = ",".join(f"{_host_text(host)}:{port}" for host, port in self.nodes)
        return f"{scheme}://{nodes}" + ("" if self.cluster else f"/{self.db}")


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def read_password_file(path: str) -> str:
    """The first line of ``path``, which must be non-empty (a file others can read is refused:
    the password would not be a secret)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().strip()
    except OSError as err:
        raise BadStoreUrl(f"cannot read the password file {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise BadStoreUrl(f"the password file {path} is not UTF-8 text") from err
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadStoreUrl(f"the password file {path} is readable by other users (chmod 600 it)")
    if not line:
        raise BadStoreUrl(f"the password file {path} is empty")
    return line


def _node(text: str, url: str) -> tuple[str, int]:
    if not text:
        raise BadStoreUrl(f"no host in {url!r}")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise BadStoreUrl(f"bad host {text!r} in {url!r}")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise BadStoreUrl(f"no host in {text!r} of {url!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadStoreUrl(f"bad port {port_text!r} in {url!r}")
    return host, int(port_text)


def parse_store_url(url: str, password: str | None = None) -> StoreAddress:
    """Parse ``url`` (see the module docstring); ``password`` is one given outside the URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise BadStoreUrl(
            f"{url!r} is not a store URL: use redis://HOST:PORT/DB, rediss://... or "
            "redis+cluster://HOST:PORT[,HOST:PORT...]"
        )
    cluster, tls = SCHEMES[scheme.lower()]
    # urllib's urlsplit does not take several hosts: split the parts off by hand.
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "#" in query or "#" in path:
        raise BadStoreUrl(f"fragments are not allowed in {url!r}")
    username = url_password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user_text, colon, password_text = credentials.partition(":")
        username = unquote(user_text) or None
        url_password = unquote(password_text) if colon else None
        if not colon and user_text:
            # redis://SECRET@host is the common short form for a password alone
            url_password, username = unquote(user_text), None
    nodes = tuple(_node(part, url) for part in netloc.split(","))
    if not cluster and len(nodes) != 1:
        raise BadStoreUrl(f"several hosts need redis+cluster://, got {url!r}")
    db = 0
    if path:
        if cluster:
            raise BadStoreUrl(f"a Redis Cluster has only db 0: drop /{path} from {url!r}")
        if not path.isdigit():
            raise BadStoreUrl(f"the db must be a number, got {path!r} in {url!r}")
        db = int(path)
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = set(options) - QUERY_KEYS
    if unknown:
        raise BadStoreUrl(f"unknown option(s) {sorted(unknown)} in {url!r}")
    ca_file = options.get("ca_file", [None])[-1]
    if ca_file and not tls:
        raise BadStoreUrl(f"ca_file needs TLS (rediss://) in {url!r}")
    from_file = None
    if "password_file" in options:
        from_file = read_password_file(options["password_file"][-1])
    given = [p for p in (url_password, from_file, password) if p]
    if len(given) > 1:
        raise BadStoreUrl("the store password is given more than once (URL, file, option)")
    return StoreAddress(
        cluster=cluster,
        nodes=nodes,
        db=db,
        username=username,
        password=given[0] if given else None,
        tls=tls,
        ca_file=ca_file or None,
    )
