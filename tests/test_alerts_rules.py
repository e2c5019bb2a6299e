"""Alert rule files (``alerts/rules.py``): durations, templates, the default rules, and the loader
that names the line and the field of every mistake; ``servertrack rules check`` as a real child
process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from servertrack.alerts.rules import (
    DEFAULT_RULES,
    Problem,
    Rule,
    RulesError,
    Template,
    When,
    format_duration,
    load_rules,
    parse_duration,
    parse_rules,
    rules_file_argument,
)
from servertrack.testing.hosts import servertrack_argv

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLE = """\
rules:
  - alert: ServerSilent
    when: silent
    for: 2m
  - alert: CpuHigh
    when: cpu > 90
    for: 5m
    keep_firing_for: 2m
    servers: "^web-"
    labels: {severity: warning}
    annotations: {summary: "{{ server }} cpu at {{ value }} %"}
  - alert: CpuAnomalous
    when: cpu_anomaly
    for: 0s
"""


# -- durations ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172_800.0),
        ("1w", 604_800.0),
        ("1y", 31_536_000.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1s500ms", 1.5),
    ],
)
def test_durations_are_read_as_prometheus_writes_them(text: str, seconds: float) -> None:
    """Units y, w, d, h, m, s and ms, largest first, and a bare 0."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5", "1.5m", "5 minutes", "5M", "30s1m", "1h1h", "-5m", "m", " 5m", "5m "]
)
def test_anything_else_is_not_a_duration(text: str) -> None:
    """A bare number, a fraction, spaces, units out of order or repeated: refused, with the way
    to write one."""
    with pytest.raises(ValueError, match=r"is not a duration \(write 30s, 5m, 1h\)"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 1.0, 59.0, 90.0, 300.0, 5400.0, 86_400.0, 93_784.5])
def test_durations_are_written_back_the_way_they_are_read(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# -- templates ------------------------------------------------------------------------------------
def test_templates_replace_the_server_and_the_value() -> None:
    """``{{ server }}`` and ``{{ value }}``, with or without spaces, as often as written; values
    with at most two decimals and no trailing zeros."""
    template = Template.parse("{{server}} at {{ value }} % ({{ value}}), {{ server }}")
    assert template.render("web-1", 95.534) == "web-1 at 95.53 % (95.53), web-1"
    assert template.render("db", 120.0) == "db at 120 % (120), db"
    assert template.render("db", 0.5) == "db at 0.5 % (0.5), db"
    assert Template.parse("no placeholders").render("x", 1.0) == "no placeholders"


def test_templates_run_nothing() -> None:
    """The server's name is inserted as it is: braces in it are not read again."""
    assert Template.parse("{{ server }}!").render("{{ value }}", 1.0) == "{{ value }}!"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ host }}", 'unknown placeholder "{{ host }}" (use {{ server }} or {{ value }})'),
        ("{{ $value }}", "(write {{ value }})"),
        ("{{ $labels.server }}", "(write {{ server }})"),
        ("{{ server", "has a {{ or }} that is not"),
        ("value }}", "has a {{ or }} that is not"),
        ("{{ .Value | humanize }}", "unknown placeholder"),
    ],
)
def test_template_mistakes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Template.parse(text)
    assert message in str(refused.value)


# -- loading --------------------------------------------------------------------------------------
def test_the_example_of_the_statement_loads() -> None:
    rules = parse_rules(EXAMPLE, "rules.yml")
    assert [rule.alert for rule in rules] == ["ServerSilent", "CpuHigh", "CpuAnomalous"]
    silent, cpu, anomalous = rules
    assert silent == Rule("ServerSilent", When("silent"), for_seconds=120.0)
    assert cpu.when == When("cpu", ">", 90.0)
    assert (cpu.for_seconds, cpu.keep_firing_for_seconds) == (300.0, 120.0)
    assert cpu.servers == "^web-"
    assert cpu.labels == (("severity", "warning"),)
    assert cpu.render_annotations("web-1", 93.25) == {"summary": "web-1 cpu at 93.25 %"}
    assert cpu.alert_labels("web-1") == {
        "alertname": "CpuHigh",
        "server": "web-1",
        "severity": "warning",
    }
    assert (cpu.line, anomalous.line) == (5, 12)
    assert anomalous.when == When("cpu_anomaly") and anomalous.for_seconds == 0.0


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("silent", When("silent")),
        ("cpu > 90", When("cpu", ">", 90.0)),
        ("ram < 10", When("ram", "<", 10.0)),
        ("cpu>90", When("cpu", ">", 90.0)),
        ("  ram >  0.5 ", When("ram", ">", 0.5)),
        ("cpu > 100", When("cpu", ">", 100.0)),
        ("ram < .5", When("ram", "<", 0.5)),
        ("cpu_anomaly", When("cpu_anomaly")),
        ("ram_anomaly", When("ram_anomaly")),
    ],
)
def test_every_condition_of_the_grammar_is_taken(text: str, when: When) -> None:
    rules = parse_rules(f"rules:\n  - alert: A\n    when: {text!r}\n    for: 1m\n")
    assert rules[0].when == when


def mistakes(text: str) -> list[str]:
    """Every message the loader gives for ``text`` (it must refuse it)."""
    with pytest.raises(RulesError) as refused:
        parse_rules(text, "rules.yml")
    return [str(problem) for problem in refused.value.problems]


def rule_text(*lines: str) -> str:
    """A file whose second rule (``rules[1]``, from line 5) has ``lines`` after its alert."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"rules:\n  - alert: Fine\n    when: silent\n    for: 2m\n  - alert: Second\n{body}"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ("when: cpu > 90", "for: 5 minutes"),
            'rules.yml:7: rules[1].for: "5 minutes" is not a duration (write 30s, 5m, 1h)',
        ),
        (
            ("when: cpu > 90", "keep_firing_for: soon"),
            'rules.yml:7: rules[1].keep_firing_for: "soon" is not a duration',
        ),
        (
            ("when: cpu >= 90",),
            'rules.yml:6: rules[1].when: "cpu >= 90" is not a condition (write silent, cpu > 90, '
            "ram < 10, cpu_anomaly or ram_anomaly)",
        ),
        (("when: disk > 90",), "rules.yml:6: rules[1].when: "),
        (("when: cpu > 120",), 'rules.yml:6: rules[1].when: "cpu > 120": cpu is a percent'),
        (("for: 1m",), "rules.yml:5: rules[1].when: missing"),
        (("when: silent",), "rules.yml:5: rules[1].for: missing: silent needs the silence"),
        (("when: silent", "for: 0s"), "rules.yml:7: rules[1].for: silent needs a silence of"),
        (("when: silent", "for: 26h"), "rules.yml:7: rules[1].for: 1d2h can never pass"),
        (
            ("when: cpu > 1", "expr: up > 0"),
            "rules.yml:7: rules[1].expr: unknown key (expected alert, when, for, "
            "keep_firing_for, servers, labels, annotations)",
        ),
        (("when: cpu > 1", "when: ram > 1"), "rules.yml:7: rules[1].when: given twice (first on "),
        (
            ("when: cpu > 1", 'servers: "web-("'),
            'rules.yml:7: rules[1].servers: "web-(" is not a regular expression',
        ),
        (("when: cpu > 1", "servers: [a, b]"), "rules.yml:7: rules[1].servers: expected a regular"),
        (("when: cpu > 1", "labels: [a]"), "rules.yml:7: rules[1].labels: expected a mapping"),
        (
            ("when: cpu > 1", "labels: {server: x}"),
            "rules.yml:7: rules[1].labels.server: set by ServerTrack on every alert",
        ),
        (
            ("when: cpu > 1", "labels: {alertname: x}"),
            "rules.yml:7: rules[1].labels.alertname: set by ServerTrack",
        ),
        (("when: cpu > 1", "labels: {a-b: x}"), 'rules.yml:7: rules[1].labels.a-b: "a-b" is not'),
        (("when: cpu > 1", "labels: {__x: y}"), "rules.yml:7: rules[1].labels.__x: "),
        (("when: cpu > 1", "labels: {team: }"), "rules.yml:7: rules[1].labels.team: expected a "),
        (("when: cpu > 1", 'labels: {team: ""}'), "rules.yml:7: rules[1].labels.team: empty"),
        (
            ("when: cpu > 1", 'labels: {v: "{{ value }}"}'),
            "rules.yml:7: rules[1].labels.v: labels are not templated",
        ),
        (
            ("when: cpu > 1", "labels:", "  team: a", "  team: b"),
            "rules.yml:9: rules[1].labels.team: given twice (first on line 8)",
        ),
        (
            ("when: cpu > 1", 'annotations: {summary: "{{ host }}"}'),
            'rules.yml:7: rules[1].annotations.summary: unknown placeholder "{{ host }}"',
        ),
        (
            ("when: cpu > 1", "annotations: {summary: {a: b}}"),
            "rules.yml:7: rules[1].annotations.summary: expected a text, found a mapping",
        ),
    ],
)
def test_every_mistake_names_its_line_and_field(lines: tuple[str, ...], expected: str) -> None:
    """One file per kind of mistake, each in the second rule: the message starts with the file,
    the line and the field."""
    found = mistakes(rule_text(*lines))
    assert any(message.startswith(expected) for message in found), found


def test_the_alert_name_is_checked() -> None:
    assert mistakes("rules:\n  - when: silent\n    for: 1m\n") == [
        "rules.yml:2: rules[0].alert: missing"
    ]
    found = mistakes("rules:\n  - alert: cpu high\n    when: silent\n    for: 1m\n")
    assert found[0].startswith('rules.yml:2: rules[0].alert: "cpu high" is not an alert name')
    found = mistakes("rules:\n  - alert: [A]\n    when: silent\n    for: 1m\n")
    assert found == ["rules.yml:2: rules[0].alert: expected an alert name, found a list"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "rules.yml:1: rules: missing (the file is empty"),
        ("# nothing but a comment\n", "rules.yml:1: rules: missing (the file is empty"),
        ("- alert: A\n", "rules.yml:1: expected a mapping with a rules: list, found a list"),
        ("groups: []\n", "rules.yml:1: groups: unknown key (expected rules)"),
        ("rules: 3\n", "rules.yml:1: rules: expected a list of rules, found a value"),
        ("rules:\n  - 3\n", "rules.yml:2: rules[0]: expected a rule (a mapping), found a value"),
        ("rules:\n  - alert: [A\n", "rules.yml:3: not valid YAML: "),
        (
            "rules: []\n---\nrules: []\n",
            "rules.yml:2: not valid YAML: but found another document (expected a single",
        ),
        ("rules:\n\t- alert: A\n", "rules.yml:2: not valid YAML: "),
        ("rules:\n  - {[a]: b}\n", "rules.yml:2: rules[0]: a key must be a name, found a list"),
    ],
)
def test_mistakes_in_the_file_itself_name_their_line(text: str, expected: str) -> None:
    found = mistakes(text)
    assert found[0].startswith(expected), found


def test_two_rules_with_the_same_alert_and_labels_are_refused() -> None:
    """Their alerts could not be told apart (Alertmanager would merge them)."""
    text = (
        "rules:\n"
        "  - {alert: CpuHigh, when: cpu > 90, labels: {severity: warning}}\n"
        "  - {alert: CpuHigh, when: cpu > 95, labels: {severity: critical}}\n"
        "  - {alert: CpuHigh, when: cpu > 99, labels: {severity: warning}}\n"
    )
    assert mistakes(text) == [
        "rules.yml:4: rules[2]: the same alert and labels as rules[0] (line 2): give it another "
        "name or a label that tells them apart"
    ]


def test_every_mistake_of_a_file_is_reported_in_line_order() -> None:
    text = (
        "rules:\n"
        "  - alert: A\n"
        "    when: cpu >> 3\n"
        "    for: 5 min\n"
        "  - alert: B\n"
        "    when: silent\n"
        "    for: 2m\n"
        "    colour: red\n"
    )
    assert [message.split(": ")[0:2] for message in mistakes(text)] == [
        ["rules.yml:3", "rules[0].when"],
        ["rules.yml:4", "rules[0].for"],
        ["rules.yml:8", "rules[1].colour"],
    ]


def test_a_file_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as missing:
        load_rules(tmp_path / "absent.yml")
    assert (
        str(missing.value) == f"{tmp_path / 'absent.yml'}: cannot read: No such file or directory"
    )
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"rules:\n  - alert: \xff\n")
    with pytest.raises(RulesError, match=r"binary\.yml:2: not UTF-8 text"):
        load_rules(binary)
    huge = tmp_path / "huge.yml"
    huge.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(RulesError, match="larger than 1 MiB"):
        load_rules(huge)


def test_the_rules_flag_refuses_a_bad_file_as_argparse_does(tmp_path: Path) -> None:
    import argparse

    bad = tmp_path / "rules.yml"
    bad.write_text(rule_text("when: cpu > 90", "for: 5 minutes"))
    with pytest.raises(argparse.ArgumentTypeError, match=r"rules\.yml:7: rules\[1\]\.for"):
        rules_file_argument(str(bad))
    good = tmp_path / "good.yml"
    good.write_text(EXAMPLE)
    assert len(rules_file_argument(str(good))) == 3


def test_problems_read_like_compiler_messages() -> None:
    assert str(Problem("r.yml", 7, "rules[1].for", "bad")) == "r.yml:7: rules[1].for: bad"
    assert str(Problem("r.yml", None, "", "cannot read")) == "r.yml: cannot read"


# -- the default rules ----------------------------------------------------------------------------
def test_the_shipped_example_file_is_exactly_the_default_rules() -> None:
    """``deploy/servertrack-rules.yml`` says what runs without ``--rules``: they never drift."""
    assert load_rules(DEPLOY / "servertrack-rules.yml") == DEFAULT_RULES


def test_the_default_rules_are_the_documented_ones() -> None:
    described = [rule.describe() for rule in DEFAULT_RULES]
    assert described == [
        "ServerSilent: silent for 2m",
        "CpuHigh: cpu > 90 for 5m",
        "RamHigh: ram > 90 for 5m",
        "CpuAnomalous: cpu_anomaly for 0s (keep firing 5m)",
        "RamAnomalous: ram_anomaly for 0s (keep firing 5m)",
    ]
    assert all(dict(rule.labels).get("severity") for rule in DEFAULT_RULES)
    assert all("summary" in dict(rule.annotations) for rule in DEFAULT_RULES)


# -- servertrack rules check, as a child process --------------------------------------------------
def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        servertrack_argv("rules", "check", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
def test_rules_check_names_the_line_of_a_malformed_file_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yml"
    bad.write_text(rule_text("when: cpu > 90", "for: 5 minutes"))
    result = check(bad)
    assert result.returncode == 2
    assert f'{bad}:7: rules[1].for: "5 minutes" is not a duration' in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    broken = tmp_path / "broken.yml"
    broken.write_text("rules:\n  - alert: [A\n")
    result = check(broken)
    assert result.returncode == 2 and f"{broken}:3: not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_rules_check_says_ok_with_the_rule_count(tmp_path: Path) -> None:
    good = tmp_path / "rules.yml"
    good.write_text(EXAMPLE)
    result = check(good)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{good}: OK, 3 rules"
    assert "CpuHigh: cpu > 90 for 5m (keep firing 2m) on servers matching" in result.stdout
