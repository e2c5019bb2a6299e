"""The single record served before Falcon: for every request, the fast path answers byte for byte
what the Falcon app answers (status, header list, body), counts the same refusals, and leaves
to the app whatever it does not take; the orjson lane of the body decoding gives exactly what
the standard library gives.

Each side runs over its own in-process backend (the real receiver and aggregator states), so a
record that one side accepts is not a duplicate on the other.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from servertrack.api.admission import Admission
from servertrack.api.assembly import assemble
from servertrack.api.errors import ApiError
from servertrack.api.intake import MAX_BODY, Intake, _plain_record, decode_json, strict_loads
from servertrack.api.stats import ApiStats
from servertrack.common.sample import Sample
from tests.support import Clock, DownBackend, InProcessBackend

NOW = 1_699_999_200.0 + 30 * 60 + 15.0
TOKEN = "rec-0123456789abcdef"
Answer = tuple[str, list[tuple[str, str]], bytes]


class Side:
    """One assembled API (the fast paths in front of the app) over a backend of its own; ``app``
    answers through Falcon, ``fast`` through the entrance, noting whether it asked the app."""

    def __init__(self, backend: Any, token: str | None = None) -> None:
        self.stats = ApiStats()
        self.fast, _, _ = assemble(backend, Admission(token, None, 5.0), Clock(NOW), self.stats)
        self.app = self.fast.app
        self.deferred = 0
        app = self.fast.app

        def counting(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            self.deferred += 1
            return app(environ, start_response)

        self.fast.app = counting

    def answer(self, through: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Answer:
        got: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            got.extend((status, headers))

        body = b"".join(through(environ, start_response))
        return got[0], list(got[1]), body


def environ(
    body: bytes,
    name: str = "web-1",
    headers: dict[str, str] | None = None,
    length: str | None = None,
) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/servers/{name}/loads",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)) if length is None else length,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    env.update(headers or {})
    return env


PLAIN = json.dumps({"cpu": 12.5, "ram": 40.0}).encode()
TAKEN = [  # (what, body, status): bodies the fast path answers itself
    ("a record", PLAIN, "202"),
    ("the same record again (a duplicate)", PLAIN, "202"),
    ("a record with its ts", json.dumps({"cpu": 1, "ts": NOW - 5}).encode(), "202"),
    ("ram only, cpu null", b'{"cpu": null, "ram": 0}', "202"),
    ("a record padded to the body limit", b'{"cpu": 3}' + b" " * (MAX_BODY - 10), "202"),
    ("malformed JSON", b"{not json", "400"),
    ("NaN", b'{"cpu": NaN}', "400"),
    ("a huge exponent", b'{"cpu": 1e400}', "422"),
    ("a huge integer", b'{"cpu": 123456789012345678901234567890}', "422"),
    ("duplicate keys", b'{"cpu": 1, "cpu" : 2}', "400"),
    ("an escaped duplicate key", b'{"cpu": 1, "c\\u0070u": 2}', "400"),
    ("nested too deeply", b"[" * 100_000, "400"),
    ("not UTF-8", b'{"cpu": 1, "\xff": 2}', "400"),
    ("not an object", b"[1, 2]", "400"),
    ("an unknown field", b'{"cpu": 1, "disk": 2}', "400"),
    ("no metrics", b'{"ts": 1}', "422"),
    ("cpu over 100", b'{"cpu": 101}', "422"),
    ("cpu a string", b'{"cpu": "5"}', "422"),
    ("cpu a boolean", b'{"cpu": true}', "422"),
    ("ts in the future", json.dumps({"cpu": 1, "ts": NOW + 61}).encode(), "422"),
    ("ts too old", json.dumps({"cpu": 1, "ts": NOW - 26 * 3600}).encode(), "422"),
]


def test_the_fast_path_answers_single_records_byte_for_byte_as_the_app() -> None:
    """Valid and refused records: the fast path answers each without the app, with the very
    status line, header list and body Falcon gives, and counts each refusal by its reason."""
    fast, slow = Side(InProcessBackend(Clock(NOW))), Side(InProcessBackend(Clock(NOW)))
    for what, body, status in TAKEN:
        deferred = fast.deferred
        mine = fast.answer(fast.fast, environ(body))
        assert fast.deferred == deferred, f"{what}: the fast path asked the app"
        theirs = slow.answer(slow.app, environ(body))
        assert mine == theirs, what
        assert mine[0].startswith(status), (what, mine)
    assert fast.stats.snapshot()["rejected"] == slow.stats.snapshot()["rejected"]
    assert sum(fast.stats.snapshot()["rejected"].values()) == sum(
        status != "202" for _, _, status in TAKEN
    )


DEFERRED = [  # (what, environ): requests the fast path leaves to the app
    ("a query string", environ(PLAIN, headers={"QUERY_STRING": "x=1"})),
    ("a bad name", environ(PLAIN, name="we b")),
    ("a name with a slash", environ(PLAIN, name="a/b")),
    ("an empty name", environ(PLAIN, name="")),
    ("an empty body", environ(b"")),
    ("no Content-Length", environ(PLAIN, length="")),
    ("a wrong Content-Length", environ(PLAIN, length="12x")),
    ("a body announced over the limit", environ(PLAIN, length=str(MAX_BODY + 1))),
    ("a form content type", environ(PLAIN, headers={"CONTENT_TYPE": "text/plain"})),
    ("no token", environ(PLAIN)),
    ("a wrong token", environ(PLAIN, headers={"HTTP_AUTHORIZATION": "Bearer nope"})),
    ("past its deadline", environ(PLAIN, headers={"servertrack.arrived": NOW - 3600})),
]


@pytest.mark.parametrize(("what", "request_environ"), DEFERRED, ids=[d[0] for d in DEFERRED])
def test_what_the_fast_path_does_not_take_the_app_answers(
    what: str, request_environ: dict[str, Any]
) -> None:
    """Requests needing the app's routing, a refusal by the admission rule or the app's reading
    of the body are handed to it untouched, so the answer is the app's own."""
    fast, slow = (
        Side(InProcessBackend(Clock(NOW)), TOKEN),
        Side(InProcessBackend(Clock(NOW)), TOKEN),
    )
    if what not in ("no token", "a wrong token"):
        request_environ.setdefault("HTTP_AUTHORIZATION", f"Bearer {TOKEN}")
    twin = {**request_environ, "wsgi.input": io.BytesIO(request_environ["wsgi.input"].getvalue())}
    mine = fast.answer(fast.fast, request_environ)
    assert fast.deferred == 1
    assert mine == slow.answer(slow.app, twin)


def test_with_a_token_the_fast_path_takes_the_record_and_answers_as_the_app() -> None:
    """With a record token, a record holding it is taken by the fast path, answered as the app
    answers it."""
    fast, slow = (
        Side(InProcessBackend(Clock(NOW)), TOKEN),
        Side(InProcessBackend(Clock(NOW)), TOKEN),
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    for body in (PLAIN, b'{"cpu": 101}'):
        mine = fast.answer(fast.fast, environ(body, headers=auth))
        assert mine == slow.answer(slow.app, environ(body, headers=auth))
    assert fast.deferred == 0


@pytest.mark.parametrize("receiver_up", [False, True])
def test_a_receiver_down_or_refusing_is_answered_as_the_app_answers_it(receiver_up: bool) -> None:
    """No receiver: 503 ``backend_unavailable`` from both paths, byte for byte."""
    fast, slow = Side(DownBackend(receiver_up)), Side(DownBackend(receiver_up))
    mine = fast.answer(fast.fast, environ(PLAIN))
    assert mine == slow.answer(slow.app, environ(PLAIN))
    assert mine[0].startswith("202" if receiver_up else "503")
    assert fast.deferred == 0


class Refusing(InProcessBackend):
    """A receiver that refuses every record with its own reason (or fails outright)."""

    def __init__(self, failure: Exception | None = None) -> None:
        super().__init__(Clock(NOW))
        self.failure = failure

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        return {"error": "name_conflict", "message": "another host owns this name", "index": None}


@pytest.mark.parametrize(
    "failure",
    [None, OSError(24, "Too many open files"), RuntimeError("a bug")],
    ids=["receiver-refuses", "out-of-files", "unexpected"],
)
def test_a_refusal_or_failure_after_validation_is_answered_as_the_app_answers_it(
    failure: Exception | None,
) -> None:
    """The receiver's own refusal (422 with its reason), running out of files (503, counted) and
    an unexpected error (500, logged) come out of both paths alike."""
    fast, slow = Side(Refusing(failure)), Side(Refusing(failure))
    mine = fast.answer(fast.fast, environ(PLAIN))
    assert mine == slow.answer(slow.app, environ(PLAIN))
    assert (
        mine[0][:3]
        == {None: "422", OSError: "503", RuntimeError: "500"}[
            None if failure is None else type(failure)
        ]
    )
    assert fast.stats.snapshot()["files_exhausted"] == slow.stats.snapshot()["files_exhausted"]
    assert fast.stats.snapshot()["rejected"] == slow.stats.snapshot()["rejected"]


# -- one decoding, two lanes ------------------------------------------------------------------
KEYS = st.sampled_from(["cpu", "ram", "ts", "disk", "c\\u0070u", "", "\\u00ff", 'a\\"b'])
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["1e400", "-0", "-0.0", "1E2", "12.50000000000000000001", "NaN", "true"]),
    st.none(),
    st.just('"5"'),
    st.just("[1]"),
    st.just("{}"),
)
SPACES = st.sampled_from(["", " ", "\n", "\t "])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """JSON-ish objects: keys repeated, escaped or unknown, values of every type, spacing
    anywhere, now and then a byte cut or added."""
    pairs = draw(st.lists(st.tuples(KEYS, NUMBERS, SPACES, SPACES), max_size=5))
    parts = []
    for key, value, before, after in pairs:
        literal = value if isinstance(value, str) else json.dumps(value)
        parts.append(f'"{key}"{before}:{after}{literal}')
    text = draw(SPACES) + "{" + ", ".join(parts) + "}" + draw(SPACES)
    raw = text.encode()
    if draw(st.booleans()) and raw:
        cut = draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut] + draw(st.sampled_from([b"", b"\\", b'"', b"\xff", b","])) + raw[cut + 1 :]
    return raw


def standard(raw: bytes) -> Any:
    """The standard library's decoding alone, as the reference."""
    try:
        return ("ok", strict_loads(raw.decode()))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ("refused",)


@settings(max_examples=1000, deadline=None)
@given(bodies())
@example(b'{"cpu": 123456789012345678901234567890}')  # orjson: a float
@example(b'{"ts": 18446744073709551615, "cpu": 1}')  # 2**64 - 1: orjson's largest int
@example(b'{"cpu": 1, "c\\u0070u": 2}')  # a duplicate key, escaped
@example(b'{"cpu": 1, "cpu" : 2}')
def test_the_orjson_lane_decodes_only_what_the_standard_library_decodes_alike(raw: bytes) -> None:
    """Whatever the body, the orjson lane either declines it or gives the very value (types
    included) the standard library gives; and the one decoding then validates to the same
    sample or the same refusal as the standard library's value does."""
    reference = standard(raw)
    plain = _plain_record(raw)
    if plain is not None:
        assert reference[0] == "ok"
        assert plain == reference[1]
        assert [type(v) for v in plain.values()] == [type(v) for v in reference[1].values()]
    intake = Intake(Clock(NOW))

    def verdict(decode: Callable[[], Any]) -> Any:
        try:
            return intake.single("web-1", decode())
        except ApiError as error:
            return (error.status, error.reason, error.description)

    decoded = verdict(lambda: decode_json(raw))
    if reference[0] == "ok":
        assert decoded == verdict(lambda: reference[1])
    else:
        assert decoded[:2] == ("400 Bad Request", "bad_json")
