"""The alert evaluator: every rule over every server, with Prometheus' states, and no I/O.

:class:`AlertEvaluator` holds the whole alerting state in one object; ``now`` is passed in. Each
:meth:`~AlertEvaluator.evaluate` takes a :class:`FleetColumns` snapshot (one row per server),
computes each rule's condition for every server at once with numpy, and keeps Python objects only
for the servers whose alert is pending, firing or recently resolved.

States follow Prometheus' alerting rules (``rules/alerting.go``): an alert whose condition starts
to hold is *pending* from its ``activeAt``; it is *firing* once the condition has held for the
rule's ``for`` (at once with ``for: 0s``); when the condition stops holding a pending alert
vanishes and a firing one is *resolved*, unless ``keep_firing_for`` keeps it firing until the
condition has been clear that long (a return of the condition meanwhile keeps the alert as it
is). A resolved alert is sent once with its ``endsAt``, then again every resend delay for 15
minutes, as Prometheus does; a condition that comes back after that makes a new alert.

**Times come from the data where the data has them**, so that two hosts evaluating the same
data on their own schedules send the same alert (Alertmanager deduplicates them; see
``docs/alerts.md``):

- ``cpu``/``ram`` conditions and anomaly scores are about the last complete minute
  (:attr:`FleetColumns.minute`). A minute's mean covers the whole minute, so the condition holds
  from the *start* of the first minute that met it (``activeAt``), and its time has advanced to
  the *end* of the latest minute seen. ``for: 5m`` fires when five minutes in a row met it;
  ``keep_firing_for: 2m`` keeps firing until two minutes in a row did not. The alert's
  ``startsAt`` is ``activeAt + for``; a resolved alert's ``endsAt`` is the start of the first
  minute that no longer met it (plus ``keep_firing_for``).
- ``silent`` holds for a server while it has sent no sample for at least the rule's ``for``:
  its ``activeAt`` is the server's last sample (``last_seen``), so it fires as soon as it holds
  (``startsAt = last_seen + for``) and is never listed as pending. Its value is the silence in
  seconds. It is resolved by the next sample, whose time is its ``endsAt`` (plus
  ``keep_firing_for``).
- A server missing from the snapshot (forgotten after 25 hours of silence) resolves its alerts
  at once, at ``now``.

Only the decisions that are about the wall clock use ``now``: silence, the resend schedule, the
15-minute retention of resolved alerts, and a firing alert's ``endsAt`` (``now + 4 *
max(evaluation interval, resend delay)``, as Prometheus sets it, so Alertmanager resolves an
alert by itself when its sender stops).

Not thread-safe: one owner calls it (the daemon's evaluation loop).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote

import numpy as np

from servertrack.alerts.rules import ANOMALIES, SILENT, Rule
from servertrack.common.buckets import MINUTE, iso_utc

PENDING = "pending"
FIRING = "firing"
RESOLVED = "inactive"
"""Prometheus' name for a resolved alert that is still kept to be sent."""
STATES = (PENDING, FIRING, RESOLVED)
DEFAULT_INTERVAL = 15.0
"""Seconds between evaluations (``--rules-interval``)."""
RESEND_DELAY = 60.0
"""Firing (and recently resolved) alerts are sent again this often (Prometheus:
``--rules.alert.resend-delay``, 1m)."""
RESOLVED_RETENTION = 15 * 60.0
"""How long a resolved alert is kept and re-sent (Prometheus' ``resolvedRetention``)."""
DEFAULT_ANOMALY_THRESHOLD = 0.5
"""An anomaly score (0 to 1) at or above this makes ``cpu_anomaly``/``ram_anomaly`` hold, until
the anomaly detector's own standard threshold is passed in instead."""
DEFAULT_EXTERNAL_URL = "http://127.0.0.1:8080"
STATE_FORMAT = "servertrack-alerts/1"


class StateError(ValueError):
    """Saved alert state that cannot be read (truncated, another format, wrong types)."""


@dataclass(frozen=True, eq=False)
class FleetColumns:
    """One row per tracked server: what every rule is evaluated over.

    The arrays are float64 of one length, aligned with ``names`` (unique names, a list or a
    tuple). NaN means "none": no sample of that metric in the minute, or no anomaly score.
    """

    names: Sequence[str]
    last_seen: np.ndarray
    """Epoch seconds of each server's newest sample."""
    cpu: np.ndarray
    """Mean cpu percent over the minute :attr:`minute` (NaN when it had no cpu sample)."""
    ram: np.ndarray
    cpu_anomaly: np.ndarray
    """Anomaly score of the cpu series at :attr:`minute` (NaN when there is none)."""
    ram_anomaly: np.ndarray
    minute: float
    """Start (epoch seconds, a multiple of 60) of the last complete minute, the one the means
    and scores describe."""

    def __post_init__(self) -> None:
        count = len(self.names)
        for name in ("last_seen", "cpu", "ram", "cpu_anomaly", "ram_anomaly"):
            column = getattr(self, name)
            if not isinstance(column, np.ndarray) or column.shape != (count,):
                raise ValueError(f"FleetColumns.{name} must be an array of {count} numbers")
        if not math.isfinite(self.minute) or self.minute % MINUTE:
            raise ValueError(f"FleetColumns.minute must be a minute's start, got {self.minute}")

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Row of each server (built on first use, once per snapshot)."""
        return {name: row for row, name in enumerate(self.names)}


@dataclass(slots=True)
class _Alert:
    """One rule's alert for one server, as Prometheus' ``Alert`` keeps it."""

    state: str
    active_at: float
    value: float
    fired_at: float | None = None
    """``activeAt + for``: the alert's ``startsAt``."""
    keep_firing_since: float | None = None
    resolved_at: float | None = None
    """The alert's ``endsAt`` once resolved."""
    retain_until: float | None = None
    last_sent_at: float | None = None
    valid_until: float | None = None
    resolution_sent: bool = False


def go_float(value: float) -> str:
    """A value as Prometheus' API writes it (Go's ``FormatFloat(v, 'e', -1, 64)``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return np.format_float_scientific(value, unique=True, trim="-", exp_digits=2)


class AlertEvaluator:
    """Every rule over every server, with Prometheus' alert states; see the module's text.

    ``interval`` is the evaluation interval and ``resend_delay`` the resend delay, which together
    set a firing alert's ``endsAt``; ``external_url`` is where this host's dashboard is reached
    (each alert's ``generatorURL`` is its server's page there); ``anomaly_threshold`` is the
    score at or above which ``cpu_anomaly``/``ram_anomaly`` hold.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        interval: float = DEFAULT_INTERVAL,
        resend_delay: float = RESEND_DELAY,
        external_url: str = DEFAULT_EXTERNAL_URL,
        anomaly_threshold: float = DEFAULT_ANOMALY_THRESHOLD,
        resolved_retention: float = RESOLVED_RETENTION,
    ) -> None:
        self.rules = tuple(rules)
        identities = [rule.identity for rule in self.rules]
        if len(set(identities)) != len(identities):
            raise ValueError("two rules share an alert name and labels")
        self.interval = interval
        self.resend_delay = resend_delay
        self.external_url = external_url.rstrip("/")
        self.anomaly_threshold = anomaly_threshold
        self.resolved_retention = resolved_retention
        self._held: list[dict[str, _Alert]] = [{} for _ in self.rules]
        self._patterns = [re.compile(r.servers) if r.servers else None for r in self.rules]
        self._masks: dict[int, np.ndarray] = {}
        self._mask_names: Sequence[str] | None = None

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, fleet: FleetColumns, now: float) -> None:
        """Evaluate every rule over every server of ``fleet`` at ``now``."""
        for index, rule in enumerate(self.rules):
            self._evaluate_rule(index, rule, fleet, now)

    def _observe(
        self, rule: Rule, fleet: FleetColumns, now: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | float, float]:
        """The rule's condition for every server, the values, when each would become active,
        and how far the data's time has come."""
        when = rule.when
        if when.subject == SILENT:
            with np.errstate(invalid="ignore"):
                age = now - fleet.last_seen
                return age >= rule.for_seconds, age, fleet.last_seen, now
        column: np.ndarray = getattr(fleet, when.subject)
        with np.errstate(invalid="ignore"):  # NaN compares false: no data, no alert
            if when.subject in ANOMALIES:
                holds = column >= self.anomaly_threshold
            elif when.op == ">":
                holds = column > when.number
            else:
                holds = column < when.number
        return holds, column, fleet.minute, fleet.minute + MINUTE

    def _server_mask(self, index: int, fleet: FleetColumns) -> np.ndarray | None:
        """Which servers a rule with ``servers:`` applies to, kept while the names stay."""
        pattern = self._patterns[index]
        if pattern is None:
            return None
        names = fleet.names
        if names is not self._mask_names and names != self._mask_names:
            self._masks.clear()
            self._mask_names = names
        mask = self._masks.get(index)
        if mask is None:
            found = (pattern.search(name) is not None for name in names)
            mask = self._masks[index] = np.fromiter(found, bool, len(names))
        return mask

    def _evaluate_rule(self, index: int, rule: Rule, fleet: FleetColumns, now: float) -> None:
        held = self._held[index]
        holds, values, since, data_now = self._observe(rule, fleet, now)
        mask = self._server_mask(index, fleet)
        if mask is not None:
            holds &= mask
        rows = np.flatnonzero(holds)
        names = fleet.names
        found = values[rows].tolist()
        starts = since[rows].tolist() if isinstance(since, np.ndarray) else None
        current = set()
        for position, row in enumerate(rows.tolist()):
            name = names[row]
            current.add(name)
            alert = held.get(name)
            if alert is None or alert.state == RESOLVED:
                active_at = starts[position] if starts is not None else float(since)
                alert = held[name] = _Alert(PENDING, active_at, found[position])
            else:
                alert.value = found[position]
                alert.keep_firing_since = None
            if alert.state == PENDING and data_now - alert.active_at >= rule.for_seconds:
                alert.state = FIRING
                alert.fired_at = alert.active_at + rule.for_seconds
        if len(held) == len(current):
            return
        for name in [name for name in held if name not in current]:
            alert = held[name]
            if alert.state == PENDING:
                del held[name]
            elif alert.state == RESOLVED:
                if alert.retain_until is None or now > alert.retain_until:
                    del held[name]
            else:
                self._cleared(rule, name, alert, fleet, now, data_now)

    def _cleared(
        self, rule: Rule, name: str, alert: _Alert, fleet: FleetColumns, now: float, data_now: float
    ) -> None:
        """A firing alert whose condition no longer holds: kept firing, or resolved."""
        row = fleet.rows.get(name)
        if row is None:  # forgotten: the server is gone, nothing is left to keep firing for
            self._resolve(alert, now, now)
            return
        clear_at = float(fleet.last_seen[row]) if rule.when.subject == SILENT else fleet.minute
        if not math.isfinite(clear_at):
            clear_at = now
        keep = rule.keep_firing_for_seconds
        if keep > 0:
            if alert.keep_firing_since is None:
                alert.keep_firing_since = clear_at
            if data_now - alert.keep_firing_since < keep:
                return
            self._resolve(alert, alert.keep_firing_since + keep, now)
        else:
            self._resolve(alert, clear_at, now)

    def _resolve(self, alert: _Alert, resolved_at: float, now: float) -> None:
        alert.state = RESOLVED
        alert.resolved_at = resolved_at
        alert.retain_until = now + self.resolved_retention
        alert.keep_firing_since = None
        alert.resolution_sent = False

    # -- what to list and what to send -----------------------------------------------------------
    def generator_url(self, server: str) -> str:
        """The server's dashboard page."""
        return f"{self.external_url}/ui/servers/{quote(server, safe='')}"

    def stats(self) -> dict[str, int]:
        """Alerts pending and firing now, as ``/stats`` shows them (``common/counters.py``)."""
        tally = dict.fromkeys(STATES, 0)
        for held in self._held:
            for alert in held.values():
                tally[alert.state] += 1
        return {"alerts_pending": tally[PENDING], "alerts_firing": tally[FIRING]}

    def api_alerts(self) -> dict[str, Any]:
        """The pending and firing alerts as Prometheus' ``GET /api/v1/alerts`` answers them
        (``{"status": "success", "data": {"alerts": [...]}}``), by alert name and server."""
        listed: list[dict[str, Any]] = []
        for rule, held in zip(self.rules, self._held, strict=True):
            for name, alert in held.items():
                if alert.state == RESOLVED:
                    continue
                item: dict[str, Any] = {
                    "labels": rule.alert_labels(name),
                    "annotations": rule.render_annotations(name, alert.value),
                    "state": alert.state,
                    "activeAt": iso_utc(alert.active_at),
                    "value": go_float(alert.value),
                }
                if alert.keep_firing_since is not None:
                    item["keepFiringSince"] = iso_utc(alert.keep_firing_since)
                listed.append(item)
        listed.sort(key=lambda item: tuple(item["labels"].items()))
        return {"status": "success", "data": {"alerts": listed}}

    def due(self, now: float) -> list[dict[str, Any]]:
        """The alerts to send to Alertmanager now, as its API v2 takes them, and they are noted
        as sent: a firing alert when it starts firing and then every resend delay, a resolved one
        when it resolves (with its ``endsAt``) and then every resend delay while it is kept."""
        lifetime = 4 * max(self.interval, self.resend_delay)
        out = []
        for rule, held in zip(self.rules, self._held, strict=True):
            for name, alert in held.items():
                if alert.state == PENDING:
                    continue
                fresh = alert.state == RESOLVED and not alert.resolution_sent
                last = alert.last_sent_at
                if not fresh and last is not None and not last + self.resend_delay < now:
                    continue
                alert.last_sent_at = now
                if alert.state == RESOLVED:
                    alert.resolution_sent = True
                else:
                    alert.valid_until = now + lifetime
                out.append(self._postable(rule, name, alert))
        return out

    def _postable(self, rule: Rule, name: str, alert: _Alert) -> dict[str, Any]:
        assert alert.fired_at is not None
        ends = alert.resolved_at if alert.state == RESOLVED else alert.valid_until
        assert ends is not None
        return {
            "labels": rule.alert_labels(name),
            "annotations": rule.render_annotations(name, alert.value),
            "startsAt": iso_utc(alert.fired_at),
            "endsAt": iso_utc(ends),
            "generatorURL": self.generator_url(name),
        }

    # -- saved state -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Every pending, firing and kept resolved alert, as JSON: enough for a restarted host
        to go on without restarting ``for`` or announcing again what fires. Each alert is a
        row of :data:`SAVED_FIELDS` under its rule's alert name and labels."""
        saved = []
        for rule, held in zip(self.rules, self._held, strict=True):
            rows = {name: _saved_row(alert) for name, alert in held.items()}
            saved.append({"alert": rule.alert, "labels": dict(rule.labels), "alerts": rows})
        document = {"format": STATE_FORMAT, "fields": SAVED_FIELDS, "rules": saved}
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, rules: Sequence[Rule], **options: Any) -> AlertEvaluator:
        """An evaluator of ``rules`` (and ``options``, as the constructor takes them) that goes
        on from saved state. Alerts of a rule that is no longer there (same alert name and
        labels) are left out. Raises :class:`StateError` for state it cannot read."""
        evaluator = cls(rules, **options)
        index_of = {rule.identity: index for index, rule in enumerate(evaluator.rules)}
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateError(f"not JSON: {err}") from None
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise StateError(f"not {STATE_FORMAT} state")
        if document.get("fields") != list(SAVED_FIELDS) or not isinstance(
            document.get("rules"), list
        ):
            raise StateError("not the fields and rules this version saves")
        for number, saved in enumerate(document["rules"]):
            try:
                identity, alerts = _saved_rule(saved)
            except (KeyError, TypeError, ValueError) as err:
                raise StateError(f"rule {number}: {err}") from None
            index = index_of.get(identity)
            if index is None:
                continue
            held = evaluator._held[index]
            for server, row in alerts.items():
                try:
                    held[server] = _restored(row)
                except (TypeError, ValueError) as err:
                    raise StateError(f"rule {number} ({identity[0]}), {server}: {err}") from None
        return evaluator


SAVED_FIELDS = (
    "state",
    "active_at",
    "value",
    "fired_at",
    "keep_firing_since",
    "resolved_at",
    "retain_until",
    "last_sent_at",
    "valid_until",
    "resolution_sent",
)
_saved_row = operator.attrgetter(*SAVED_FIELDS)
OPTIONAL_FIELDS = frozenset(
    ("fired_at", "keep_firing_since", "resolved_at", "retain_until", "last_sent_at", "valid_until")
)


def _saved_rule(saved: Any) -> tuple[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]]:
    """A saved rule's identity and its alerts by server, their types checked."""
    if not isinstance(saved, dict):
        raise TypeError("not an object")
    alert, labels, alerts = saved["alert"], saved["labels"], saved["alerts"]
    if not isinstance(alert, str) or not isinstance(labels, dict) or not isinstance(alerts, dict):
        raise TypeError("alert, labels or alerts of the wrong type")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TypeError("labels must map text to text")
    return (alert, tuple(sorted(labels.items()))), alerts


def _restored(row: Any) -> _Alert:
    """One saved alert (a row of :data:`SAVED_FIELDS`), its types checked."""
    if not isinstance(row, list) or len(row) != len(SAVED_FIELDS):
        raise TypeError(f"not a list of {len(SAVED_FIELDS)} fields")
    values = dict(zip(SAVED_FIELDS, row, strict=True))
    if values["state"] not in STATES:
        raise ValueError(f"unknown state {values['state']!r}")
    if not isinstance(values["resolution_sent"], bool):
        raise TypeError("resolution_sent is not true or false")
    for key in SAVED_FIELDS[1:-1]:
        value = values[key]
        if value is None and key in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{key} is not a number")
        values[key] = float(value)
    if values["state"] != PENDING and values["fired_at"] is None:
        raise ValueError("a firing or resolved alert without fired_at")
    if values["state"] == RESOLVED and values["resolved_at"] is None:
        raise ValueError("a resolved alert without resolved_at")
    return _Alert(**values)
