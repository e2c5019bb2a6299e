"""Series selectors and label matchers with Prometheus' semantics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.matchers import MatchType, matcher, select
from servertrack.promapi.selectors import parse_selector

EQ, NEQ, RE, NRE = MatchType.EQ, MatchType.NEQ, MatchType.RE, MatchType.NRE


def parsed(text: str) -> list[tuple[str, MatchType, str]]:
    return [(m.name, m.type, m.value) for m in parse_selector(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("up", [("__name__", EQ, "up")]),
        ("  servertrack:cpu_1  ", [("__name__", EQ, "servertrack:cpu_1")]),
        ('up{server="a"}', [("__name__", EQ, "up"), ("server", EQ, "a")]),
        ('{server!="a",server=~"b.*",}', [("server", NEQ, "a"), ("server", RE, "b.*")]),
        (
            "{ server =~ 'web-.*' , __name__ !~ `x\\d` }",
            [("server", RE, "web-.*"), ("__name__", NRE, "x\\d")],
        ),
        ('{server="q\\"uote\\\\ \\n \\x41\\u00e9\\101"}', [("server", EQ, 'q"uote\\ \n Aé' + "A")]),
        ('{__name__="a", __name__=~"a|b"}', [("__name__", EQ, "a"), ("__name__", RE, "a|b")]),
        (
            'up{job="", server=~".+"}',
            [("__name__", EQ, "up"), ("job", EQ, ""), ("server", RE, ".+")],
        ),
    ],
)
def test_selectors_parse_as_promql(text: str, expected: list[tuple[str, MatchType, str]]) -> None:
    """Metric names, matchers in braces, the three quotes, Go escapes, blanks, a trailing
    comma."""
    assert parsed(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_selector"),
        ("{}", "bad_selector"),
        ('{server=~".*"}', "bad_selector"),
        ('{server!="x"}', "bad_selector"),
        ("up{", "bad_selector"),
        ('up{server="a"', "bad_selector"),
        ('up{server="a} ', "bad_selector"),
        ('up{server=="a"}', "bad_selector"),
        ('up{server~"a"}', "bad_selector"),
        ('up{0server="a"}', "bad_selector"),
        ('up{server="a" job="b"}', "bad_selector"),
        ('up{server="\\q"}', "bad_selector"),
        ('up{server="\\xZZ"}', "bad_selector"),
        ('up{server="\\ud800"}', "bad_selector"),
        ('up{__name__="up"}', "bad_selector"),
        ("up extra", "bad_selector"),
        ("1up", "bad_selector"),
        ("x" * 8193, "bad_selector"),
        ('{server=~"(?=lookahead)"}', "bad_regex"),
        ('{server=~"a("}', "bad_regex"),
        ("{server=~`\\1`}", "bad_regex"),
        ('{server=~"\\1"}', "bad_selector"),
    ],
)
def test_bad_selectors_are_refused_with_a_reason(text: str, reason: str) -> None:
    """What Prometheus refuses is refused: broken syntax, a selector whose every matcher
    matches the empty string, the metric name twice; a regex RE2 cannot compile is bad_regex."""
    with pytest.raises(BadPromRequest) as refused:
        parse_selector(text)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("type_", "value", "label", "expected"),
    [
        (EQ, "web-1", "web-1", True),
        (EQ, "web-1", "web-10", False),
        (NEQ, "web-1", "web-1", False),
        (RE, "web", "web-1", False),
        (RE, "web-.*", "web-1", True),
        (RE, "web-1|db-1", "db-1", True),
        (RE, "b", "abc", False),
        (RE, "a.c", "a\nc", True),
        (NRE, "web-.*", "db-1", True),
        (NRE, "web-.*", "web-2", False),
        (RE, "", "", True),
        (RE, ".+", "", False),
    ],
)
def test_regexes_are_fully_anchored(
    type_: MatchType, value: str, label: str, expected: bool
) -> None:
    """``=~`` and ``!~`` match the whole value (``^(?s:...)$``), as in Prometheus."""
    assert matcher("server", type_, value).matches(label) is expected


def test_a_pathological_regex_runs_in_linear_time() -> None:
    """RE2 does not backtrack: a pattern that takes a backtracking engine forever is instant."""
    item = matcher("server", RE, "(a+)+b")
    began = time.monotonic()
    assert not item.matches("a" * 253)
    assert time.monotonic() - began < 0.5


def test_an_over_long_regex_is_refused() -> None:
    with pytest.raises(BadPromRequest) as refused:
        matcher("server", RE, "a" * 4097)
    assert refused.value.reason == "bad_regex"


NAMES = ["web-1", "web-2", "db-1"]


@pytest.mark.parametrize(
    ("matchers", "family", "rows"),
    [
        ([("__name__", EQ, "cpu")], "cpu", [True, True, True]),
        ([("__name__", EQ, "cpu")], "ram", None),
        ([("server", RE, "web-.*"), ("server", NEQ, "web-2")], "cpu", [True, False, False]),
        ([("job", EQ, "x")], "cpu", None),
        ([("job", EQ, ""), ("server", EQ, "db-1")], "cpu", [False, False, True]),
        ([("job", NEQ, "x")], "cpu", [True, True, True]),
        ([("job", RE, ".+")], "cpu", None),
        ([("job", NRE, ".+"), ("__name__", RE, "c.*")], "cpu", [True, True, True]),
    ],
)
def test_a_label_the_series_lack_has_the_empty_value(
    matchers: list[tuple[str, MatchType, str]], family: str, rows: list[bool] | None
) -> None:
    """Series carry ``__name__`` and ``server`` only: a matcher on another label sees ``""``, so
    asking it for a value selects nothing and asking for its absence selects as Prometheus'
    own storage would."""
    selection = select([matcher(*item) for item in matchers], NAMES)
    got = selection.family_rows(family, len(NAMES))
    assert (None if got is None else got.tolist()) == rows
    if got is not None:
        assert got.dtype == np.bool_
