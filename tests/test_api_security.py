"""Bearer tokens and the OpenAPI document, through ``falcon.testing`` over ``create_app``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cramjam
import falcon.inspect
import jsonschema
import pytest
from falcon import testing
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from servertrack.api import main as api_main
from servertrack.api.admission import READ_POSTS
from servertrack.api.app import MAX_BATCH, MAX_BODY
from servertrack.common.sample import valid_fqdn
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.host import supervisor as host
from servertrack.promapi import prompb
from tests.support import Clock, InProcessBackend, api_app, assert_fatal

RECORD = "rec-0123456789abcdef"
READ = "read-fedcba9876543210"
RECORDS = [
    ("/servers/web-1/loads", {"cpu": 12.5}),
    ("/loads", [{"server": "web-1", "cpu": 12.5}]),
]
READS = ["/servers", "/stats", "/metrics", "/servers/web-1/loads", "/fleet", "/fleet/grid"]
OPEN = ["/health", "/openapi.json"]
PAGES = ["/", "/ui/servers/{name}", "/ui/static/{name}", "/ui/static/vendor/uplot/{name}"]
"""The dashboard's pages and files: open to reads (a browser cannot send a bearer header when
it navigates); their data comes from READS."""


def make_client(
    record_token: str | None = None, read_token: str | None = None
) -> tuple[testing.TestClient, InProcessBackend]:
    clock = Clock(1_800_000_000.0)
    backend = InProcessBackend(clock)
    app = api_app(backend, clock, record_token=record_token, read_token=read_token)
    return testing.TestClient(app), backend


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(result: testing.Result, invalid_token: bool) -> None:
    """The 401 contract: JSON error with reason ``unauthorized`` and a Bearer challenge."""
    assert result.status_code == 401, result.text
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["reason"] == "unauthorized"
    assert result.json["title"] == "Unauthorized"
    assert result.json["description"].strip()
    challenge = result.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="servertrack"')
    assert ('error="invalid_token"' in challenge) is invalid_token


# -- tokens -------------------------------------------------------------------------------------
def test_without_tokens_everything_is_open() -> None:
    """An app built without tokens answers records and reads without any header."""
    client, _ = make_client()
    for path, body in RECORDS:
        assert client.simulate_post(path, json=body).status_code == 202
    for path in READS + OPEN:
        assert client.simulate_get(path).status_code == 200, path


@pytest.mark.parametrize(("path", "body"), RECORDS)
def test_record_without_token_is_401_and_applies_nothing(path: str, body: Any) -> None:
    """With a record token, a POST without Authorization is 401 and reaches no backend."""
    client, backend = make_client(record_token=RECORD)
    assert_401(client.simulate_post(path, json=body), invalid_token=False)
    assert backend.calls == []


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {RECORD[:-1]}",
        f"Bearer {RECORD}x",
        f"Bearer {RECORD.upper()}",
        f"Basic {RECORD}",
        RECORD,
        "Bearer ",
        f"Bearer {READ}",
        "Bearer tökén",
    ],
    ids=["prefix", "longer", "case", "basic", "no-scheme", "empty", "read-token", "non-ascii"],
)
@pytest.mark.parametrize(("path", "body"), RECORDS)
def test_record_with_wrong_token_is_401(path: str, body: Any, header: str) -> None:
    """A wrong token, another scheme or the read token is refused for records."""
    client, backend = make_client(record_token=RECORD, read_token=READ)
    result = client.simulate_post(path, json=body, headers={"Authorization": header})
    assert_401(result, invalid_token=True)
    assert backend.calls == []


@pytest.mark.parametrize(("path", "body"), RECORDS)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_record_with_the_right_token_is_202(path: str, body: Any, scheme: str) -> None:
    """The record token (scheme case-insensitive) lets a POST through to a 202."""
    client, backend = make_client(record_token=RECORD)
    result = client.simulate_post(path, json=body, headers={"Authorization": f"{scheme} {RECORD}"})
    assert result.status_code == 202, result.text
    assert len(backend.calls) == 1


def test_reads_stay_open_with_only_a_record_token() -> None:
    """A record token alone protects POSTs only: every read still answers without a header."""
    client, _ = make_client(record_token=RECORD)
    client.simulate_post("/servers/web-1/loads", json={"cpu": 1}, headers=bearer(RECORD))
    for path in READS + OPEN:
        assert client.simulate_get(path).status_code == 200, path


@pytest.mark.parametrize("path", [*READS, "/nowhere"])
def test_reads_need_the_read_token_when_one_is_set(path: str) -> None:
    """With a read token, GETs (even of unknown paths) are 401 without it or with another."""
    client, _ = make_client(record_token=RECORD, read_token=READ)
    assert_401(client.simulate_get(path), invalid_token=False)
    assert_401(client.simulate_get(path, headers=bearer(RECORD)), invalid_token=True)


def test_reads_with_the_read_token_answer() -> None:
    """The read token opens every read; a server recorded with the record token shows."""
    client, _ = make_client(record_token=RECORD, read_token=READ)
    posted = client.simulate_post("/servers/web-1/loads", json={"cpu": 1}, headers=bearer(RECORD))
    assert posted.status_code == 202
    for path in READS:
        assert client.simulate_get(path, headers=bearer(READ)).status_code == 200, path
    assert client.simulate_get("/nowhere", headers=bearer(READ)).status_code == 404


def test_writes_stay_open_with_only_a_read_token() -> None:
    """A read token alone protects reads only."""
    client, _ = make_client(read_token=READ)
    for path, body in RECORDS:
        assert client.simulate_post(path, json=body).status_code == 202


@pytest.mark.parametrize("path", OPEN)
def test_health_and_openapi_stay_open(path: str) -> None:
    """/health and /openapi.json answer without a token whatever tokens are set."""
    client, _ = make_client(record_token=RECORD, read_token=READ)
    assert client.simulate_get(path).status_code == 200


# -- token files --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["s3cret\n", "  s3cret  \r\nsecond line\n", "s3cret"], ids=["lf", "crlf", "no-eol"]
)
def test_token_file_gives_its_first_line_stripped(tmp_path: Path, text: str) -> None:
    """The token is the file's first line without surrounding whitespace."""
    path = tmp_path / "token"
    path.write_bytes(text.encode())
    assert read_token_file(path) == "s3cret"


@pytest.mark.parametrize("text", ["", "\n", "   \nsecond\n", "two words\n", "tab\there\n"])
def test_unusable_token_file_is_refused(tmp_path: Path, text: str) -> None:
    """An empty first line or a token a header cannot carry is refused."""
    path = tmp_path / "token"
    path.write_text(text)
    with pytest.raises(TokenFileError):
        read_token_file(path)


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    """A token file that does not exist is refused, naming the file."""
    with pytest.raises(TokenFileError, match="nope"):
        read_token_file(tmp_path / "nope")


@pytest.mark.parametrize("flag", ["--token-file", "--read-token-file"])
def test_api_refuses_to_start_with_an_unusable_token_file(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``servertrack api`` exits with a message before it listens when a token file is bad."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert_fatal(capsys, lambda: api_main.main([flag, str(empty), "--port", "1"]), "empty")


def run_args(*argv: str) -> argparse.Namespace:
    return host.build_parser().parse_args(["--no-agent", *argv])


def test_run_passes_token_files_to_the_api(tmp_path: Path) -> None:
    """``servertrack run`` hands both token files (as absolute paths) to the api child only."""
    token = tmp_path / "token"
    token.write_text("abc\n")
    children = {c.name: c for c in host.plan(run_args("--token-file", str(token)), "/rt")}
    api = children["api"].argv
    assert api[api.index("--token-file") + 1] == str(token)
    assert "--read-token-file" not in api
    children = {c.name: c for c in host.plan(run_args("--read-token-file", str(token)), "/rt")}
    api = children["api"].argv
    assert api[api.index("--read-token-file") + 1] == str(token)
    for name, child in children.items():
        assert name == "api" or not {"--token-file", "--read-token-file"} & set(child.argv)


def test_run_refuses_a_missing_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``servertrack run`` refuses at once, instead of restarting an api that cannot start."""
    args = run_args("--token-file", str(tmp_path / "missing"))
    assert_fatal(capsys, lambda: host.plan(args, str(tmp_path)), "cannot read token file")


# -- the OpenAPI document -----------------------------------------------------------------------
def document(client: testing.TestClient) -> dict[str, Any]:
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    return result.json


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_openapi_document_is_valid_openapi_3(tokens: bool) -> None:
    """/openapi.json passes the OpenAPI 3 spec validator, with and without tokens."""
    client, _ = make_client(RECORD if tokens else None, READ if tokens else None)
    doc = document(client)
    assert doc["openapi"].startswith("3.")
    validate(doc)


def test_openapi_lists_every_route_and_method_of_the_app() -> None:
    """Every (path, method) the app routes is documented, and nothing else is."""
    client, _ = make_client()
    routed = {
        (route.path, method.method.lower())
        for route in falcon.inspect.inspect_routes(client.app.app)  # behind the fast reads
        for method in route.methods
        if not method.internal
    }
    documented = {
        (path, method) for path, item in document(client)["paths"].items() for method in item
    }
    assert routed == documented


def test_openapi_security_follows_the_tokens() -> None:
    """With tokens, POSTs need recordToken and reads readToken (Prometheus' remote read, a
    POST, among them), with a documented 401."""
    doc = document(make_client(RECORD, READ)[0])
    assert set(doc["components"]["securitySchemes"]) == {"recordToken", "readToken"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path in OPEN or path in PAGES:
                expected = []
            else:
                records = method == "post" and path not in READ_POSTS
                expected = [{"recordToken" if records else "readToken": []}]
            assert operation["security"] == expected, (path, method)
            assert ("401" in operation["responses"]) is bool(expected), (path, method)
    for item in document(make_client()[0])["paths"].values():
        for operation in item.values():
            assert operation["security"] == []
            assert "401" not in operation["responses"]


def test_openapi_limits_match_the_validation() -> None:
    """The batch limit and the name pattern in the document are those the app enforces."""
    doc = document(make_client()[0])
    schemas = doc["components"]["schemas"]
    assert schemas["Batch"]["maxItems"] == MAX_BATCH
    assert str(MAX_BODY) in schemas["Batch"]["description"]
    name = doc["paths"]["/servers/{name}/loads"]["get"]["parameters"][0]["schema"]
    assert name == schemas["BatchLoad"]["properties"]["server"]
    assert name["pattern"] == r"^(?=[._-]*[A-Za-z0-9])[A-Za-z0-9._-]{1,253}$"


def schema_validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for a component schema, resolving ``$ref``s inside the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


@settings(deadline=None)
@given(st.text(alphabet="aZ09._-/ é", max_size=12) | st.text(min_size=250, max_size=256))
def test_name_pattern_agrees_with_the_validation(name: str) -> None:
    """A name matches the documented schema exactly when the app's validation accepts it."""
    doc = document(make_client()[0])
    validator = schema_validator(doc, "BatchLoad")
    assert validator.is_valid({"server": name, "cpu": 1}) == valid_fqdn(name)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 105),
    st.floats(-1, 101, allow_nan=False),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=1),
)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["cpu", "ram", "other"]), VALUES, max_size=3))
def test_load_schema_agrees_with_the_validation(body: dict[str, Any]) -> None:
    """A load body is accepted (202) exactly when it is valid against the documented schema;
    ``ts`` is left out because its window moves with the clock, which no schema can state."""
    client, _ = make_client()
    validator = schema_validator(document(client), "Load")
    result = client.simulate_post("/servers/web-1/loads", json=body)
    assert (result.status_code == 202) == validator.is_valid(body), (body, result.json)
    if result.status_code != 202:
        assert result.status_code in (400, 422)


def test_prometheus_remote_read_is_a_read() -> None:
    """``POST /api/v1/read`` takes the read token and refuses the record token (it reads); a
    refused one is not counted as a refused record."""
    client, _ = make_client(RECORD, READ)
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    body = bytes(cramjam.snappy.compress_raw(prompb.ReadRequest().SerializeToString()))
    refused = client.simulate_post("/api/v1/read", body=body, headers={**headers, **bearer(RECORD)})
    assert_401(refused, invalid_token=True)
    read = client.simulate_post("/api/v1/read", body=body, headers={**headers, **bearer(READ)})
    assert read.status_code == 200 and read.headers["Content-Encoding"] == "snappy"
    stats = client.simulate_get("/stats", headers=bearer(READ)).json["api"]
    assert stats["rejected"] == {}
