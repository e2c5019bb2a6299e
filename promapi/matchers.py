"""Label matchers with Prometheus' semantics, evaluated over ServerTrack's series.

Every series ServerTrack serves to Prometheus has exactly two labels: ``__name__`` (the metric
family) and ``server``. A matcher on any other label name sees the empty value, as in
Prometheus' own storage, where a series without a label matches ``foo=""`` and ``foo!="x"``
and never ``foo="x"`` or ``foo=~".+"``. So a matcher that asks an unknown label for a value
selects nothing, while one that asks for its absence selects as Prometheus would: a remote
read answers a query exactly as Prometheus' local storage would over the same series.

Regular expressions are RE2 (Prometheus uses Go's regexp, the same syntax), fully anchored and
with ``.`` matching a newline, as Prometheus compiles them (``^(?s:...)$``); RE2 runs in time
linear in the name, so no pattern can make a match slow.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import re2

from servertrack.promapi.errors import BadPromRequest

NAME_LABEL = "__name__"
SERVER_LABEL = "server"
MAX_REGEX = 4096
"""Characters in one regular expression at most (longer ones are refused as bad_regex)."""

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.dot_nl = True


class MatchType(enum.IntEnum):
    """The four matcher types, numbered as ``prometheus.LabelMatcher.Type`` numbers them."""

    EQ = 0
    NEQ = 1
    RE = 2
    NRE = 3

    @property
    def operator(self) -> str:
        return ("=", "!=", "=~", "!~")[self]


@dataclass(frozen=True, slots=True)
class Matcher:
    """``name op value``; build it with :func:`matcher` (which compiles and checks a regex)."""

    name: str
    type: MatchType
    value: str
    _regex: Any = field(default=None, repr=False, compare=False)

    def matches(self, value: str) -> bool:
        """Whether a label whose value is ``value`` (``""`` when absent) satisfies this."""
        if self.type is MatchType.EQ:
            return value == self.value
        if self.type is MatchType.NEQ:
            return value != self.value
        found = self._regex.fullmatch(value) is not None
        return found if self.type is MatchType.RE else not found

    def __str__(self) -> str:
        return f"{self.name}{self.type.operator}{self.value!r}"


def matcher(name: str, type_: MatchType, value: str) -> Matcher:
    """A :class:`Matcher`; :class:`BadPromRequest` (``bad_regex``) when ``value`` is a regex RE2
    cannot compile."""
    if type_ in (MatchType.RE, MatchType.NRE):
        if len(value) > MAX_REGEX:
            raise BadPromRequest(
                "bad_regex", f"the regex of {name} is {len(value)} characters, over {MAX_REGEX}"
            )
        try:
            compiled = re2.compile(f"(?s:{value})", _RE2_OPTIONS)
        except re2.error as err:
            reason = err.args[0] if err.args else err
            detail = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise BadPromRequest(
                "bad_regex", f"the regex {value!r} of {name} does not compile: {detail}"
            ) from err
        return Matcher(name, type_, value, compiled)
    return Matcher(name, type_, value)


def _rows(item: Matcher, names: Sequence[str]) -> np.ndarray:
    """The rows of ``names`` whose server name ``item`` accepts, as a boolean mask."""
    if item.type is MatchType.EQ:
        return np.fromiter((name == item.value for name in names), bool, len(names))
    if item.type is MatchType.NEQ:
        return np.fromiter((name != item.value for name in names), bool, len(names))
    fullmatch = item._regex.fullmatch
    found = np.fromiter((fullmatch(name) is not None for name in names), bool, len(names))
    return found if item.type is MatchType.RE else ~found


@dataclass(frozen=True, slots=True)
class Selection:
    """One conjunction of matchers, prepared over a list of server names: which series of
    which family it selects. The server part is evaluated once, whatever the family count."""

    by_name: tuple[Matcher, ...]
    """Matchers on ``__name__``."""
    others_ok: bool
    """Whether every matcher on a label other than ``__name__`` and ``server`` accepts ``""``."""
    rows: np.ndarray | None
    """The servers the ``server`` matchers accept (None: every server)."""

    def family_rows(self, family: str, count: int) -> np.ndarray | None:
        """The rows whose series of ``family`` are selected: a mask, or None for none at all."""
        if not self.others_ok or not all(m.matches(family) for m in self.by_name):
            return None
        return np.ones(count, bool) if self.rows is None else self.rows


def select(matchers: Sequence[Matcher], names: Sequence[str]) -> Selection:
    """Prepare the conjunction of ``matchers`` over the servers ``names``."""
    rows: np.ndarray | None = None
    for item in matchers:
        if item.name != SERVER_LABEL:
            continue
        mask = _rows(item, names)
        rows = mask if rows is None else rows & mask
    return Selection(
        by_name=tuple(m for m in matchers if m.name == NAME_LABEL),
        others_ok=all(m.matches("") for m in matchers if m.name not in (NAME_LABEL, SERVER_LABEL)),
        rows=rows,
    )
