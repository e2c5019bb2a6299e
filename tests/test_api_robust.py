"""The API against clients that misbehave: bodies that are not what they claim, nesting that
would blow the stack, the framework's own errors, HEAD, listing pages, and requests whose client
has given up. Every answer is a documented JSON error or a success; never a 5xx for a body."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servertrack.api.app import SERVERS_PAGE, SERVERS_PAGE_MAX
from servertrack.api.stats import ApiStats
from tests.support import Clock, InProcessBackend, api_app

NOW = 1_800_000_030.0


@pytest.fixture
def backend() -> InProcessBackend:
    return InProcessBackend(Clock(NOW))


@pytest.fixture
def stats() -> ApiStats:
    return ApiStats()


@pytest.fixture
def client(backend: InProcessBackend, stats: ApiStats) -> testing.TestClient:
    return testing.TestClient(api_app(backend, backend.clock, stats=stats))


def documented(result: testing.Result, status: int, reason: str) -> dict[str, Any]:
    """The error shape the README documents: title is the status text, reason, description."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert set(body) >= {"title", "reason", "description"}
    assert body["title"] == result.status.split(" ", 1)[1]
    assert body["reason"] == reason and body["description"].strip()
    return body


# -- bodies -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/loads", "/servers/web-1/loads"])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nested_a_thousand_levels_is_a_400_not_a_500(
    client: testing.TestClient, path: str, opener: str
) -> None:
    body = opener * 1000 + "1" + ("]" if opener == "[" else "}") * 1000
    documented(client.simulate_post(path, body=body), 400, "bad_json")


def test_curl_form_content_type_is_read_as_json(client: testing.TestClient) -> None:
    """``curl -d`` sends application/x-www-form-urlencoded: the body is still read as JSON."""
    result = client.simulate_post(
        "/servers/web-1/loads",
        body='{"cpu": 5}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert result.status_code == 202


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    path=st.sampled_from(["/loads", "/servers/web-1/loads", "/servers/%ff/loads"]),
)
def test_any_body_gets_a_2xx_or_a_4xx(client: testing.TestClient, body: bytes, path: str) -> None:
    result = client.simulate_post(path, body=body)
    assert result.status_code < 500, (body, result.text)
    assert result.headers["content-type"].startswith("application/json")


# -- the framework's own errors -----------------------------------------------------------------
def test_unknown_path_is_the_documented_404(client: testing.TestClient) -> None:
    documented(client.simulate_get("/nope"), 404, "not_found")


def test_wrong_method_is_the_documented_405(client: testing.TestClient) -> None:
    result = client.simulate_delete("/servers")
    documented(result, 405, "method_not_allowed")
    assert "GET" in result.headers["allow"]


@pytest.mark.parametrize(
    "path", ["/servers", "/servers/web-1/loads", "/stats", "/health", "/metrics", "/openapi.json"]
)
def test_head_works_wherever_get_does(client: testing.TestClient, path: str) -> None:
    client.simulate_post("/servers/web-1/loads", json={"cpu": 5})
    get = client.simulate_get(path)
    head = client.simulate_head(path)
    assert head.status_code == get.status_code
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.content == b""


# -- refusals are counted -----------------------------------------------------------------------
def test_refused_records_are_counted_by_reason_as_http(
    client: testing.TestClient, stats: ApiStats
) -> None:
    client.simulate_post("/servers/a/loads", json={"cpu": 101})
    client.simulate_post("/servers/a/loads", json={"cpu": 1, "ts": NOW + 3600})
    client.simulate_post("/loads", json=[{"server": "a", "cpu": 1}, {"server": "b"}])
    client.simulate_post("/loads", body="{")
    assert stats.snapshot()["rejected"] == {
        "bad_cpu": 1,
        "future": 1,
        "no_metrics": 2,
        "bad_json": 1,
    }
    metrics = client.simulate_get("/metrics").text
    assert 'servertrack_samples_rejected_total{reason="future",source="http"} 1.0' in metrics
    assert 'servertrack_samples_rejected_total{reason="no_metrics",source="http"} 2.0' in metrics


# -- paging -------------------------------------------------------------------------------------
def test_servers_are_paged_with_a_total_and_a_cursor(
    client: testing.TestClient, backend: InProcessBackend
) -> None:
    names = [f"s{index:05d}" for index in range(2500)]
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        assert client.simulate_post("/loads", json=[{"server": n, "cpu": 1} for n in chunk]).json
    first = client.simulate_get("/servers").json
    assert len(first["servers"]) == SERVERS_PAGE and first["total"] == 2500
    seen, cursor = [], None
    while True:
        params = {"limit": 700} if cursor is None else {"limit": 700, "cursor": cursor}
        page = client.simulate_get("/servers", params=params).json
        seen += [row["server"] for row in page["servers"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


@pytest.mark.parametrize("limit", ["0", str(SERVERS_PAGE_MAX + 1), "ten", "-5"])
def test_a_bad_limit_is_400(client: testing.TestClient, limit: str) -> None:
    documented(client.simulate_get("/servers", params={"limit": limit}), 400, "bad_limit")


def test_a_bad_cursor_is_400(client: testing.TestClient) -> None:
    documented(client.simulate_get("/servers", params={"cursor": "a b"}), 400, "bad_cursor")


# -- clients that gave up -----------------------------------------------------------------------
def test_a_request_that_waited_past_its_deadline_is_dropped_unworked(
    backend: InProcessBackend, stats: ApiStats
) -> None:
    """A request stamped as arrived long ago is answered 503 at once; the backend is not asked."""
    client = testing.TestClient(api_app(backend, backend.clock, stats=stats, request_deadline=2))
    stale = {"servertrack.arrived": time.time() - 10}
    result = client.simulate_post("/servers/a/loads", json={"cpu": 1}, extras=stale)
    documented(result, 503, "abandoned")
    assert backend.calls == []
    fresh = {"servertrack.arrived": time.time()}
    assert (
        client.simulate_post("/servers/a/loads", json={"cpu": 1}, extras=fresh).status_code == 202
    )
    assert stats.snapshot()["requests_abandoned"] == 1


def test_a_request_whose_client_has_gone_is_dropped(
    backend: InProcessBackend, stats: ApiStats
) -> None:
    client = testing.TestClient(api_app(backend, backend.clock, stats=stats))
    gone = {"waitress.client_disconnected": lambda: True}
    assert client.simulate_get("/servers", extras=gone).status_code == 503
    assert stats.snapshot()["requests_abandoned"] == 1


def test_a_query_past_its_deadline_is_skipped_by_the_aggregator(backend: InProcessBackend) -> None:
    """The deadline travels with the query: past it, the aggregator does no work and sends no
    answer (the API, having given up, reads none)."""
    state = backend.aggregator
    assert state.answer({"op": "servers", "deadline": time.time() - 1}, NOW, time.time()) is None
    assert state.answer({"op": "servers", "deadline": time.time() + 5}, NOW, time.time())
    assert state.stats(NOW)["aggregator"]["queries_expired"] == 1
