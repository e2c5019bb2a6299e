"""Alert rules: the model, durations as Prometheus writes them, the two-word annotation templates,
the YAML loader that names the line and field of every mistake, and the default rules.

A rules file is YAML in the spirit of Prometheus' alerting rules::

    rules:
      - alert: CpuHigh
        when: cpu > 90          # silent | cpu|ram >|< NUMBER | cpu_anomaly | ram_anomaly
        for: 5m                 # optional, 0s by default
        keep_firing_for: 2m     # optional, 0s by default
        servers: "^web-"        # optional: re.search over the server's name
        labels: {severity: warning}
        annotations: {summary: "{{ server }} cpu at {{ value }} %"}

Every mistake is reported as ``FILE:LINE: FIELD: what is wrong``, for example
``rules.yml:7: rules[1].for: "5 minutes" is not a duration (write 30s, 5m, 1h)``, and every
mistake of a file is reported, not just the first. Loading never raises anything but
:class:`RulesError`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from servertrack.common.buckets import HOUR, HOUR_WINDOW
from servertrack.common.fleet_query import STALE_AFTER

SILENT = "silent"
METRICS = ("cpu", "ram")
ANOMALIES = ("cpu_anomaly", "ram_anomaly")
SUBJECTS = (SILENT, *METRICS, *ANOMALIES)
FORGOTTEN_AFTER = float((HOUR_WINDOW + 1) * HOUR)
"""A server silent this long is forgotten (its rollups are empty); its alerts resolve."""
MAX_FILE_BYTES = 1 << 20
"""A rules file larger than this is refused unread: a real one is a few KB."""
MAX_REGEX_CHARS = 1000

RULE_KEYS = ("alert", "when", "for", "keep_firing_for", "servers", "labels", "annotations")
RESERVED_LABELS = ("alertname", "server")
"""Labels every alert carries, set by ServerTrack: a rule cannot set them itself."""
NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""Alert, label and annotation names, as Prometheus allows them."""
WHEN_RE = re.compile(
    r"\s*(?:(?P<subject>silent|cpu_anomaly|ram_anomaly)"
    r"|(?P<metric>cpu|ram)\s*(?P<op>[<>])\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)))\s*"
)
WHEN_HELP = "write silent, cpu > 90, ram < 10, cpu_anomaly or ram_anomaly"
DURATION_RE = re.compile(
    r"(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?"
)
UNIT_SECONDS = {
    "y": 365 * 86400,
    "w": 7 * 86400,
    "d": 86400,
    "h": 3600,
    "m": 60,
    "s": 1,
    "ms": 0.001,
}
MAX_DURATION = 10 * 365 * 86400.0
PLACEHOLDER_RE = re.compile(r"\{\{\s*(?P<name>[^{}]*?)\s*\}\}")
PLACEHOLDERS = ("server", "value")
PROMETHEUS_SPELLINGS = {"$value": "value", "$labels.server": "server", ".Value": "value"}


# -- durations -----------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds in a duration written as Prometheus writes them: ``30s``, ``5m``, ``1h30m``,
    ``2d``, ``500ms``, ``0``; units in decreasing order, each at most once, whole numbers only.

    Raises ``ValueError`` with a message that shows the text and the way to write it.
    """
    match = DURATION_RE.fullmatch(text) if text not in ("", "0") else None
    if text == "0":
        return 0.0
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"{quoted(text)} is not a duration (write 30s, 5m, 1h)")
    seconds = sum(
        int(count) * UNIT_SECONDS[unit] for unit, count in match.groupdict().items() if count
    )
    if seconds > MAX_DURATION:
        raise ValueError(f"{quoted(text)} is longer than 10 years")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus spelling of ``seconds``: ``300`` → ``5m``, ``5400`` → ``1h30m``."""
    if seconds == 0:
        return "0s"
    millis: float = round(seconds * 1000)  # divmod by UNIT_SECONDS (int or float) below
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = UNIT_SECONDS[unit] * 1000
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{int(count)}{unit}")
    if millis:
        parts.append(f"{int(millis)}ms")
    return "".join(parts)


def quoted(text: str) -> str:
    """``text`` in double quotes for a message, shortened when long."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- templates -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Template:
    """An annotation: text with ``{{ server }}`` and ``{{ value }}`` substituted, nothing else
    (no expressions, no loops: a rules file cannot run anything)."""

    text: str
    parts: tuple[str, ...] = field(compare=False, repr=False)
    """Literal text at even positions, a placeholder name at odd ones."""

    @classmethod
    def parse(cls, text: str) -> Template:
        """Raises ``ValueError`` for an unknown placeholder or a stray ``{{`` / ``}}``."""
        parts: list[str] = []
        position = 0
        for match in PLACEHOLDER_RE.finditer(text):
            name = match["name"]
            if name not in PLACEHOLDERS:
                hint = PROMETHEUS_SPELLINGS.get(name.replace(" ", ""))
                advice = f"write {{{{ {hint} }}}}" if hint else "use {{ server }} or {{ value }}"
                raise ValueError(f"unknown placeholder {quoted(match[0])} ({advice})")
            parts += [text[position : match.start()], name]
            position = match.end()
        parts.append(text[position:])
        for literal in parts[::2]:
            if "{{" in literal or "}}" in literal:
                raise ValueError(
                    f"{quoted(text)} has a {{{{ or }}}} that is not {{{{ server }}}} or "
                    "{{ value }}"
                )
        return cls(text, tuple(parts))

    def render(self, server: str, value: float) -> str:
        if len(self.parts) == 1:
            return self.text
        fields = {"server": server, "value": format_value(value)}
        return "".join(
            part if index % 2 == 0 else fields[part] for index, part in enumerate(self.parts)
        )


def format_value(value: float) -> str:
    """A value as an annotation shows it: at most two decimals, no trailing zeros
    (``95.5``, ``120``, ``0.97``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# -- the model -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class When:
    """A rule's condition: ``silent``; ``cpu`` or ``ram`` with ``>`` or ``<`` and a number (on
    the mean of the last complete minute); ``cpu_anomaly`` or ``ram_anomaly`` (the anomaly score
    at or above the threshold the evaluator is given)."""

    subject: str
    op: str | None = None
    number: float | None = None

    @property
    def text(self) -> str:
        if self.op is None:
            return self.subject
        return f"{self.subject} {self.op} {format_value(self.number or 0.0)}"

    @classmethod
    def parse(cls, text: str) -> When:
        match = WHEN_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"{quoted(text)} is not a condition ({WHEN_HELP})")
        if match["subject"]:
            return cls(match["subject"])
        number = float(match["number"])
        if not 0 <= number <= 100:
            raise ValueError(f"{quoted(text)}: {match['metric']} is a percent, from 0 to 100")
        return cls(match["metric"], match["op"], number)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule. Its alerts carry ``alertname`` (the rule's ``alert``), ``server`` and the
    rule's ``labels``; two rules of a file never share the same alert name and labels."""

    alert: str
    when: When
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    servers: str | None = None
    """A regular expression searched in the server's name (``re.search``); None: every server."""
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, Template], ...] = ()
    line: int = field(default=0, compare=False)
    """Where the rule starts in its file (0 for a rule made in code)."""

    @property
    def identity(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What tells this rule's alerts from another rule's: its alert name and labels."""
        return self.alert, self.labels

    def alert_labels(self, server: str) -> dict[str, str]:
        """The labels of this rule's alert for ``server``, sorted by name."""
        return dict(sorted((("alertname", self.alert), ("server", server), *self.labels)))

    def render_annotations(self, server: str, value: float) -> dict[str, str]:
        return {name: template.render(server, value) for name, template in self.annotations}

    def describe(self) -> str:
        """One line for people: ``CpuHigh: cpu > 90 for 5m (keep firing 2m) on ^web-``."""
        text = f"{self.alert}: {self.when.text} for {format_duration(self.for_seconds)}"
        if self.keep_firing_for_seconds:
            text += f" (keep firing {format_duration(self.keep_firing_for_seconds)})"
        if self.servers is not None:
            text += f" on servers matching {quoted(self.servers)}"
        return text


def _annotations(**texts: str) -> tuple[tuple[str, Template], ...]:
    return tuple((name, Template.parse(text)) for name, text in sorted(texts.items()))


DEFAULT_RULES: tuple[Rule, ...] = (
    # Silent for as long as the dashboard takes to call a server stale (2 minutes): an agent
    # samples every second and collectd every 10 s, so two minutes without a sample is no
    # hiccup. Critical: a silent server may be down, and nothing else here can see it.
    Rule(
        "ServerSilent",
        When(SILENT),
        for_seconds=STALE_AFTER,
        labels=(("severity", "critical"),),
        annotations=_annotations(
            summary="{{ server }} has sent no sample for {{ value }} s",
            description="No cpu or ram sample from {{ server }} for {{ value }} seconds: the "
            "node, its agent or the network between them may be down.",
        ),
    ),
    # Above 90 % on five complete minute means in a row: a busy minute is normal, five in a
    # row is saturation someone should look at (the node exporter mixins use 90 % too).
    Rule(
        "CpuHigh",
        When("cpu", ">", 90.0),
        for_seconds=300.0,
        labels=(("severity", "warning"),),
        annotations=_annotations(
            summary="{{ server }} cpu at {{ value }} %",
            description="The mean cpu load of {{ server }} has stayed above 90 % for 5 minutes "
            "(last minute: {{ value }} %).",
        ),
    ),
    Rule(
        "RamHigh",
        When("ram", ">", 90.0),
        for_seconds=300.0,
        labels=(("severity", "warning"),),
        annotations=_annotations(
            summary="{{ server }} ram at {{ value }} %",
            description="The mean ram use of {{ server }} has stayed above 90 % for 5 minutes "
            "(last minute: {{ value }} %).",
        ),
    ),
    # At once, and kept firing 5 minutes: an anomaly score peaks when the behaviour changes and
    # falls as the new level becomes normal, so waiting for it to last would miss most of them,
    # and a score that flickers around the threshold makes one alert, not one per minute.
    Rule(
        "CpuAnomalous",
        When("cpu_anomaly"),
        for_seconds=0.0,
        keep_firing_for_seconds=300.0,
        labels=(("severity", "info"),),
        annotations=_annotations(
            summary="{{ server }} cpu behaves unusually (anomaly score {{ value }})",
        ),
    ),
    Rule(
        "RamAnomalous",
        When("ram_anomaly"),
        for_seconds=0.0,
        keep_firing_for_seconds=300.0,
        labels=(("severity", "info"),),
        annotations=_annotations(
            summary="{{ server }} ram behaves unusually (anomaly score {{ value }})",
        ),
    ),
)


# -- loading -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a rules file, where it is and what field it is in."""

    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class RulesError(ValueError):
    """A rules file that cannot be used; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """The rules of the file at ``path``; :class:`RulesError` for any mistake, naming the line
    and the field, or for a file that cannot be read."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise RulesError([Problem(source, None, "", f"cannot read: {err.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RulesError([Problem(source, None, "", "larger than 1 MiB: not a rules file")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise RulesError([Problem(source, line, "", "not UTF-8 text")]) from None
    return parse_rules(text, source)


def parse_rules(text: str, source: str = "<rules>") -> tuple[Rule, ...]:
    """The rules in YAML ``text``; :class:`RulesError` naming the line and field of every
    mistake (``source`` is the name the messages give the file)."""
    return _Reader(source).read(text)


def rules_file_argument(text: str) -> tuple[Rule, ...]:
    """argparse ``type=`` for ``--rules FILE``: a bad file stops the command with every mistake
    (exit 2, no traceback)."""
    try:
        return load_rules(text)
    except RulesError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def rules_path_argument(text: str) -> str:
    """argparse ``type=`` for a ``--rules FILE`` that travels on to a child's command line: the
    file made absolute once its rules are checked (a bad file stops the command, exit 2, with
    every mistake); ``''`` for none."""
    if text == "":
        return text
    rules_file_argument(text)
    return os.path.abspath(text)


Node = yaml.Node
T = TypeVar("T")
NULL_TAG = "tag:yaml.org,2002:null"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "nothing" if node.tag == NULL_TAG else "a value"


class _Reader:
    """Walks the YAML node tree (which knows its lines) rather than the plain objects
    ``yaml.safe_load`` gives, so every message names a line; also refuses duplicate keys, which
    YAML loaders silently resolve to the last."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, node: Node | None, where: str, message: str) -> None:
        line = _line(node) if node is not None else 1
        self.problems.append(Problem(self.source, line, where, message))

    def read(self, text: str) -> tuple[Rule, ...]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = err.problem or "unreadable"
            if err.context:
                problem += f" ({err.context})"
            raise RulesError(
                [Problem(self.source, line, "", f"not valid YAML: {problem}")]
            ) from None
        except yaml.YAMLError as err:
            raise RulesError([Problem(self.source, None, "", f"not valid YAML: {err}")]) from None
        rules = self._document(root)
        if self.problems:
            raise RulesError(sorted(self.problems, key=lambda problem: problem.line or 0))
        return rules

    def _document(self, root: Node | None) -> tuple[Rule, ...]:
        if root is None:
            self.problem(None, "rules", "missing (the file is empty; write rules: and a list)")
            return ()
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, "", f"expected a mapping with a rules: list, found {_kind(root)}")
            return ()
        found = self._mapping(root, "", ("rules",))
        listing = found.get("rules")
        if listing is None:
            self.problem(root, "rules", "missing (write rules: and a list)")
            return ()
        if not isinstance(listing, yaml.SequenceNode):
            self.problem(listing, "rules", f"expected a list of rules, found {_kind(listing)}")
            return ()
        rules: list[Rule] = []
        first_of: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, int]] = {}
        for index, item in enumerate(listing.value):
            rule = self._rule(item, f"rules[{index}]")
            if rule is None:
                continue
            earlier = first_of.setdefault(rule.identity, (index, rule.line))
            if earlier != (index, rule.line):
                self.problem(
                    item,
                    f"rules[{index}]",
                    f"the same alert and labels as rules[{earlier[0]}] (line {earlier[1]}): "
                    "give it another name or a label that tells them apart",
                )
                continue
            rules.append(rule)
        return tuple(rules)

    def _mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None) -> dict[str, Node]:
        """The keys of a mapping node; unknown keys (when ``allowed`` is given), duplicates and
        keys that are not plain text are reported."""
        found: dict[str, Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            here = f"{where}.{name}" if where and name is not None else (name or where)
            if name is None or key.tag == NULL_TAG:
                self.problem(key, where, f"a key must be a name, found {_kind(key)}")
            elif name in found:
                self.problem(key, here, f"given twice (first on line {_line(found[name])})")
            elif allowed is not None and name not in allowed:
                self.problem(key, here, f"unknown key (expected {', '.join(allowed)})")
            else:
                found[name] = value
        return found

    def _text(self, node: Node, where: str, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == NULL_TAG:
            self.problem(node, where, f"expected {what}, found {_kind(node)}")
            return None
        return str(node.value)

    def _checked(self, node: Node, where: str, what: str, parse: Callable[[str], T]) -> T | None:
        """``parse(text)`` of a scalar, with its ``ValueError`` reported at the node."""
        text = self._text(node, where, what)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as err:
            self.problem(node, where, str(err))
            return None

    def _rule(self, node: Node, where: str) -> Rule | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"expected a rule (a mapping), found {_kind(node)}")
            return None
        before = len(self.problems)
        found = self._mapping(node, where, RULE_KEYS)
        for key in ("alert", "when"):
            if key not in found:
                self.problem(node, f"{where}.{key}", "missing")
        alert = when = None
        if "alert" in found:
            alert = self._text(found["alert"], f"{where}.alert", "an alert name")
            if alert is not None and not NAME_RE.fullmatch(alert):
                self.problem(
                    found["alert"],
                    f"{where}.alert",
                    f"{quoted(alert)} is not an alert name (letters, digits and _, not "
                    "starting with a digit)",
                )
        if "when" in found:
            when = self._checked(found["when"], f"{where}.when", "a condition", When.parse)
        durations: dict[str, float | None] = {}
        for key in ("for", "keep_firing_for"):
            durations[key] = 0.0
            if key in found:
                durations[key] = self._checked(
                    found[key], f"{where}.{key}", "a duration", parse_duration
                )
        if when is not None and when.subject == SILENT:
            self._silence(found.get("for"), node, f"{where}.for", durations["for"])
        servers = None
        if "servers" in found:
            servers = self._regex(found["servers"], f"{where}.servers")
        labels = self._labels(found.get("labels"), f"{where}.labels")
        annotations = self._annotations(found.get("annotations"), f"{where}.annotations")
        for_seconds, keep_firing_for = durations["for"], durations["keep_firing_for"]
        if (
            len(self.problems) > before
            or when is None
            or alert is None
            or for_seconds is None
            or keep_firing_for is None
        ):
            return None
        return Rule(
            alert=alert,
            when=when,
            for_seconds=for_seconds,
            keep_firing_for_seconds=keep_firing_for,
            servers=servers,
            labels=labels,
            annotations=annotations,
            line=_line(node),
        )

    def _silence(self, node: Node | None, rule: Node, where: str, seconds: float | None) -> None:
        """``silent`` waits for its ``for``: it must be given, above 0 and below the time a
        silent server is forgotten."""
        if node is None:
            self.problem(rule, where, "missing: silent needs the silence it waits for (2m)")
        elif seconds is None:
            return  # not a duration: already reported
        elif seconds <= 0:
            self.problem(node, where, "silent needs a silence of at least 1s")
        elif seconds >= FORGOTTEN_AFTER:
            self.problem(
                node,
                where,
                f"{format_duration(seconds)} can never pass: a server silent for "
                f"{format_duration(FORGOTTEN_AFTER)} is forgotten",
            )

    def _regex(self, node: Node, where: str) -> str | None:
        pattern = self._text(node, where, "a regular expression")
        if pattern is None:
            return None
        if len(pattern) > MAX_REGEX_CHARS:
            self.problem(node, where, f"longer than {MAX_REGEX_CHARS} characters")
            return None
        try:
            re.compile(pattern)
        except re.error as err:
            self.problem(node, where, f"{quoted(pattern)} is not a regular expression: {err}")
            return None
        return pattern

    def _pairs(self, node: Node | None, where: str) -> Iterator[tuple[str, Node, str]]:
        """Each ``name: text`` of a labels or annotations mapping, its name checked."""
        if node is None:
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"expected a mapping of names to texts, found {_kind(node)}")
            return
        for name, value in self._mapping(node, where, None).items():
            here = f"{where}.{name}"
            if not NAME_RE.fullmatch(name) or name.startswith("__"):
                self.problem(
                    value,
                    here,
                    f"{quoted(name)} is not a name (letters, digits and _, not starting with a "
                    "digit or __)",
                )
                continue
            text = self._text(value, here, "a text")
            if text is not None:
                yield name, value, text

    def _labels(self, node: Node | None, where: str) -> tuple[tuple[str, str], ...]:
        labels = []
        for name, value, text in self._pairs(node, where):
            here = f"{where}.{name}"
            if name in RESERVED_LABELS:
                self.problem(value, here, "set by ServerTrack on every alert, not by a rule")
            elif text == "":
                self.problem(value, here, "empty (give it a value or leave the label out)")
            elif "{{" in text or "}}" in text:
                self.problem(
                    value,
                    here,
                    "labels are not templated: they name the alert, so they must not change "
                    "with its value (use an annotation)",
                )
            else:
                labels.append((name, text))
        return tuple(sorted(labels))

    def _annotations(self, node: Node | None, where: str) -> tuple[tuple[str, Template], ...]:
        annotations = []
        for name, value, text in self._pairs(node, where):
            try:
                annotations.append((name, Template.parse(text)))
            except ValueError as err:
                self.problem(value, f"{where}.{name}", str(err))
        return tuple(sorted(annotations, key=lambda pair: pair[0]))
