"""The dashboard's routes in the Falcon app: static files and pages (types, ETag, 304, HEAD,
policy headers), ``/fleet`` and ``/fleet/grid`` answered by the aggregator daemon's own
``answer``, tokens, the OpenAPI entries and the vendored chart library's recorded hashes."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest
from falcon import testing
from openapi_spec_validator import validate

from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import AggregatorState
from servertrack.api.app import create_app
from servertrack.common.testing import FakeClock
from tests.support import DownBackend

STATIC = Path(__file__).resolve().parent.parent / "api" / "static"
NOW = 1_700_000_030.0
TOKEN = "read-token-0123456789"
FILES = {
    "/": "text/html",
    "/ui/servers/web-1.example.com": "text/html",
    "/ui/static/common.js": "text/javascript",
    "/ui/static/overview.js": "text/javascript",
    "/ui/static/server.js": "text/javascript",
    "/ui/static/style.css": "text/css",
    "/ui/static/favicon.svg": "image/svg+xml",
    "/ui/static/vendor/uplot/uPlot.iife.min.js": "text/javascript",
    "/ui/static/vendor/uplot/uPlot.min.css": "text/css",
    "/ui/static/vendor/uplot/LICENSE": "text/plain",
}


class StateBackend:
    """Reads answered by the aggregator's own answer code over real rollups."""

    def __init__(self, state: AggregatorState) -> None:
        self.state = state

    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        return msgpack.unpackb(self.state.answer(request, NOW))

    def record(self, samples: list[Any]) -> dict[str, Any]:  # pragma: no cover - not used here
        raise AssertionError("no records in these tests")

    def ping(self) -> dict[str, Any]:
        return {"receiver": {"ok": True}, "aggregator": {"ok": True}}


@pytest.fixture
def rollups() -> Rollups:
    clock = FakeClock(NOW)
    rollups = Rollups(clock)
    names = ["web-1.example.com", "web-2.example.com", "db-1.example.com"]
    cpu = [20.0, 95.0, 60.0]
    rows = np.array([rollups.row_for(name) for name in names])
    rollups.apply(rows, np.full(3, NOW - 5), np.array(cpu), np.array([30.0, 40.0, 50.0]), NOW)
    return rollups


@pytest.fixture
def state(rollups: Rollups) -> AggregatorState:
    return AggregatorState(rollups, clock=lambda: NOW)


@pytest.fixture
def client(state: AggregatorState) -> testing.TestClient:
    return testing.TestClient(create_app(StateBackend(state), clock=lambda: NOW))


# -- static files and pages ----------------------------------------------------------------------
@pytest.mark.parametrize(("path", "kind"), FILES.items())
def test_files_are_served_with_their_type_a_content_etag_and_the_policy(
    client: testing.TestClient, path: str, kind: str
) -> None:
    result = client.simulate_get(path)
    assert result.status_code == 200
    assert result.headers["Content-Type"].split(";")[0] == kind
    digest = hashlib.sha256(result.content).hexdigest()
    assert result.headers["ETag"] == f'"{digest[:32]}"'
    policy = result.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy and "*" not in policy
    assert result.headers["X-Content-Type-Options"] == "nosniff"
    cache = result.headers["Cache-Control"]
    if kind == "text/html":
        assert cache == "no-cache"
    else:
        assert re.fullmatch(r"public, max-age=\d+", cache)


def test_static_files_are_the_package_files(client: testing.TestClient) -> None:
    for path in FILES:
        if path.startswith("/ui/static/"):
            on_disk = (STATIC / path.removeprefix("/ui/static/")).read_bytes()
            assert client.simulate_get(path).content == on_disk, path


@pytest.mark.parametrize("path", ["/", "/ui/static/style.css", "/ui/servers/a.example"])
def test_a_matching_if_none_match_gets_a_304_without_body(
    client: testing.TestClient, path: str
) -> None:
    etag = client.simulate_get(path).headers["ETag"]
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        result = client.simulate_get(path, headers={"If-None-Match": header})
        assert result.status_code == 304, header
        assert result.content == b""
        assert result.headers["ETag"] == etag
    changed = client.simulate_get(path, headers={"If-None-Match": '"0123"'})
    assert changed.status_code == 200 and changed.content


@pytest.mark.parametrize("path", ["/", "/ui/servers/a.example", "/ui/static/overview.js"])
def test_head_answers_like_get_without_the_body(client: testing.TestClient, path: str) -> None:
    get = client.simulate_get(path)
    head = client.simulate_head(path)
    assert head.status_code == 200 and head.content == b""
    for name in ("Content-Type", "ETag", "Cache-Control", "Content-Security-Policy"):
        assert head.headers[name] == get.headers[name]
    assert int(head.headers["Content-Length"]) == len(get.content)


@pytest.mark.parametrize("page", ["/", "/ui/servers/a.example"])
def test_pages_link_each_file_with_its_current_version(
    client: testing.TestClient, page: str
) -> None:
    html = client.simulate_get(page).text
    links = re.findall(r'(?:src|href)="(/ui/static/[^"?]+)\?v=([0-9a-f]+)"', html)
    assert len(links) >= 4
    for path, version in links:
        result = client.simulate_get(path, params={"v": version})
        assert result.status_code == 200, path
        assert result.headers["ETag"].strip('"').startswith(version)
        assert "immutable" in result.headers["Cache-Control"]


@pytest.mark.parametrize("name", ["index.html", "server.html"])
def test_pages_hold_no_inline_script_or_style(name: str) -> None:
    """The policy allows only files from 'self': an inline script or style would be blocked."""
    html = (STATIC / name).read_text()
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)
    for tag in re.findall(r"<script[^>]*>", html):
        assert 'src="/ui/static/' in tag
    assert "http://" not in html and "https://" not in html


def test_an_unknown_file_is_a_json_404(client: testing.TestClient) -> None:
    """The same answer as any unknown path of the API."""
    unknown = client.simulate_get("/no-such-path").json["reason"]
    for path in ("/ui/static/nope.js", "/ui/static/../app.py", "/ui/static/vendor"):
        result = client.simulate_get(path)
        assert result.status_code == 404, path
        assert result.json["reason"] == unknown


def test_a_bad_server_name_page_is_a_400(client: testing.TestClient) -> None:
    result = client.simulate_get("/ui/servers/bad%20name")
    assert result.status_code == 400 and result.json["reason"] == "bad_fqdn"


# -- data -----------------------------------------------------------------------------------------
def test_fleet_answers_a_sorted_page_with_the_summary(client: testing.TestClient) -> None:
    result = client.simulate_get("/fleet", params={"sort": "cpu", "order": "desc", "limit": "2"})
    assert result.status_code == 200, result.text
    assert result.headers["Cache-Control"] == "no-store"
    body = result.json
    assert [row["server"] for row in body["rows"]] == ["web-2.example.com", "db-1.example.com"]
    assert body["rows"][0]["cpu"] == 95.0 and body["rows"][0]["status"] == "live"
    assert body["total"] == 3 and body["next_cursor"] is not None
    assert body["summary"]["live"] == 3
    assert body["summary"]["minute"]["cpu"] == pytest.approx((20 + 95 + 60) / 3)
    rest = client.simulate_get(
        "/fleet", params={"sort": "cpu", "order": "desc", "cursor": body["next_cursor"]}
    ).json
    assert [row["server"] for row in rest["rows"]] == ["web-1.example.com"]
    assert rest["next_cursor"] is None
    only = client.simulate_get("/fleet", params={"q": "WEB"}).json
    assert sorted(row["server"] for row in only["rows"]) == [
        "web-1.example.com",
        "web-2.example.com",
    ]


def test_the_grid_lists_every_server(client: testing.TestClient) -> None:
    body = client.simulate_get("/fleet/grid").json
    assert body["servers"] == ["db-1.example.com", "web-1.example.com", "web-2.example.com"]
    assert body["count"] == 3 and body["status"] == "lll"
    codes = np.frombuffer(base64.b64decode(body["cpu"]), "<u2").tolist()
    assert codes == [600, 200, 950]  # tenths of a percent
    refused = client.simulate_get("/fleet/grid", params={"limit": "1"})
    assert refused.status_code == 400 and refused.json["reason"] == "unknown_parameter"


def test_the_grid_leaves_out_the_names_the_caller_holds(client: testing.TestClient) -> None:
    """Sent back as ``names``, the answer's ``names_version`` keeps the names out of the next
    answers while they do not change; a malformed one is a 400."""
    first = client.simulate_get("/fleet/grid").json
    again = client.simulate_get("/fleet/grid", params={"names": first["names_version"]})
    assert again.status_code == 200 and "servers" not in again.json
    assert again.json["cpu"] == first["cpu"] and again.json["count"] == 3
    other = client.simulate_get("/fleet/grid", params={"names": "0-1"}).json
    assert other["servers"] == first["servers"]
    for bad in ("", "x" * 65, "A B", "two;parts"):
        refused = client.simulate_get("/fleet/grid", query_string=f"names={bad}")
        assert refused.status_code == 400, bad
        assert refused.json["reason"] == "bad_names"
    twice = client.simulate_get("/fleet/grid", query_string="names=a&names=b")
    assert twice.status_code == 400 and twice.json["reason"] == "bad_names"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("sort=colour", "bad_sort"),
        ("order=sideways", "bad_order"),
        ("limit=5000", "bad_limit"),
        ("cursor=x", "bad_cursor"),
        ("sort=cpu&sort=ram", "bad_sort"),
        ("colour=red", "unknown_parameter"),
    ],
)
def test_bad_fleet_parameters_are_400_json(
    client: testing.TestClient, query: str, reason: str
) -> None:
    result = client.simulate_get("/fleet", query_string=query)
    assert result.status_code == 400
    assert result.json["reason"] == reason
    assert set(result.json) == {"title", "reason", "description"}
    assert result.json["title"] == "Bad Request"


def test_answers_match_their_openapi_schemas(client: testing.TestClient) -> None:
    doc = client.simulate_get("/openapi.json").json
    validate(doc)
    version = client.simulate_get("/fleet/grid").json["names_version"]
    for path, schema in (
        ("/fleet", "FleetPage"),
        ("/fleet/grid", "FleetGrid"),
        (f"/fleet/grid?names={version}", "FleetGrid"),
    ):
        root = {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
        path, _, query = path.partition("?")
        answer = client.simulate_get(path, query_string=query).json
        jsonschema.Draft202012Validator(root).validate(answer)
    names = [p["name"] for p in doc["paths"]["/fleet"]["get"]["parameters"]]
    assert names == ["sort", "order", "q", "limit", "cursor"]
    for page in ("/", "/ui/servers/{name}"):
        assert "text/html" in doc["paths"][page]["get"]["responses"]["200"]["content"]
        assert doc["paths"][page]["get"]["security"] == []


def test_pages_need_no_token_but_their_data_does(state: AggregatorState) -> None:
    app = create_app(StateBackend(state), clock=lambda: NOW, read_token=TOKEN)
    client = testing.TestClient(app)
    for path in ("/", "/ui/servers/web-1.example.com", "/ui/static/overview.js"):
        assert client.simulate_get(path).status_code == 200, path
        assert client.simulate_head(path).status_code == 200, path
    for path in ("/fleet", "/fleet/grid", "/servers/web-1.example.com/loads"):
        refused = client.simulate_get(path)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.simulate_get(path, headers=bearer).status_code == 200, path
    recorded = create_app(StateBackend(state), clock=lambda: NOW, record_token=TOKEN)
    assert testing.TestClient(recorded).simulate_post("/").status_code == 401
    assert testing.TestClient(recorded).simulate_post("/ui/static/style.css").status_code == 401


def test_an_unavailable_aggregator_is_a_503_for_the_data_not_the_pages() -> None:
    client = testing.TestClient(create_app(DownBackend(), clock=lambda: NOW))
    assert client.simulate_get("/fleet").status_code == 503
    assert client.simulate_get("/fleet").json["reason"] == "backend_unavailable"
    assert client.simulate_get("/").status_code == 200


# -- the vendored chart library --------------------------------------------------------------------
def test_the_vendored_uplot_matches_its_recorded_version_and_hashes() -> None:
    folder = STATIC / "vendor" / "uplot"
    lines = (folder / "VERSION").read_text().splitlines()
    assert "version: 1.6.32" in lines
    recorded = {}
    for line in lines:
        if line.startswith("sha256 "):
            _, name, digest = line.split()
            recorded[name] = digest
    assert set(recorded) == {p.name for p in folder.iterdir()} - {"VERSION"}
    assert set(recorded) == {"LICENSE", "uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (folder / "LICENSE").read_text()


def test_every_package_file_is_served(client: testing.TestClient) -> None:
    """Every file under api/static is reachable (nothing is left out of the package data)."""
    served = 0
    for path in STATIC.rglob("*"):
        if path.is_file() and path.suffix != ".html":
            url = "/ui/static/" + path.relative_to(STATIC).as_posix()
            assert client.simulate_get(url).status_code == 200, url
            served += 1
    assert served >= 9
