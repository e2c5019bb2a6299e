"""The one validation of records sent over HTTP: the body read within its limit, its JSON decoded
strictly, and each item turned into a :class:`~servertrack.common.sample.Sample` inside the
time window. The Falcon app (``POST /servers/{name}/loads`` and ``POST /loads``) and the fast
path of single records (:mod:`servertrack.api.fastpath`) both call these functions; each raises
the :class:`~servertrack.api.errors.ApiError` a client gets.

Decoding is strict: at most ``MAX_BODY`` bytes, no NaN or Infinity, no duplicate keys, and a
clear 400 (not a 500) for nesting too deep to decode. PERF: a body that is a plain record (one
JSON object of numbers) is decoded by orjson, 0.5 us against 4-8 us for the standard library
with the strictness hooks (``bench/results``); whatever else (a string, a nested value, a
backslash, a duplicate key, an error) is decoded again by the standard library, so every error
and every value is exactly the one it gives (see :func:`decode_json`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from servertrack.api.errors import BadRequest, PayloadTooLarge, Unprocessable
from servertrack.common.buckets import HOUR_WINDOW, MAX_FUTURE_SECONDS, Clock, time_verdict
from servertrack.common.sample import InvalidSample, Sample, make_sample, valid_fqdn

MAX_BATCH = 10_000
MAX_BODY = 4 * 1024 * 1024
"""A full 10,000-item batch is about 0.8 MB of JSON."""
DRAIN_LIMIT = 5 * 1024 * 1024
"""A body announced over ``MAX_BODY`` but up to this is read (and dropped) before the 413."""
SINGLE_FIELDS = frozenset({"cpu", "ram", "ts"})
BATCH_FIELDS = SINGLE_FIELDS | {"server"}
NAME_RULE = "1-253 characters from letters, digits, '.', '-', '_'"
WINDOW_MESSAGES = {
    "future": f"ts is more than {MAX_FUTURE_SECONDS:g} s ahead of the server clock",
    "too_old": f"ts is older than the {HOUR_WINDOW}-hour window",
}
PLAIN_BODY = 1024
"""Bytes a body may have to be tried by orjson first: a record is under 100, and a larger body
(a batch of ``POST /loads``) would only be decoded twice."""
PLAIN_NUMBER = 9e18
"""orjson gives an integer beyond 64 bits as a float where the standard library keeps the int:
a plain record's numbers stay below this (a ts is about 2e9), anything else is decoded again."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return data


def strict_loads(text: str) -> Any:
    """The standard library's decoding with the strict options (the reference for every body)."""
    return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


def read_body(stream: Any, content_length: int | None, max_body: int = MAX_BODY) -> bytes:
    """A request's body, refused 413 over ``max_body`` (announced or sent) and 400 when empty."""
    if content_length is not None and content_length > max_body:
        if content_length <= DRAIN_LIMIT:
            # Read it before answering (waitress has it already): a server that reads
            # bodies lazily (granian) would otherwise close the connection under a client
            # still sending, which then sees a broken pipe instead of the 413.
            stream.read(content_length)
        raise PayloadTooLarge("too_large", f"body exceeds {max_body} bytes")
    raw: bytes = stream.read(max_body + 1 if content_length is None else content_length)
    if len(raw) > max_body:
        raise PayloadTooLarge("too_large", f"body exceeds {max_body} bytes")
    if not raw:
        raise BadRequest("bad_json", "the body is empty; a JSON document is needed")
    return raw


def _plain_record(raw: bytes) -> dict[str, Any] | None:
    """``raw`` decoded by orjson when it is a plain record, one object of numbers (or nulls)
    with no key twice: then the standard library decodes it to the same value. None otherwise.

    Every quote of such a body belongs to a key (no value is a string, nothing is nested), and
    each key has two or more (an escaped quote in it adds one): so it holds each key once, and
    only once, exactly when it has two quotes a key.
    """
    if len(raw) > PLAIN_BODY:
        return None
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(item) is not dict or raw.count(b'"') != 2 * len(item):
        return None
    for value in item.values():
        kind = type(value)
        number = kind is float or kind is int
        if not (value is None or (number and -PLAIN_NUMBER < value < PLAIN_NUMBER)):
            return None
    return item


def decode_json(raw: bytes) -> Any:
    """A body's JSON, strictly (see the module docstring); 400 ``bad_json`` when it is not."""
    item = _plain_record(raw)
    if item is not None:
        return item
    try:
        return strict_loads(raw.decode())
    except RecursionError:
        raise BadRequest("bad_json", "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("bad_json", f"malformed JSON: {err}") from err


def check_name(name: str) -> str:
    if not valid_fqdn(name):
        raise BadRequest("bad_fqdn", f"server name must be {NAME_RULE}")
    return name


class Intake:
    """Turns JSON items into validated samples, applying the time window at ``clock()``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def single(self, name: str, item: Any) -> Sample:
        """The sample of ``POST /servers/{name}/loads`` whose body decoded to ``item``."""
        return self.sample(name, item, SINGLE_FIELDS, None)

    def sample(self, name: str, item: Any, fields: frozenset[str], index: int | None) -> Sample:
        if not isinstance(item, dict):
            raise BadRequest("not_an_object", "each load must be a JSON object", index)
        unknown = sorted(set(item) - fields)
        if unknown:
            raise BadRequest("unknown_field", f"unknown field(s): {', '.join(unknown)}", index)
        now = self.clock()
        ts = item.get("ts", now)
        try:
            sample = make_sample(name, ts, item.get("cpu"), item.get("ram"))
        except InvalidSample as err:
            raise Unprocessable(err.reason, err.message, index) from err
        verdict = time_verdict(sample.ts, now)
        if verdict is not None:
            raise Unprocessable(verdict, WINDOW_MESSAGES[verdict], index)
        return sample


def accepted_json(reply: dict[str, Any]) -> bytes:
    """The body of a 202 for the receiver's ``reply``; 422 when it refused the record(s).

    PERF: formatted, not ``json.dumps`` (0.2 us against 2-5 us): the counts are ints.
    """
    if "error" in reply:
        raise Unprocessable(
            reply["error"],
            reply.get("message", f"refused by the receiver: {reply['error']}"),
            reply.get("index"),
        )
    return b'{"accepted": %d, "duplicates": %d}' % (reply["accepted"], reply.get("duplicates", 0))
