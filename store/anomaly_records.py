"""How anomaly scores are kept in Redis, for the scorer that writes them
(:mod:`servertrack.store.anomaly_scores`) and the reader (:mod:`servertrack.store.reader`).

Per server, ``st:{<name>}:a``: a ring of 61 slots of 24 bytes (minute i64, cpu f64, ram f64),
slot ``minute % 61``, under the server's hash tag so a view reads it with its other keys. For the
fleet, ``st:{#anomaly}:latest``: the newest scores (minute, names, cpu and ram as float64 bytes),
read with the summary records by ``/fleet``; ``st:{#anomaly}:state``: the detectors (minute,
names, the bank's bytes); ``st:{#anomaly}:lease``: who scores.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from servertrack.anomaly.detector import DetectorBank
from servertrack.anomaly.fleet_scores import SLOTS
from servertrack.common.buckets import HOUR
from servertrack.store.keys import PREFIX

LEASE = f"{PREFIX}:{{#anomaly}}:lease".encode()
STATE = f"{PREFIX}:{{#anomaly}}:state".encode()
LATEST = f"{PREFIX}:{{#anomaly}}:latest".encode()
LEASE_MS = 75_000
"""The lease lives this long unless renewed (the holder renews it every minute)."""
RETRY = 5.0
"""Seconds between two tries of an aggregator not holding the lease."""
SCORE_DELAY = 15.0
"""Seconds after a minute ends before it is scored: every host's last batches of it merged (the
store flush, 1 s) and their summary records rewritten (every 5 s)."""
RING_TTL_MS = 2 * HOUR * 1000
"""A server's scores outlive the 60 minutes shown."""
STATE_TTL_MS = 26 * HOUR * 1000
RING_DTYPE = np.dtype([("minute", "<i8"), ("cpu", "<f8"), ("ram", "<f8")])
WRITE_CHUNK = 20_000
"""Commands per pipelined write."""
LEASE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete the lease only while it is still the caller's: a holder whose lease expired and was
taken by another host must not delete the new holder's."""


def ring_key(name: str) -> bytes:
    """The key of a server's recent scores (under its hash tag, beside its other keys)."""
    return f"{PREFIX}:{{{name}}}:a".encode()


def ring_scores(raw: Any, minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cpu and ram scores of ``minutes`` in a server's ring (NaN where it holds none)."""
    minutes = np.asarray(minutes, np.int64)
    cpu = np.full(minutes.size, np.nan)
    ram = np.full(minutes.size, np.nan)
    if not isinstance(raw, bytes) or not raw:
        return cpu, ram
    ring = np.zeros(SLOTS, RING_DTYPE)
    usable = min(len(raw) - len(raw) % RING_DTYPE.itemsize, SLOTS * RING_DTYPE.itemsize)
    held = np.frombuffer(raw[:usable], RING_DTYPE)
    ring[: held.size] = held
    slots = ring[minutes % SLOTS]
    kept = slots["minute"] == minutes
    cpu[kept], ram[kept] = slots["cpu"][kept], slots["ram"][kept]
    return cpu, ram


def decode_latest(raw: Any) -> tuple[int, list[str], np.ndarray, np.ndarray] | None:
    """(minute, names, cpu, ram) of the newest scores, or None without (or with a damaged)
    record."""
    if not isinstance(raw, bytes):
        return None
    try:
        record = msgpack.unpackb(raw)
        names = [str(name) for name in record["names"]]
        cpu = np.frombuffer(record["cpu"], "<f8")
        ram = np.frombuffer(record["ram"], "<f8")
        if not len(names) == cpu.size == ram.size:
            return None
        return int(record["minute"]), names, cpu, ram
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None


def align(names: list[str], latest: Any) -> tuple[np.ndarray, np.ndarray]:
    """The newest scores of ``names`` from the latest record (NaN for a name it lacks)."""
    cpu = np.full(len(names), np.nan)
    ram = np.full(len(names), np.nan)
    decoded = decode_latest(latest)
    if decoded is None:
        return cpu, ram
    _, scored, scored_cpu, scored_ram = decoded
    if scored == names:
        return scored_cpu.copy(), scored_ram.copy()
    position = {name: k for k, name in enumerate(scored)}
    for k, name in enumerate(names):
        found = position.get(name)
        if found is not None:
            cpu[k], ram[k] = scored_cpu[found], scored_ram[found]
    return cpu, ram


def encode_state(minute: int, names: list[str], bank: DetectorBank) -> bytes:
    return msgpack.packb({"minute": minute, "names": names, "bank": bank.to_bytes()})


def decode_state(raw: Any) -> tuple[int, list[str], DetectorBank] | None:
    """The detectors a holder left, or None (none, damaged, or of other parameters)."""
    if not isinstance(raw, bytes):
        return None
    try:
        record = msgpack.unpackb(raw)
        names = [str(name) for name in record["names"]]
        bank = DetectorBank.from_bytes(record["bank"])
        if bank.rows != 2 * len(names):
            return None
        return int(record["minute"]), names, bank
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None
