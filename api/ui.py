"""The dashboard's pages and static files, served from package data (``api/static/``).

Files are read once with :mod:`importlib.resources` when the app is built and served from
memory with a strong ETag (a hash of the content), ``If-None-Match`` answered with 304, a
``Cache-Control`` (``no-cache`` for pages, so a new release shows at once; a max-age for the
rest) and a Content-Security-Policy that allows only the API's own origin: no inline script or
style, nothing from elsewhere. Pages link their files with ``?v=<hash>``, so a cached copy of an
older file is never used by a newer page. HEAD answers like GET without the body.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import falcon

from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.api.errors import BadRequest
from servertrack.common.sample import valid_fqdn

STATIC_PREFIX = "/ui/static/"
STATIC_FOLDERS = ("", "vendor/uplot/")
"""Folders under ``api/static`` served, each as one route ``/ui/static/<folder>{name}``."""
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'; "
    "object-src 'none'"
)
PAGE_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=3600"
VERSIONED_ASSET_CACHE = "public, max-age=31536000, immutable"
"""For a request carrying the current ``?v=``: that URL's content can never change."""
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}
TEXT = "text/plain; charset=utf-8"
"""LICENSE and VERSION files."""
ASSET_LINK = re.compile(r"/ui/static/[A-Za-z0-9_./-]+")
PAGES = {"overview": "index.html", "server": "server.html"}
THRESHOLD_MARK = "{{anomaly_threshold}}"
"""Replaced in the pages by the anomaly threshold, so the dashboard marks anomalies with the one
threshold the product uses (``servertrack.anomaly.STANDARD_THRESHOLD``)."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    tag: str
    """The ETag's value, without quotes: the first 32 hex digits of the content's sha256."""

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind(".") :] if "." in name else ""
        tag = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, CONTENT_TYPES.get(suffix, TEXT), tag)


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            files.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            files[prefix + entry.name] = entry.read_bytes()
    return files


def load_assets(folder: Traversable | None = None) -> dict[str, Asset]:
    """Every file under ``api/static`` by its path there; pages get versioned asset links."""
    folder = folder or resources.files("servertrack.api") / "static"
    raw = _walk(folder)
    assets = {
        name: Asset.of(name, body) for name, body in raw.items() if not name.endswith(".html")
    }

    def versioned(match: re.Match[str]) -> str:
        link = match.group(0)
        asset = assets.get(link[len(STATIC_PREFIX) :])
        return f"{link}?v={asset.tag[:12]}" if asset else link

    for name, body in raw.items():
        if name.endswith(".html"):
            text = ASSET_LINK.sub(versioned, body.decode("utf-8"))
            text = text.replace(THRESHOLD_MARK, repr(STANDARD_THRESHOLD))
            assets[name] = Asset.of(name, text.encode("utf-8"))
    return assets


def send(req: falcon.Request, resp: falcon.Response, asset: Asset, cache_control: str) -> None:
    """``asset`` with its validators and policy headers, or a 304 when the client has it."""
    resp.set_header("ETag", f'"{asset.tag}"')
    resp.set_header("Cache-Control", cache_control)
    resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")
    held = req.if_none_match
    if held and any(tag == "*" or str(tag) == asset.tag for tag in held):
        resp.status = falcon.HTTP_304
        return
    resp.data = asset.body
    resp.content_type = asset.content_type


def static_names(assets: dict[str, Asset], folder: str) -> list[str]:
    """The files served from ``folder`` (pages are served at their own paths)."""
    return sorted(
        name[len(folder) :]
        for name in assets
        if name.startswith(folder) and "/" not in name[len(folder) :] and not name.endswith(".html")
    )


class StaticFiles:
    """``GET /ui/static/{name}`` and ``/ui/static/vendor/uplot/{name}``: CSS, scripts, the
    vendored chart library and its licence, the icon."""

    def __init__(self, assets: dict[str, Asset], folder: str) -> None:
        self.assets = {name: assets[folder + name] for name in static_names(assets, folder)}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        asset = self.assets.get(name)
        if asset is None:
            raise falcon.HTTPNotFound(description=f"no such file: {req.path}")
        current = req.get_param("v") == asset.tag[:12]
        send(req, resp, asset, VERSIONED_ASSET_CACHE if current else ASSET_CACHE)

    on_head = on_get


class OverviewPage:
    """``GET /``: the fleet overview (the data comes from ``/fleet`` and ``/fleet/grid``)."""

    def __init__(self, asset: Asset) -> None:
        self.asset = asset

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send(req, resp, self.asset, PAGE_CACHE)

    on_head = on_get


class ServerPage:
    """``GET /ui/servers/{name}``: one server's charts (data from ``/servers/{name}/loads``).

    The page is the same for every name; a server without data shows its empty state."""

    def __init__(self, asset: Asset) -> None:
        self.asset = asset

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not valid_fqdn(name):
            raise BadRequest(
                "bad_fqdn",
                "server name must be 1-253 characters from letters, digits, '.', '-', '_'",
            )
        send(req, resp, self.asset, PAGE_CACHE)

    on_head = on_get


def add_pages(
    app: falcon.App[falcon.Request, falcon.Response], assets: dict[str, Asset] | None = None
) -> None:
    """Register the two pages and the static files on ``app``."""
    assets = assets if assets is not None else load_assets()
    app.add_route("/", OverviewPage(assets[PAGES["overview"]]))
    app.add_route("/ui/servers/{name}", ServerPage(assets[PAGES["server"]]))
    for folder in STATIC_FOLDERS:
        app.add_route(f"{STATIC_PREFIX}{folder}{{name}}", StaticFiles(assets, folder))
