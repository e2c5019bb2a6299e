"""The Falcon API over an in-process backend: the real receiver and aggregator states.

Every request goes through ``falcon.testing.TestClient`` over ``create_app``. The backend
(``tests/support.py``) does in one call what the receiver and the aggregator do over ZeroMQ, with
their own code, and shares one fake clock with the app, so the time window the API applies and
the one the rollups use are the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from falcon import testing

from servertrack.api.app import MAX_BATCH, MAX_BODY
from tests.support import Clock, DownBackend, InProcessBackend, PingRaises, api_app

MINUTE = 60
HOUR = 3600
T0 = 1_699_999_200.0
"""An hour start (2023-11-14T22:00:00Z)."""
NOW = T0 + 30 * MINUTE + 15.0
"""22:30:15, in the middle of both an hour and a minute bucket."""


# -- helpers ------------------------------------------------------------------------------------
def iso(ts: float) -> str:
    """``ts`` as ``2023-11-14T22:30:00Z`` (whole seconds only), restated independently."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def backend(clock: Clock) -> InProcessBackend:
    return InProcessBackend(clock)


@pytest.fixture
def client(backend: InProcessBackend, clock: Clock) -> testing.TestClient:
    return testing.TestClient(api_app(backend, clock))


def post(client: testing.TestClient, name: str, body: Any) -> testing.Result:
    """POST one load for ``name``; ``body`` is sent as is when it is str/bytes, else as JSON."""
    path = f"/servers/{name}/loads"
    if isinstance(body, str | bytes):
        return client.simulate_post(path, body=body)
    return client.simulate_post(path, json=body)


def post_batch(client: testing.TestClient, body: Any) -> testing.Result:
    if isinstance(body, str | bytes):
        return client.simulate_post("/loads", body=body)
    return client.simulate_post("/loads", json=body)


def view(client: testing.TestClient, name: str) -> testing.Result:
    return client.simulate_get(f"/servers/{name}/loads")


def assert_error(
    result: testing.Result, status: int, reason: str | None = None, index: int | None = None
) -> dict[str, Any]:
    """The error contract: the status, a JSON body with a title and a non-empty description."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert isinstance(body, dict)
    assert isinstance(body.get("description"), str) and body["description"].strip()
    assert body.get("title")
    if reason is not None:
        assert body["reason"] == reason
    if index is None:
        assert "index" not in body
    else:
        assert body["index"] == index
    return body


def assert_absent(client: testing.TestClient, *names: str) -> None:
    """None of ``names`` has any data behind the API."""
    for name in names:
        assert_error(view(client, name), 404, "unknown_server")


# -- the happy path -----------------------------------------------------------------------------
def test_single_post_is_accepted_with_202(client: testing.TestClient) -> None:
    """A valid single load is answered 202 with one accepted and no duplicates."""
    result = post(client, "web-1.example.com", {"cpu": 12.5, "ram": 40.0, "ts": NOW - 5})
    assert result.status_code == 202
    assert result.headers["content-type"].startswith("application/json")
    assert result.json == {"accepted": 1, "duplicates": 0}


def test_posted_load_shows_in_its_minute_and_hour_buckets(client: testing.TestClient) -> None:
    """A posted load appears in GET under the minute and hour buckets holding its ts."""
    ts = T0 + 29 * MINUTE + 42.0  # 22:29:42
    assert post(client, "web-1", {"cpu": 12.5, "ram": 40.0, "ts": ts}).status_code == 202
    result = view(client, "web-1")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert body["server"] == "web-1"
    assert [m["start"] for m in body["minutes"]] == ["2023-11-14T22:29:00Z"]
    assert [h["start"] for h in body["hours"]] == ["2023-11-14T22:00:00Z"]
    for bucket in (body["minutes"][0], body["hours"][0]):
        assert bucket["cpu"] == bucket["cpu_min"] == bucket["cpu_max"] == 12.5
        assert bucket["ram"] == bucket["ram_min"] == bucket["ram_max"] == 40.0
        assert bucket["samples"] == 1
    assert body["last_seen"] == "2023-11-14T22:29:42Z"


def test_loads_in_different_buckets_are_kept_apart(client: testing.TestClient) -> None:
    """Loads in two minutes of two hours land in separate buckets with exact means."""
    loads = [
        (T0 - 10 * MINUTE + 1, 10.0),  # 21:50:01
        (T0 - 10 * MINUTE + 30, 20.0),  # 21:50:30, same minute
        (T0 + 5 * MINUTE, 90.0),  # 22:05:00
    ]
    for ts, cpu in loads:
        assert post(client, "db", {"cpu": cpu, "ts": ts}).status_code == 202
    body = view(client, "db").json
    assert [(m["start"], m["cpu"], m["samples"]) for m in body["minutes"]] == [
        ("2023-11-14T21:50:00Z", 15.0, 2),
        ("2023-11-14T22:05:00Z", 90.0, 1),
    ]
    assert [(h["start"], h["cpu"], h["samples"]) for h in body["hours"]] == [
        ("2023-11-14T21:00:00Z", 15.0, 2),
        ("2023-11-14T22:00:00Z", 90.0, 1),
    ]


def test_ts_defaults_to_the_injected_clock(client: testing.TestClient, clock: Clock) -> None:
    """A load without ts is stamped with the injected clock, not the wall clock."""
    clock.now = T0 + 17 * MINUTE + 3.0  # 22:17:03
    assert post(client, "no-ts", {"cpu": 5.0}).status_code == 202
    body = view(client, "no-ts").json
    assert [m["start"] for m in body["minutes"]] == [iso(T0 + 17 * MINUTE)]
    assert [h["start"] for h in body["hours"]] == [iso(T0)]
    assert body["last_seen"] == iso(clock.now)


def test_ts_may_be_an_integer(client: testing.TestClient) -> None:
    """An integer ts is as good as a float one."""
    assert post(client, "int-ts", {"ram": 1, "ts": int(NOW)}).status_code == 202
    assert view(client, "int-ts").json["last_seen"] == iso(int(NOW))


@pytest.mark.parametrize(("given", "missing"), [("cpu", "ram"), ("ram", "cpu")])
def test_one_metric_only_leaves_the_other_null(
    client: testing.TestClient, given: str, missing: str
) -> None:
    """A load with only one metric shows the other as null (never 0) in every bucket."""
    assert post(client, "half", {given: 33.0, "ts": NOW}).status_code == 202
    body = view(client, "half").json
    buckets = body["minutes"] + body["hours"]
    assert len(buckets) == 2
    for bucket in buckets:
        assert bucket[given] == 33.0
        assert bucket[missing] is None
        assert bucket[f"{missing}_min"] is None
        assert bucket[f"{missing}_max"] is None
        assert bucket[f"{missing}_samples"] == 0


def test_mixed_metrics_average_each_over_its_own_samples(client: testing.TestClient) -> None:
    """A cpu-only and a ram-only load in one minute: each metric over its own, two raw samples."""
    assert post(client, "mix", {"cpu": 80.0, "ts": NOW - 2}).status_code == 202
    assert post(client, "mix", {"ram": 20.0, "ts": NOW - 1}).status_code == 202
    minute = view(client, "mix").json["minutes"][0]
    assert (minute["cpu"], minute["ram"]) == (80.0, 20.0)
    assert (minute["cpu_samples"], minute["ram_samples"], minute["samples"]) == (1, 1, 2)


def test_null_metric_counts_as_absent(client: testing.TestClient) -> None:
    """An explicit null cpu next to a ram value is treated as an absent cpu."""
    assert post(client, "nul", {"cpu": None, "ram": 7.0, "ts": NOW}).status_code == 202
    minute = view(client, "nul").json["minutes"][0]
    assert minute["cpu"] is None and minute["ram"] == 7.0


@pytest.mark.parametrize("body", [{}, {"ts": NOW}, {"cpu": None, "ram": None}])
def test_load_without_metrics_is_422(client: testing.TestClient, body: dict) -> None:
    """A load with neither cpu nor ram is refused with 422 and nothing is stored."""
    assert_error(post(client, "empty", body), 422, "no_metrics")
    assert_absent(client, "empty")


@pytest.mark.parametrize("value", [0, 0.0, 100, 100.0])
def test_percent_bounds_are_inclusive(client: testing.TestClient, value: float) -> None:
    """cpu and ram of exactly 0 and 100 are accepted."""
    assert post(client, "edge", {"cpu": value, "ram": value, "ts": NOW}).status_code == 202
    minute = view(client, "edge").json["minutes"][0]
    assert minute["cpu"] == minute["ram"] == float(value)


def test_batch_of_several_servers_is_accepted(client: testing.TestClient) -> None:
    """POST /loads accepts a batch over several servers and reports how many it took."""
    batch = [
        {"server": "a", "cpu": 10.0, "ts": NOW - 3},
        {"server": "b", "ram": 50.0, "ts": NOW - 2},
        {"server": "a", "cpu": 30.0, "ts": NOW - 1},
        {"server": "c.example.org", "cpu": 1.0, "ram": 2.0},
    ]
    result = post_batch(client, batch)
    assert result.status_code == 202
    assert result.json == {"accepted": 4, "duplicates": 0}
    a = view(client, "a").json["minutes"][0]
    assert (a["cpu"], a["cpu_min"], a["cpu_max"], a["samples"]) == (20.0, 10.0, 30.0, 2)
    b = view(client, "b").json["minutes"][0]
    assert (b["cpu"], b["ram"]) == (None, 50.0)
    c = view(client, "c.example.org").json
    assert c["last_seen"] == iso(NOW)


def test_batch_of_exactly_max_items_is_accepted(client: testing.TestClient) -> None:
    """A batch of exactly MAX_BATCH (10,000) loads is accepted in full."""
    assert MAX_BATCH == 10_000
    batch = [
        {"server": f"s{i % 100}", "cpu": float(i % 101), "ts": NOW - i / 1000}
        for i in range(MAX_BATCH)
    ]
    result = post_batch(client, batch)
    assert result.status_code == 202
    assert result.json["accepted"] == MAX_BATCH
    assert view(client, "s99").json["hours"][0]["samples"] == 100


def test_empty_batch_accepts_nothing(client: testing.TestClient) -> None:
    """An empty batch is answered 202 with zero accepted."""
    result = post_batch(client, [])
    assert result.status_code == 202
    assert result.json["accepted"] == 0


def test_repeated_load_is_reported_as_duplicate(client: testing.TestClient) -> None:
    """Posting the same (server, ts) twice counts the second as a duplicate, stored once."""
    load = {"cpu": 40.0, "ts": NOW - 10}
    assert post(client, "dup", load).json == {"accepted": 1, "duplicates": 0}
    result = post(client, "dup", {"cpu": 60.0, "ts": NOW - 10})
    assert result.status_code == 202
    assert result.json == {"accepted": 0, "duplicates": 1}
    minute = view(client, "dup").json["minutes"][0]
    assert (minute["cpu"], minute["samples"]) == (40.0, 1)


def test_servers_lists_what_was_posted(client: testing.TestClient) -> None:
    """GET /servers passes the backend's JSON through with a JSON content type."""
    post_batch(client, [{"server": "b", "cpu": 1}, {"server": "a", "cpu": 2}])
    result = client.simulate_get("/servers")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert [s["server"] for s in result.json["servers"]] == ["a", "b"]


def test_stats_passes_counters_through(client: testing.TestClient) -> None:
    """GET /stats returns the receiver's and aggregator's counters, and the API's own refusals
    by reason (samples, for a batch)."""
    post(client, "x", {"cpu": 1})
    post(client, "x", {"cpu": 101})
    post_batch(client, [{"server": "y", "cpu": 1}, {"server": "y", "cpu": "high"}])
    result = client.simulate_get("/stats")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert body["receiver"]["accepted"] == {"zmq": 0, "http": 1, "graphite": 0}
    assert body["aggregator"]["applied"] == 1
    assert body["api"]["rejected"] == {"bad_cpu": 3}


# -- unknown and bad server names ---------------------------------------------------------------
def test_unknown_server_is_404_json(client: testing.TestClient) -> None:
    """GET of a server never posted is a 404 JSON error naming unknown_server."""
    assert_error(view(client, "never-seen"), 404, "unknown_server")


def test_name_of_253_characters_is_accepted(client: testing.TestClient) -> None:
    """A 253-character server name is the longest accepted."""
    name = "a" * 253
    assert post(client, name, {"cpu": 1.0}).status_code == 202
    assert view(client, name).json["server"] == name


BAD_NAMES = {
    "too-long-254": "a" * 254,
    "unicode": "сервер",
    "unicode-percent-encoded": "%D1%81%D0%B5%D1%80%D0%B2%D0%B5%D1%80",
    "emoji": "web-\U0001f600",
    "space": "%20",
    "empty": "",
    "nul-byte": "a%00",
    "dotdot-slash-etc": "..%2Fetc",
}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_server_name_in_post_is_400_bad_fqdn(client: testing.TestClient, name: str) -> None:
    """POST to a server name outside 1-253 of [A-Za-z0-9._-] is a 400 JSON bad_fqdn error."""
    assert_error(post(client, name, {"cpu": 1.0}), 400, "bad_fqdn")


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_server_name_in_get_is_400_bad_fqdn(client: testing.TestClient, name: str) -> None:
    """GET of a server name outside 1-253 of [A-Za-z0-9._-] is a 400 JSON bad_fqdn error."""
    assert_error(view(client, name), 400, "bad_fqdn")


@pytest.mark.parametrize(
    "server",
    ["a" * 254, "сервер", "../etc", "", " ", 7, None, ["a"]],
    ids=["too-long", "unicode", "dotdot-slash", "empty", "space", "number", "null", "list"],
)
def test_bad_server_in_batch_is_refused_with_its_index(
    client: testing.TestClient, backend: InProcessBackend, server: Any
) -> None:
    """A batch item with a bad server field is refused as bad_fqdn with its index, nothing kept."""
    batch = [{"server": "good", "cpu": 1.0}, {"server": server, "cpu": 2.0}]
    body = assert_error(post_batch(client, batch), 422, "bad_fqdn", index=1)
    assert body["title"] == "Unprocessable Entity"
    assert backend.calls == []
    assert_absent(client, "good")


def test_batch_item_without_server_is_refused(
    client: testing.TestClient, backend: InProcessBackend
) -> None:
    """A batch item lacking the server field is refused with its index."""
    body = assert_error(post_batch(client, [{"server": "a", "cpu": 1}, {"cpu": 1}]), 422, index=1)
    assert body["reason"] == "bad_fqdn"
    assert backend.calls == []


# -- malformed bodies ---------------------------------------------------------------------------
MALFORMED = {
    "truncated": '{"cpu": 1',
    "empty-body": "",
    "not-json": "cpu=1",
    "trailing-comma": '{"cpu": 1,}',
    "single-quotes": "{'cpu': 1}",
    "bad-utf8": b'{"cpu": 1, "ts": "\xff"}',
    "two-documents": '{"cpu": 1}{"cpu": 2}',
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_json_is_400_bad_json(client: testing.TestClient, raw: str | bytes) -> None:
    """A body that is not one well-formed JSON document is a 400 bad_json error."""
    assert_error(post(client, "m", raw), 400, "bad_json")
    assert_error(post_batch(client, raw), 400, "bad_json")
    assert_absent(client, "m")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["cpu", "ram", "ts"])
def test_nan_and_infinity_literals_are_400(
    client: testing.TestClient, literal: str, field: str
) -> None:
    """The non-standard NaN/Infinity literals are refused as bad JSON, single or in a batch."""
    assert_error(post(client, "n", f'{{"cpu": 1, "{field}": {literal}}}'), 400, "bad_json")
    batch = f'[{{"server": "n", "cpu": 1}}, {{"server": "n", "{field}": {literal}}}]'
    assert_error(post_batch(client, batch), 400, "bad_json")
    assert_absent(client, "n")


def test_duplicate_keys_are_400(client: testing.TestClient) -> None:
    """An object repeating a key is refused as bad JSON, single or inside a batch item."""
    assert_error(post(client, "d", '{"cpu": 1, "cpu": 2}'), 400, "bad_json")
    batch = '[{"server": "d", "cpu": 1}, {"server": "d", "ram": 1, "ram": 2}]'
    assert_error(post_batch(client, batch), 400, "bad_json")
    assert_absent(client, "d")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"cpu": "50"}, "bad_cpu"),
        ({"ram": "50.5"}, "bad_ram"),
        ({"cpu": 1, "ts": str(NOW)}, "bad_ts"),
        ({"cpu": True}, "bad_cpu"),
        ({"ram": False}, "bad_ram"),
        ({"cpu": 1, "ts": True}, "bad_ts"),
        ({"cpu": [1]}, "bad_cpu"),
        ({"cpu": {"v": 1}}, "bad_cpu"),
    ],
    ids=[
        "cpu-str",
        "ram-str",
        "ts-str",
        "cpu-true",
        "ram-false",
        "ts-true",
        "cpu-list",
        "cpu-object",
    ],
)
def test_wrongly_typed_values_are_422(client: testing.TestClient, body: dict, reason: str) -> None:
    """Strings, booleans and containers where numbers belong are refused with 422."""
    assert_error(post(client, "t", body), 422, reason)
    assert_error(post_batch(client, [{"server": "t", **body}]), 422, reason, index=0)
    assert_absent(client, "t")


@pytest.mark.parametrize(
    ("field", "literal"),
    [("cpu", "100.0001"), ("cpu", "-0.1"), ("ram", "100.0001"), ("ram", "-0.1"), ("cpu", "1e400")],
    ids=["cpu-over", "cpu-under", "ram-over", "ram-under", "cpu-overflows-to-inf"],
)
def test_percent_out_of_range_is_422(client: testing.TestClient, field: str, literal: str) -> None:
    """cpu or ram outside 0-100 is refused with 422 naming the field."""
    assert_error(post(client, "r", f'{{"{field}": {literal}}}'), 422, f"bad_{field}")
    assert_absent(client, "r")


def test_huge_integer_ts_is_422_not_500(client: testing.TestClient) -> None:
    """A ts integer too large for a float is refused as bad_ts (422), not a server error."""
    huge = "1" + "0" * 400
    assert_error(post(client, "h", f'{{"cpu": 1, "ts": {huge}}}'), 422, "bad_ts")
    batch = f'[{{"server": "h", "cpu": 1}}, {{"server": "h", "cpu": 1, "ts": {huge}}}]'
    assert_error(post_batch(client, batch), 422, "bad_ts", index=1)


@pytest.mark.parametrize(
    "body",
    [{"cpu": 1, "load": 2}, {"cpu": 1, "server": "x"}, {"cpu": 1, "seq": 1}, {"CPU": 1}],
    ids=["load", "server-in-single", "seq", "uppercase"],
)
def test_unknown_field_is_400(client: testing.TestClient, body: dict) -> None:
    """A single load with a field other than cpu, ram and ts is a 400 unknown_field error."""
    assert_error(post(client, "u", body), 400, "unknown_field")
    assert_absent(client, "u", "x")


def test_unknown_field_in_batch_is_400_with_index(
    client: testing.TestClient, backend: InProcessBackend
) -> None:
    """A batch item with an unknown field is a 400 unknown_field error naming its index."""
    batch = [{"server": "a", "cpu": 1}, {"server": "a", "cpu": 1, "seq": 3}]
    assert_error(post_batch(client, batch), 400, "unknown_field", index=1)
    assert backend.calls == []
    assert_absent(client, "a")


@pytest.mark.parametrize("body", [[], [{"cpu": 1}], 5, "x", None])
def test_single_post_needs_an_object(client: testing.TestClient, body: Any) -> None:
    """A single load that is not a JSON object is a 400 not_an_object error."""
    assert_error(post(client, "o", json.dumps(body)), 400, "not_an_object")


@pytest.mark.parametrize("body", [{"server": "a", "cpu": 1}, 5, "x", None])
def test_batch_post_needs_a_list(client: testing.TestClient, body: Any) -> None:
    """A batch body that is not a JSON array is a 400 not_a_list error."""
    assert_error(post_batch(client, json.dumps(body)), 400, "not_a_list")
    assert_absent(client, "a")


# -- the time window ----------------------------------------------------------------------------
def test_ts_up_to_60_seconds_ahead_is_accepted(client: testing.TestClient) -> None:
    """A ts exactly 60 s ahead of the clock is still accepted."""
    assert post(client, "f", {"cpu": 1, "ts": NOW + 60}).status_code == 202


@pytest.mark.parametrize("ahead", [60.001, 61, 3600, 1e12])
def test_ts_more_than_60_seconds_ahead_is_422_future(
    client: testing.TestClient, ahead: float
) -> None:
    """A ts more than 60 s ahead of the clock is refused with 422 reason future."""
    assert_error(post(client, "f", {"cpu": 1, "ts": NOW + ahead}), 422, "future")
    assert_absent(client, "f")


def test_oldest_hour_of_the_window_is_accepted(client: testing.TestClient) -> None:
    """A ts at the start of the oldest hour bucket still in the 24-hour window is accepted."""
    oldest = T0 - 23 * HOUR
    assert post(client, "old", {"cpu": 1, "ts": oldest}).status_code == 202
    hours = view(client, "old").json["hours"]
    assert [h["start"] for h in hours] == [iso(oldest)]


@pytest.mark.parametrize(
    "ts",
    [T0 - 23 * HOUR - 0.001, NOW - 24 * HOUR - 1, NOW - 30 * 24 * HOUR, 0, -1.5],
    ids=["just-before-window", "24h-and-1s", "a-month", "epoch", "negative"],
)
def test_ts_older_than_the_window_is_422_too_old(client: testing.TestClient, ts: float) -> None:
    """A ts before the oldest hour bucket of the 24-hour window is refused with 422 too_old."""
    assert_error(post(client, "o", {"cpu": 1, "ts": ts}), 422, "too_old")
    assert_absent(client, "o")


def test_window_follows_the_injected_clock(client: testing.TestClient, clock: Clock) -> None:
    """The window is judged at the injected clock's time: a ts refused now is accepted later."""
    ts = NOW + 10 * MINUTE
    assert_error(post(client, "w", {"cpu": 1, "ts": ts}), 422, "future")
    clock.now = ts
    assert post(client, "w", {"cpu": 1, "ts": ts}).status_code == 202


# -- batch atomicity ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "status", "reason"),
    [
        ({"cpu": 100.5}, 422, "bad_cpu"),
        ({"ram": "1"}, 422, "bad_ram"),
        ({"cpu": 1, "ts": NOW + 3600}, 422, "future"),
        ({"cpu": 1, "ts": NOW - 48 * HOUR}, 422, "too_old"),
        ({}, 422, "no_metrics"),
        ({"cpu": 1, "extra": 0}, 400, "unknown_field"),
    ],
    ids=["cpu-range", "ram-str", "future", "too-old", "no-metrics", "unknown-field"],
)
def test_one_bad_item_refuses_the_whole_batch(
    client: testing.TestClient,
    backend: InProcessBackend,
    bad: dict,
    status: int,
    reason: str,
) -> None:
    """One bad item in the middle refuses the batch with its index and nothing is applied."""
    batch = [
        {"server": "good-1", "cpu": 10.0, "ts": NOW - 4},
        {"server": "good-2", "ram": 20.0, "ts": NOW - 3},
        {"server": "bad", **bad},
        {"server": "good-3", "cpu": 30.0, "ts": NOW - 2},
    ]
    assert_error(post_batch(client, batch), status, reason, index=2)
    assert backend.calls == []
    assert backend.state.counters()["accepted"] == {"zmq": 0, "http": 0, "graphite": 0}
    assert_absent(client, "good-1", "good-2", "bad", "good-3")


def test_backend_refusal_is_422_with_its_index(clock: Clock) -> None:
    """A batch the receiver refuses (its clock is a day ahead) is a 422 with reason and index."""
    backend = InProcessBackend(clock, receiver_clock=Clock(NOW + 25 * HOUR))
    client = testing.TestClient(api_app(backend, clock))
    batch = [{"server": "a", "cpu": 1.0, "ts": NOW}, {"server": "b", "cpu": 1.0}]
    assert_error(post_batch(client, batch), 422, "too_old", index=0)
    assert len(backend.calls) == 1
    assert_absent(client, "a", "b")


def test_too_many_items_is_413_and_nothing_applied(
    client: testing.TestClient, backend: InProcessBackend
) -> None:
    """A batch of MAX_BATCH + 1 valid loads is refused with 413 and none of it is applied."""
    batch = [{"server": f"s{i % 10}", "cpu": 1.0, "ts": NOW - i / 100} for i in range(10_001)]
    assert_error(post_batch(client, batch), 413, "too_many")
    assert backend.calls == []
    assert_absent(client, *(f"s{i}" for i in range(10)))


def test_body_over_the_limit_is_413(client: testing.TestClient, backend: InProcessBackend) -> None:
    """A body one byte over MAX_BODY is refused with 413, single or batch."""
    single = '{"cpu": 1}'.ljust(MAX_BODY + 1)
    assert_error(post(client, "big", single), 413, "too_large")
    batch = '[{"server": "big", "cpu": 1}]'.ljust(MAX_BODY + 1)
    assert_error(post_batch(client, batch), 413, "too_large")
    assert backend.calls == []
    assert_absent(client, "big")


def test_body_of_exactly_the_limit_is_read(client: testing.TestClient) -> None:
    """A valid body of exactly MAX_BODY bytes is accepted."""
    body = '{"cpu": 1}'.ljust(MAX_BODY)
    assert len(body) == MAX_BODY
    assert post(client, "limit", body).status_code == 202


# -- backend unavailable and health -------------------------------------------------------------
def down_client(backend: DownBackend) -> testing.TestClient:
    return testing.TestClient(api_app(backend, Clock(NOW)))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/servers/a/loads", {"cpu": 1}),
        ("POST", "/loads", [{"server": "a", "cpu": 1}]),
        ("GET", "/servers/a/loads", None),
        ("GET", "/servers", None),
        ("GET", "/stats", None),
    ],
)
def test_unavailable_backend_is_503_json(method: str, path: str, body: Any) -> None:
    """When the backend does not answer, reads and writes get a 503 JSON error."""
    client = down_client(DownBackend())
    result = client.simulate_request(method, path, json=body)
    error = assert_error(result, 503, "backend_unavailable")
    assert "did not answer" in error["description"]


def test_writes_fail_when_only_the_receiver_is_down() -> None:
    """With only the receiver down, POST is 503 while GET still works."""
    client = down_client(DownBackend(receiver_up=False, aggregator_up=True))
    assert_error(client.simulate_post("/servers/a/loads", json={"cpu": 1}), 503)
    assert client.simulate_get("/servers").status_code == 200


def test_bad_input_is_refused_before_the_backend_is_asked() -> None:
    """Invalid input gets its 4xx even when the backend is down (it is never called)."""
    client = down_client(DownBackend())
    assert_error(client.simulate_post("/servers/a/loads", json={"cpu": 101}), 422, "bad_cpu")
    assert_error(client.simulate_get("/servers/%20/loads"), 400, "bad_fqdn")


def test_health_is_200_when_both_parts_are_ok(client: testing.TestClient) -> None:
    """/health is 200 with status ok when receiver and aggregator both answer."""
    result = client.simulate_get("/health")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["status"] == "ok"
    assert result.json["receiver"]["ok"] is True
    assert result.json["aggregator"]["ok"] is True


@pytest.mark.parametrize(
    ("receiver_up", "aggregator_up"),
    [(False, True), (True, False), (False, False)],
    ids=["receiver-down", "aggregator-down", "both-down"],
)
def test_health_is_503_when_a_part_is_down(receiver_up: bool, aggregator_up: bool) -> None:
    """/health is 503 with status unavailable when either part does not answer."""
    result = down_client(DownBackend(receiver_up, aggregator_up)).simulate_get("/health")
    assert result.status_code == 503
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["status"] == "unavailable"
    assert result.json["receiver"]["ok"] is receiver_up
    assert result.json["aggregator"]["ok"] is aggregator_up


def test_health_is_503_json_when_ping_raises() -> None:
    """/health is a 503 JSON error when the ping itself raises Unavailable."""
    result = down_client(PingRaises(True, True)).simulate_get("/health")
    assert_error(result, 503, "backend_unavailable")


# -- the error contract -------------------------------------------------------------------------
def test_every_app_error_is_json_with_a_description(client: testing.TestClient) -> None:
    """Each kind of refusal the app produces is JSON with a title, reason and description."""
    requests = [
        post(client, "x", "{"),
        post(client, "x", {"cpu": 1, "zz": 1}),
        post(client, "x", {"cpu": 101}),
        post(client, "x", {}),
        post(client, "x", {"cpu": 1, "ts": NOW + 120}),
        post(client, "x", {"cpu": 1, "ts": 1.0}),
        post(client, "x" * 300, {"cpu": 1}),
        post_batch(client, {}),
        post_batch(client, [{"cpu": 1}] * (MAX_BATCH + 1)),
        post(client, "x", " " * (MAX_BODY + 1)),
        view(client, "nobody"),
    ]
    assert len({r.json["reason"] for r in requests}) == len(requests)
    for result in requests:
        assert 400 <= result.status_code < 500
        assert result.json["reason"]
        assert_error(result, result.status_code)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nowhere"), ("GET", "/loads"), ("DELETE", "/servers/a/loads"), ("PUT", "/health")],
    ids=["unknown-route", "get-loads", "delete-server", "put-health"],
)
def test_framework_errors_are_json_with_a_description(
    client: testing.TestClient, method: str, path: str
) -> None:
    """Errors raised by the framework (no route, wrong method) also carry a JSON description."""
    result = client.simulate_request(method, path)
    assert 400 <= result.status_code < 500
    assert_error(result, result.status_code)
