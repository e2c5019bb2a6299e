"""Property-based API tests against a live host: schemathesis generates requests for every
operation in ``/openapi.json`` and checks each answer against the document (status code,
content type, response schema and headers) and that no request gets a 5xx.

Two hosts are started with ``servertrack run --no-agent`` on free loopback ports: one open, one
with the same file as record and read token, whose generated requests carry that token (and
which schemathesis also probes without it, expecting the documented 401).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from servertrack.api.app import MAX_BATCH, MAX_BODY
from servertrack.api.openapi import build_document
from servertrack.promapi import prompb
from servertrack.promapi.remote_read import CONTENT_TYPE as REMOTE_READ_MEDIA_TYPE
from servertrack.testing.hosts import HostUnderTest, launch_host, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "schemathesis-0123456789abcdef"
EXAMPLES = settings(
    max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def started(workdir: Path, *extra: str) -> Iterator[HostUnderTest]:
    host = launch_host(workdir, "--no-agent", *extra, name="host")
    try:
        yield host
    finally:
        host.process.stop()


@pytest.fixture(scope="module")
def open_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostUnderTest]:
    yield from started(tmp_path_factory.mktemp("open"))


@pytest.fixture(scope="module")
def token_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostUnderTest]:
    workdir = tmp_path_factory.mktemp("tokens")
    token = workdir / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    yield from started(workdir, "--token-file", str(token), "--read-token-file", str(token))


REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""What a schema-violating request may get: schemathesis' default list plus the documented 413
(a batch over ``maxItems`` is too large, not malformed)."""


UNSTATABLE_INPUT = ("/metrics/servers",)
"""Operations whose input a JSON schema cannot state in full: a PromQL series selector (its
grammar and its RE2 regexes). A generated value that fits the schema there is still refused
with the documented 400 when it is not a selector; what the route accepts is tested against a
real Prometheus (tests/test_prometheus_host.py)."""


def read_requests() -> st.SearchStrategy[bytes]:
    """Remote-read bodies: snappy-compressed ReadRequests whose queries use every matcher type
    on the two labels ServerTrack serves, and on one it does not."""
    matcher = st.builds(
        lambda type_, name, value: (type_, name, value),
        st.sampled_from([0, 1, 2, 3]),
        st.sampled_from(["__name__", "server", "job"]),
        st.sampled_from(["servertrack_server_cpu_percent", "known-1.example", "known-.*", ""]),
    )
    query = st.tuples(
        st.integers(0, 2**41), st.integers(0, 2**41), st.lists(matcher, min_size=1, max_size=3)
    )

    def encoded(queries: list[tuple[int, int, list[tuple[int, str, str]]]]) -> bytes:
        request = prompb.ReadRequest()
        for start, end, matchers in queries:
            added = request.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
            for type_, name, value in matchers:
                added.matchers.add(type=type_, name=name, value=value)
        return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))

    return st.lists(query, min_size=1, max_size=3).map(encoded)


schemathesis.openapi.media_type(REMOTE_READ_MEDIA_TYPE, read_requests())
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
"""Schemathesis' default answers to a schema-valid request (a 5xx still fails, by its own
check)."""


def load_schema(host: HostUnderTest) -> schemathesis.BaseSchema:
    """The live document, as the host serves it."""
    config = schemathesis.Config.from_dict(
        {
            "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
            "operations": [
                {
                    "include-path": path,
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}
                    },
                }
                for path in UNSTATABLE_INPUT
            ],
        }
    )
    return schemathesis.openapi.from_url(f"{host.api}/openapi.json", config=config)


@pytest.fixture(scope="module")
def open_schema(open_host: HostUnderTest) -> schemathesis.BaseSchema:
    return load_schema(open_host)


@pytest.fixture(scope="module")
def token_schema(token_host: HostUnderTest) -> schemathesis.BaseSchema:
    return load_schema(token_host)


def operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every documented operation (the live document is the same one):
    positive requests for all, negative ones for those that take input that can be wrong."""
    doc = build_document(max_batch=MAX_BATCH, max_body=MAX_BODY)
    out = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            out.append((method.upper(), path, GenerationMode.POSITIVE))
            if "parameters" in operation or "requestBody" in operation:
                out.append((method.upper(), path, GenerationMode.NEGATIVE))
    return out


def inside_window(body: Any) -> Any:
    """``ts`` moved into the last hour: the accepted window moves with the clock, which a static
    document cannot state, so a generated ts is almost always (rightly) refused as too_old."""
    items = body if isinstance(body, list) else [body]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("ts"), int | float):
            item["ts"] = time.time() - math.fmod(abs(item["ts"]), 3600.0)
    return body


def sendable(case: schemathesis.Case) -> bool:
    """False when a generated query value cannot travel: an HTTP client drops a parameter whose
    value is None or an empty list or object, so the server would rightly see a valid request."""
    return not any(
        value is None or (isinstance(value, list | dict) and not value)
        for value in (case.query or {}).values()
    )


def with_token(case: schemathesis.Case, token: dict[str, str] | None) -> dict[str, str] | None:
    """The real token in place of the generated one; none when a negative case left the
    header out on purpose (the API must refuse it with 401, which adding it back would hide)."""
    generated = {name.lower() for name in case.headers or {}}
    if token and not {name.lower() for name in token} <= generated:
        return None
    return token


def exercise(
    schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Generate ``mode`` requests for one operation and validate every answer."""
    operation = schema[path][method]

    @EXAMPLES
    @given(case=operation.as_strategy(mode))
    def check(case: schemathesis.Case) -> None:
        if mode is GenerationMode.POSITIVE:
            inside_window(case.body)  # in place: a body assigned anew counts as the caller's own
        else:
            assume(sendable(case))
        response = case.call_and_validate(
            base_url=base_url, headers=with_token(case, headers), timeout=30
        )
        assert response.status_code < 500, (case.as_curl_command(), response.text)

    check()


OPERATIONS = pytest.mark.parametrize(
    ("method", "path", "mode"), operations(), ids=lambda value: str(value)
)


@OPERATIONS
def test_open_api_conforms_to_its_document(
    open_host: HostUnderTest,
    open_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """Every generated request to the open API gets a documented, schema-valid answer."""
    exercise(open_schema, method, path, mode, open_host.api)


@OPERATIONS
def test_token_api_conforms_to_its_document(
    token_host: HostUnderTest,
    token_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """The same with tokens: requests carrying the token get documented, schema-valid answers."""
    exercise(token_schema, method, path, mode, token_host.api, {"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.parametrize("kind", ["open", "token"])
def test_a_known_server_answers_as_documented(request: pytest.FixtureRequest, kind: str) -> None:
    """A server recorded through the API reads back as a 200 that matches the document (random
    names almost always get the 404)."""
    host: HostUnderTest = request.getfixturevalue(f"{kind}_host")
    schema: schemathesis.BaseSchema = request.getfixturevalue(f"{kind}_schema")
    headers = {"Authorization": f"Bearer {TOKEN}"} if kind == "token" else None
    name = {"name": "known-1.example"}
    recorded = schema["/servers/{name}/loads"]["POST"].Case(
        path_parameters=name, body={"cpu": 12.5, "ram": 40.0}
    )
    assert recorded.call_and_validate(base_url=host.api, headers=headers).status_code == 202
    read = schema["/servers/{name}/loads"]["GET"].Case(path_parameters=name)
    wait_until(
        lambda: read.call(base_url=host.api, headers=headers).status_code == 200,
        10.0,
        "the recorded server to show",
    )
    body = read.call_and_validate(base_url=host.api, headers=headers).json()
    assert body["server"] == name["name"]
    assert body["minutes"][-1]["cpu"] == 12.5
    for path in ("/servers", "/stats", "/metrics"):
        schema[path]["GET"].Case().call_and_validate(base_url=host.api, headers=headers)
