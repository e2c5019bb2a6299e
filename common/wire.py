"""Agent → receiver wire format: a two-frame ZeroMQ message ``[format, payload]``.

``msgpack``   payload is a msgpack map ``{fqdn, ts, ip, cpu, ram, seq}`` (the default).
``pickle.gz`` payload is a gzip-compressed pickle of the same dict (the legacy format). It is
              decoded by an unpickler that refuses every global, so a hostile pickle cannot run
              code, and decompression stops at ``MAX_PAYLOAD`` bytes, so a gzip bomb is refused.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from typing import Any

import msgpack

from servertrack.common.sample import Sample, sample_to_mapping

MSGPACK = b"msgpack"
PICKLE_GZ = b"pickle.gz"
FORMATS = {"msgpack": MSGPACK, "pickle.gz": PICKLE_GZ}
MAX_PAYLOAD = 16 * 1024
"""Largest payload (after decompression) a sample may have; real samples take ~100 bytes."""
GZIP_WBITS = 16 + zlib.MAX_WBITS

MAX_MEMO_INDEX = 1024
"""A sample's pickle memoises a handful of objects; a huge memo index would make the C
unpickler allocate a table of that size (an 11-byte pickle could claim a gigabyte)."""
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


class MalformedMessage(ValueError):
    """A message that cannot be decoded; ``reason`` is the short counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds only plain data: every class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is forbidden")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are forbidden")


def encode(sample: Sample, fmt: str = "msgpack") -> list[bytes]:
    """The frames that carry ``sample`` in wire format ``fmt``."""
    data = sample_to_mapping(sample)
    if fmt == "msgpack":
        return [MSGPACK, msgpack.packb(data)]
    if fmt == "pickle.gz":
        return [PICKLE_GZ, gzip.compress(pickle.dumps(data, protocol=4), mtime=0)]
    raise ValueError(f"unknown wire format {fmt!r}")


def gunzip_bounded(payload: bytes, limit: int = MAX_PAYLOAD) -> bytes:
    """Decompress a gzip stream, refusing output beyond ``limit`` bytes (gzip bombs)."""
    inflater = zlib.decompressobj(GZIP_WBITS)
    try:
        data = inflater.decompress(payload, limit + 1)
    except zlib.error as err:
        raise MalformedMessage("gzip", f"not a gzip stream: {err}") from err
    if len(data) > limit or inflater.unconsumed_tail:
        raise MalformedMessage("too_large", f"decompressed payload exceeds {limit} bytes")
    if not inflater.eof:
        raise MalformedMessage("gzip", "truncated gzip stream")
    return data


def unpack_limited(payload: bytes) -> Any:
    """msgpack-decode a payload with every length bounded (no bin or ext types at all)."""
    return msgpack.unpackb(
        payload, max_str_len=1024, max_bin_len=0, max_array_len=64, max_map_len=16, max_ext_len=0
    )


def unpickle_plain(data: bytes) -> Any:
    """Unpickle data that may only contain built-in containers and scalars."""
    import pickletools  # the receiver's legacy path only; agents never load it

    try:
        for opcode, argument, _ in pickletools.genops(data):
            # Every memo opcode's argument is its int index.
            memo = opcode.name in _MEMO_OPCODES
            if memo and isinstance(argument, int) and argument > MAX_MEMO_INDEX:
                raise pickle.UnpicklingError(f"memo index {argument} is too large")
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # any failure of hostile input is one reason
        raise MalformedMessage("pickle", f"refused pickle: {err}") from err


def decode(frames: list[bytes], accept_pickle: bool = False) -> Any:
    """The decoded (not yet validated) map carried by ``frames``."""
    if len(frames) != 2:
        raise MalformedMessage("frames", f"expected 2 frames, got {len(frames)}")
    fmt, payload = frames
    if len(payload) > MAX_PAYLOAD:
        raise MalformedMessage("too_large", f"payload exceeds {MAX_PAYLOAD} bytes")
    if fmt == MSGPACK:
        try:
            return unpack_limited(payload)
        except Exception as err:  # msgpack raises several unrelated types for bad input
            raise MalformedMessage("msgpack", f"undecodable msgpack: {err}") from err
    if fmt == PICKLE_GZ:
        if not accept_pickle:
            raise MalformedMessage(
                "pickle_disabled", "pickle.gz is off (start with --accept-pickle)"
            )
        return unpickle_plain(gunzip_bounded(payload))
    raise MalformedMessage("format", f"unknown format frame {bytes(fmt[:32])!r}")
