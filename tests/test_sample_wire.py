"""Sample validation and the wire codecs, including hostile pickles and gzip bombs."""

from __future__ import annotations

import copyreg
import gzip
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from servertrack.common import wire
from servertrack.common.sample import (
    MAX_SEQ,
    InvalidSample,
    Sample,
    make_sample,
    sample_from_mapping,
)
from servertrack.common.wire import MAX_PAYLOAD, MalformedMessage, decode, encode, gunzip_bounded

TS = 1_700_000_000.25
GOOD: dict[str, Any] = {"fqdn": "web-01.example.com", "ts": TS, "cpu": 12.5, "ram": 40.0}


# -- helpers ------------------------------------------------------------------------------------
def gzip_of_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built 1 MiB at a time (never holds the output)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.compress(bytes(size & ((1 << 20) - 1))))
    parts.append(compressor.flush())
    return b"".join(parts)


def pickle_frames(raw_pickle: bytes) -> list[bytes]:
    """The two frames of a pickle.gz message carrying ``raw_pickle``."""
    return [b"pickle.gz", gzip.compress(raw_pickle, mtime=0)]


def reason_of(frames: list[bytes], accept_pickle: bool = True) -> str:
    """The ``reason`` of the MalformedMessage that decoding ``frames`` must raise."""
    with pytest.raises(MalformedMessage) as caught:
        decode(frames, accept_pickle=accept_pickle)
    return caught.value.reason


def invalid_reason(**fields: Any) -> str:
    """The ``reason`` of the InvalidSample that ``make_sample(**GOOD | fields)`` must raise."""
    with pytest.raises(InvalidSample) as caught:
        make_sample(**(GOOD | fields))
    return caught.value.reason


class RunsShell:
    """Pickles as a call to ``os.system``: what a hostile agent would send."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


class RunsEval:
    """Pickles as a call to ``builtins.eval`` (protocol 4: STACK_GLOBAL)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (self.source,))


# -- validation ---------------------------------------------------------------------------------
def test_valid_sample_is_normalised_to_floats() -> None:
    """A valid sample keeps its values, with int percentages and ts turned into floats."""
    sample = make_sample("db_2.example-x.com", 1_700_000_000, 50, 0, seq=0, ip=["10.0.0.1"])
    assert sample == Sample("db_2.example-x.com", 1_700_000_000.0, 50.0, 0.0, 0, ("10.0.0.1",))
    assert type(sample.ts) is float and type(sample.cpu) is float and type(sample.ram) is float


@pytest.mark.parametrize(
    "fields",
    [
        {"fqdn": "a"},
        {"fqdn": "a" * 253},
        {"cpu": 0.0, "ram": 100.0},
        {"cpu": None},
        {"ram": None},
        {"seq": MAX_SEQ},
        {"ip": ["fe80::1%eth0", "192.168.0.10"]},
        {"ip": ["10.0.0.1"] * 32},
        {"ts": -1.5},
    ],
)
def test_edge_values_are_accepted(fields: dict[str, Any]) -> None:
    """Values at the edge of each rule still make a valid sample."""
    assert isinstance(make_sample(**(GOOD | fields)), Sample)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"fqdn": ""}, "bad_fqdn"),
        ({"fqdn": "a" * 254}, "bad_fqdn"),
        ({"fqdn": "web 01"}, "bad_fqdn"),
        ({"fqdn": "héllo.example"}, "bad_fqdn"),
        ({"fqdn": "a/b"}, "bad_fqdn"),
        ({"fqdn": "web01\n"}, "bad_fqdn"),
        ({"fqdn": None}, "bad_fqdn"),
        ({"fqdn": 42}, "bad_fqdn"),
        ({"fqdn": b"web01"}, "bad_fqdn"),
        ({"cpu": -0.001}, "bad_cpu"),
        ({"cpu": 100.001}, "bad_cpu"),
        ({"cpu": float("nan")}, "bad_cpu"),
        ({"cpu": float("inf")}, "bad_cpu"),
        ({"cpu": "50"}, "bad_cpu"),
        ({"cpu": True}, "bad_cpu"),
        ({"cpu": [50]}, "bad_cpu"),
        ({"ram": -1}, "bad_ram"),
        ({"ram": 101}, "bad_ram"),
        ({"ram": float("nan")}, "bad_ram"),
        ({"ram": False}, "bad_ram"),
        ({"cpu": None, "ram": None}, "no_metrics"),
        ({"ts": float("nan")}, "bad_ts"),
        ({"ts": float("inf")}, "bad_ts"),
        ({"ts": float("-inf")}, "bad_ts"),
        ({"ts": "1700000000"}, "bad_ts"),
        ({"ts": None}, "bad_ts"),
        ({"ts": True}, "bad_ts"),
        ({"ts": 10**400}, "bad_ts"),
        ({"seq": -1}, "bad_seq"),
        ({"seq": 1.0}, "bad_seq"),
        ({"seq": True}, "bad_seq"),
        ({"seq": MAX_SEQ + 1}, "bad_seq"),
        ({"seq": "1"}, "bad_seq"),
        ({"ip": "10.0.0.1"}, "bad_ip"),
        ({"ip": [1]}, "bad_ip"),
        ({"ip": ["x"]}, "bad_ip"),
        ({"ip": ["10.0.0.1 "]}, "bad_ip"),
        ({"ip": ["10.0.0.1"] * 33}, "bad_ip"),
    ],
)
def test_invalid_values_are_refused_with_their_reason(fields: dict[str, Any], reason: str) -> None:
    """Each broken rule raises InvalidSample with that rule's reason."""
    assert invalid_reason(**fields) == reason


@pytest.mark.parametrize("data", [[], "fqdn", None, 5, [("fqdn", "a")]])
def test_mapping_must_be_a_map(data: Any) -> None:
    """Anything but a map is refused as not_a_map."""
    with pytest.raises(InvalidSample) as caught:
        sample_from_mapping(data)
    assert caught.value.reason == "not_a_map"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GOOD | {"load": 1.0}, "unknown_field"),
        (GOOD | {1: "x"}, "unknown_field"),
        ({k: v for k, v in GOOD.items() if k != "ts"}, "bad_ts"),
        ({k: v for k, v in GOOD.items() if k != "fqdn"}, "bad_fqdn"),
        ({"fqdn": "a", "ts": TS}, "no_metrics"),
    ],
)
def test_mapping_refuses_unknown_and_missing_fields(data: dict[Any, Any], reason: str) -> None:
    """A map with an unknown key or without ts/fqdn/metrics is refused with that reason."""
    with pytest.raises(InvalidSample) as caught:
        sample_from_mapping(data)
    assert caught.value.reason == reason


def test_mapping_with_every_field_gives_the_sample() -> None:
    """A map with all known fields becomes the equivalent Sample (ip list as a tuple)."""
    data = GOOD | {"seq": 7, "ip": ["10.0.0.1", "::1"]}
    assert sample_from_mapping(data) == Sample(
        "web-01.example.com", TS, 12.5, 40.0, 7, ("10.0.0.1", "::1")
    )


# -- round trips ------------------------------------------------------------------------------
SAMPLES = [
    make_sample("web-01.example.com", TS, 12.5, 40.0),
    make_sample("cpu.only", 1_700_000_000, cpu=100, seq=0),
    make_sample("ram.only", 0.000001, ram=0.0, seq=MAX_SEQ, ip=["10.1.2.3", "fe80::1%eth0"]),
    make_sample("x" * 253, -5.5, 33.333333333333336, 66.66666666666667, seq=12345),
]


@pytest.mark.parametrize("fmt", ["msgpack", "pickle.gz"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.fqdn[:16])
def test_round_trip(fmt: str, sample: Sample) -> None:
    """encode() then decode() then sample_from_mapping() gives back the same sample exactly."""
    frames = encode(sample, fmt)
    assert len(frames) == 2
    assert frames[0] == wire.FORMATS[fmt]
    assert sample_from_mapping(decode(frames, accept_pickle=True)) == sample


def test_msgpack_is_decoded_whatever_accept_pickle_says() -> None:
    """The msgpack format does not depend on accept_pickle."""
    frames = encode(SAMPLES[0], "msgpack")
    assert decode(frames) == decode(frames, accept_pickle=True)


def test_encode_refuses_an_unknown_format() -> None:
    """encode() raises ValueError for a format it does not know."""
    with pytest.raises(ValueError, match="unknown wire format"):
        encode(SAMPLES[0], "json")


# -- framing and msgpack -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "frames",
    [[], [b"msgpack"], [b"msgpack", msgpack.packb(GOOD), b""], [b""] * 5],
    ids=lambda frames: f"{len(frames)}-frames",
)
def test_wrong_frame_count_is_refused(frames: list[bytes]) -> None:
    """A message that is not exactly two frames is refused as 'frames'."""
    assert reason_of(frames) == "frames"


@pytest.mark.parametrize("fmt", [b"json", b"MSGPACK", b"", b"pickle", b"msgpack\x00", b"x" * 100])
def test_unknown_format_frame_is_refused(fmt: bytes) -> None:
    """A format frame other than msgpack / pickle.gz is refused as 'format'."""
    assert reason_of([fmt, msgpack.packb(GOOD)]) == "format"


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # the one byte msgpack never uses
        b"",
        b"\x82\xa4fqdn",  # a map cut short
        msgpack.packb(GOOD) + b"\x00",  # trailing data
        b"\xc4\x01x",  # bin is not allowed
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        msgpack.packb({"fqdn": "a" * 2000}),  # a string over max_str_len
        msgpack.packb({str(i): i for i in range(17)}),  # a map over max_map_len
        msgpack.packb(list(range(65))),  # an array over max_array_len
        b"\xd4\x01\x00",  # ext types are not allowed
    ],
)
def test_msgpack_garbage_is_refused(payload: bytes) -> None:
    """Undecodable or over-limit msgpack is refused as 'msgpack'."""
    assert reason_of([b"msgpack", payload]) == "msgpack"


def test_msgpack_non_map_decodes_but_is_not_a_sample() -> None:
    """A msgpack scalar decodes, then sample_from_mapping refuses it as not_a_map."""
    with pytest.raises(InvalidSample) as caught:
        sample_from_mapping(decode([b"msgpack", msgpack.packb(5)]))
    assert caught.value.reason == "not_a_map"


@pytest.mark.parametrize("fmt", [b"msgpack", b"pickle.gz"])
def test_payload_over_limit_is_refused_before_decoding(fmt: bytes) -> None:
    """A payload frame over MAX_PAYLOAD bytes is refused as 'too_large' in either format."""
    assert reason_of([fmt, b"\x00" * (MAX_PAYLOAD + 1)]) == "too_large"


# -- pickle.gz --------------------------------------------------------------------------------
@pytest.mark.parametrize("accept", [False, None])
def test_pickle_refused_unless_accepted(accept: bool | None) -> None:
    """pickle.gz is refused as 'pickle_disabled' when accept_pickle is False or not given."""
    frames = encode(SAMPLES[0], "pickle.gz")
    with pytest.raises(MalformedMessage) as caught:
        decode(frames) if accept is None else decode(frames, accept_pickle=accept)
    assert caught.value.reason == "pickle_disabled"


def test_pickle_calling_os_system_is_refused_and_not_run(tmp_path: Path) -> None:
    """A pickle whose __reduce__ calls os.system is refused as 'pickle' and runs nothing."""
    target = tmp_path / "pwned"
    raw = pickle.dumps(GOOD | {"ip": RunsShell(f"touch {target}")}, protocol=4)
    assert b"system" in raw
    assert reason_of(pickle_frames(raw)) == "pickle"
    assert reason_of(pickle_frames(pickle.dumps(RunsShell(f"touch {target}")))) == "pickle"
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_naming_builtins_eval_is_refused(tmp_path: Path, protocol: int) -> None:
    """A pickle that calls builtins.eval (GLOBAL or STACK_GLOBAL) is refused as 'pickle'."""
    target = tmp_path / "evaluated"
    source = f"open({str(target)!r}, 'w').close()"
    raw = pickle.dumps(RunsEval(source), protocol=protocol)
    assert b"eval" in raw
    assert reason_of(pickle_frames(raw)) == "pickle"
    assert not target.exists()


def test_handwritten_global_opcode_for_eval_is_refused(tmp_path: Path) -> None:
    """The classic protocol-0 'cbuiltins\\neval' pickle is refused as 'pickle'."""
    target = tmp_path / "evaluated"
    raw = b"cbuiltins\neval\n(V" + f"open({str(target)!r}, 'w').close()".encode() + b"\ntR."
    assert reason_of(pickle_frames(raw)) == "pickle"
    assert not target.exists()


def test_pickle_through_the_extension_registry_is_refused(tmp_path: Path) -> None:
    """An EXT2 opcode naming a registered os.system extension is refused like any global."""
    code = 0xBEE
    copyreg.add_extension("os", "system", code)
    try:
        target = tmp_path / "pwned"
        command = f"touch {target}".encode()
        raw = b"\x80\x02\x83" + struct.pack("<H", code)
        raw += b"X" + struct.pack("<I", len(command)) + command + b"\x85R."
        assert reason_of(pickle_frames(raw)) == "pickle"
        assert not target.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize(
    "raw",
    [
        b"Pfoo\n.",  # persistent id
        b"\x80\x04\x95",  # truncated
        b"not a pickle",
        pickle.dumps(GOOD | {"ts": __import__("datetime").datetime(2026, 1, 1)}),
    ],
    ids=["persistent-id", "truncated", "garbage", "datetime-global"],
)
def test_other_unplain_pickles_are_refused(raw: bytes) -> None:
    """Persistent ids, truncated or garbage pickles and any class instance are refused."""
    assert reason_of(pickle_frames(raw)) == "pickle"


def test_pickle_with_huge_int_ts_is_a_bad_ts() -> None:
    """A pickle carrying an int ts too big for a float decodes, then fails validation as bad_ts."""
    data = decode(pickle_frames(pickle.dumps(GOOD | {"ts": 10**400})), accept_pickle=True)
    with pytest.raises(InvalidSample) as caught:
        sample_from_mapping(data)
    assert caught.value.reason == "bad_ts"


def test_pickle_memo_index_cannot_make_decode_allocate_memory() -> None:
    """An 11-byte pickle storing into memo slot 2**23 is decoded without allocating ~128 MB."""
    raw = b"\x80\x04Nr" + struct.pack("<I", 2**23) + b"0N."
    script = textwrap.dedent(
        f"""
        import gzip, resource
        from servertrack.common import wire
        frames = [b"pickle.gz", gzip.compress({raw!r})]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            wire.decode(frames, accept_pickle=True)
        except wire.MalformedMessage:
            pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    grown_mb = int(done.stdout.strip())
    assert grown_mb < 32, f"decoding a {len(raw)}-byte pickle grew the process by {grown_mb} MB"


# -- gzip -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb_100mb() -> bytes:
    return gzip_of_zeros(100 * 1024 * 1024)


def test_gzip_bomb_of_100_mb_is_refused_quickly(bomb_100mb: bytes) -> None:
    """100 MB of compressed zeros is refused as 'too_large' in milliseconds and without memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert reason_of([b"pickle.gz", bomb_100mb]) == "too_large"
        with pytest.raises(MalformedMessage) as caught:
            gunzip_bounded(bomb_100mb)  # the decompressor alone, without the frame size check
        assert caught.value.reason == "too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 1024 * 1024


def test_gzip_bomb_small_enough_to_pass_the_frame_limit_is_refused() -> None:
    """A bomb under MAX_PAYLOAD compressed (15 MB of zeros) stops at MAX_PAYLOAD decompressed."""
    bomb = gzip_of_zeros(15 * 1024 * 1024)
    assert len(bomb) <= MAX_PAYLOAD
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert reason_of([b"pickle.gz", bomb]) == "too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 512 * 1024


def test_pickle_just_over_the_decompressed_limit_is_too_large() -> None:
    """A valid pickle.gz whose pickle is larger than MAX_PAYLOAD is refused as 'too_large'."""
    raw = pickle.dumps(GOOD | {"fqdn": "a" * MAX_PAYLOAD})
    assert len(gzip.compress(raw)) < MAX_PAYLOAD
    assert reason_of(pickle_frames(raw)) == "too_large"


def test_gunzip_bounded_accepts_exactly_the_limit() -> None:
    """A stream of exactly ``limit`` bytes decompresses; one byte more is too_large."""
    assert gunzip_bounded(gzip.compress(b"z" * 100), limit=100) == b"z" * 100
    with pytest.raises(MalformedMessage) as caught:
        gunzip_bounded(gzip.compress(b"z" * 101), limit=100)
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize(
    "payload",
    [
        b"not gzip at all",
        gzip.compress(pickle.dumps(GOOD))[:-6],  # truncated stream
        zlib.compress(pickle.dumps(GOOD)),  # zlib, not gzip
    ],
    ids=["garbage", "truncated", "zlib-header"],
)
def test_broken_gzip_is_refused(payload: bytes) -> None:
    """A pickle.gz payload that is not one complete gzip stream is refused as 'gzip'."""
    assert reason_of([b"pickle.gz", payload]) == "gzip"
