"""The sample model and its validation, the one definition every entry point uses.

What a valid value is lives here once: :func:`valid_ts` for a ts, :func:`valid_percent` for a cpu
or ram value, :func:`plainly_valid` for the fast paths that skip building a :class:`Sample`, and
:func:`valid_columns` for the same rules over a batch's columns. Whether a ts is inside the time
window is :mod:`servertrack.common.buckets`' (:class:`~servertrack.common.buckets.TimeWindow`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeGuard

FQDN_RE = re.compile(r"(?=[._-]*[A-Za-z0-9])[A-Za-z0-9._-]{1,253}")
"""1-253 of letters, digits, ``.``, ``-``, ``_``, at least one a letter or digit (no ``..``)."""
IP_RE = re.compile(r"[0-9A-Za-z:.%_-]{2,64}")
MAX_IPS = 32
MAX_SEQ = 2**63 - 1
FIELDS = frozenset({"fqdn", "ts", "ip", "cpu", "ram", "seq"})
METRICS = ("cpu", "ram")
INF = math.inf
PERCENT_MIN = 0.0
PERCENT_MAX = 100.0
GRAPHITE_CLAMP = 110.0
"""The one limit that differs on purpose: a Graphite value above ``PERCENT_MAX`` and up to this is
taken as ``PERCENT_MAX`` (and counted, ``graphite_clamped``), because collectd's cpu plugin in
jiffies mode reports a little over 100 (100.998 was captured). Beyond it the point is refused like
any other value (``bad_cpu`` / ``bad_ram``). No other source needs the leniency."""


class Sample(NamedTuple):
    """One validated measurement; ``cpu``/``ram`` are ``None`` when the source did not send them."""

    fqdn: str
    ts: float
    cpu: float | None
    ram: float | None
    seq: int | None = None
    ip: tuple[str, ...] = ()


class InvalidSample(ValueError):
    """A sample that breaks the model; ``reason`` is the short counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def valid_fqdn(name: Any) -> bool:
    """1-253 characters from letters, digits, ``.``, ``-`` and ``_``."""
    return type(name) is str and FQDN_RE.fullmatch(name) is not None


def valid_percent(value: Any) -> bool:
    """The one rule for a cpu or ram value, on every path (agents, HTTP records, Graphite points):
    an int or a float from 0 to 100. A string (``"50"``, ``"5_0"``), a bool, NaN and the
    infinities are not. ``-0.0`` is (it is zero): it is stored as ``0.0``."""
    kind = type(value)
    return (kind is float or kind is int) and PERCENT_MIN <= value <= PERCENT_MAX


def valid_ts(value: Any) -> bool:
    """The one rule for a ts, on every path: an int or a float that is a finite number of epoch
    seconds (NaN, the infinities and an int too large for a float are not). Whether it is inside
    the time window is decided after, by the time window alone."""
    kind = type(value)
    if kind is float:
        return bool(-INF < value < INF)  # value is a float here
    if kind is int:
        try:
            float(value)
        except OverflowError:
            return False
        return True
    return False


def plainly_valid(ts: Any, cpu: Any, ram: Any) -> TypeGuard[float]:
    """Whether the values of a sample are valid as they come: ``ts`` a :func:`valid_ts` float (so
    a true answer narrows ``ts`` to float), ``cpu`` and ``ram`` each absent (``None``) or
    :func:`valid_percent`, not both absent.

    The fast paths (a known server's agent message, HTTP record or Graphite point) take such
    values without :func:`make_sample`; everything else goes through it, which gives the reason.
    So a fast path accepts nothing the full validation refuses. An int ts is valid too, but only
    the full validation turns it into a float. The name, seq and addresses are the caller's.

    PERF: the float case of :func:`valid_ts` is written out here: the call cost 55 ns of ~190.
    """
    return (
        type(ts) is float
        and -INF < ts < INF
        and (cpu is None or valid_percent(cpu))
        and (ram is None or valid_percent(ram))
        and (cpu is not None or ram is not None)
    )


def valid_columns(ts: Any, cpu: Any, ram: Any) -> Any:
    """:func:`valid_ts` and :func:`valid_percent` over a batch's numpy columns (NaN = value
    absent): a boolean array, True where the ts and each value present are valid. A row with
    neither value passes here; only :func:`make_sample` requires one. Written with array
    operators alone, so that this module (which agents import) needs no numpy."""
    absent_cpu, absent_ram = cpu != cpu, ram != ram  # NaN is the one value unequal to itself
    return (
        (abs(ts) < INF)
        & (absent_cpu | ((cpu >= PERCENT_MIN) & (cpu <= PERCENT_MAX)))
        & (absent_ram | ((ram >= PERCENT_MIN) & (ram <= PERCENT_MAX)))
    )


def check_percent(field: str, value: Any) -> float | None:
    """``value`` as a float percentage (``-0.0`` as ``0.0``), ``None`` if absent; raises on
    anything else."""
    if value is None:
        return None
    if not valid_percent(value):
        raise InvalidSample(
            f"bad_{field}", f"{field} must be a number from 0 to 100, got {value!r:.64}"
        )
    return float(value) + 0.0


def check_ts(value: Any) -> float:
    if not valid_ts(value):
        raise InvalidSample(
            "bad_ts", f"ts must be a finite number of epoch seconds, got {value!r:.64}"
        )
    return float(value)


def check_seq(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise InvalidSample("bad_seq", f"seq must be a non-negative integer, got {value!r}")
    return value


def check_ips(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if type(value) not in (list, tuple) or len(value) > MAX_IPS:
        raise InvalidSample("bad_ip", f"ip must be a list of at most {MAX_IPS} addresses")
    for address in value:
        if type(address) is not str or IP_RE.fullmatch(address) is None:
            raise InvalidSample("bad_ip", f"not an IP address: {address!r}")
    return tuple(value)


def make_sample(
    fqdn: Any,
    ts: Any,
    cpu: Any = None,
    ram: Any = None,
    seq: Any = None,
    ip: Any = None,
) -> Sample:
    """Build a :class:`Sample` from untrusted values, raising :class:`InvalidSample`."""
    if not valid_fqdn(fqdn):
        raise InvalidSample(
            "bad_fqdn", "server name must be 1-253 characters from letters, digits, '.', '-', '_'"
        )
    cpu_value = check_percent("cpu", cpu)
    ram_value = check_percent("ram", ram)
    if cpu_value is None and ram_value is None:
        raise InvalidSample("no_metrics", "a sample needs cpu, ram or both")
    return Sample(fqdn, check_ts(ts), cpu_value, ram_value, check_seq(seq), check_ips(ip))


def sample_from_mapping(data: Any) -> Sample:
    """Validate a decoded wire map (``fqdn, ts, ip, cpu, ram, seq``); unknown keys are refused."""
    if not isinstance(data, Mapping):
        raise InvalidSample("not_a_map", "a sample must be a map")
    if not FIELDS.issuperset(data):
        unknown = sorted(str(key) for key in data if key not in FIELDS)
        raise InvalidSample("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    if "ts" not in data:
        raise InvalidSample("bad_ts", "ts is required")
    get = data.get
    return make_sample(get("fqdn"), data["ts"], get("cpu"), get("ram"), get("seq"), get("ip"))


def sample_to_mapping(sample: Sample) -> dict[str, Any]:
    """The wire map of a sample, leaving out what is absent."""
    data: dict[str, Any] = {"fqdn": sample.fqdn, "ts": sample.ts}
    if sample.ip:
        data["ip"] = list(sample.ip)
    if sample.cpu is not None:
        data["cpu"] = sample.cpu
    if sample.ram is not None:
        data["ram"] = sample.ram
    if sample.seq is not None:
        data["seq"] = sample.seq
    return data
