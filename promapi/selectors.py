"""PromQL series selectors, as ``match[]`` takes them on Prometheus' ``/federate``.

The grammar is PromQL's: ``metric_name``, ``metric_name{matchers}`` or ``{matchers}``, where a
matcher is ``label op "value"`` with ``op`` one of ``=``, ``!=``, ``=~``, ``!~``, the value a
double- or single-quoted string (Go escapes) or a back-quoted raw string, matchers separated by
commas (a trailing comma is allowed) and blanks anywhere between tokens. As in Prometheus, a
selector needs at least one matcher that does not match the empty string, and the metric name
may be given once.
"""

from __future__ import annotations

import re

from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.matchers import NAME_LABEL, Matcher, MatchType, matcher

MAX_SELECTOR = 8192
"""Characters in one selector at most."""

_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BLANK = re.compile(r"[ \t\r\n]*")
_OPERATORS = (("=~", MatchType.RE), ("!~", MatchType.NRE), ("!=", MatchType.NEQ))
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}
_NUMERIC_ESCAPES = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}


class _Reader:
    """A cursor over one selector's text; every failure names the position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def fail(self, what: str) -> BadPromRequest:
        return BadPromRequest(
            "bad_selector", f"selector {self.text!r}: {what} at character {self.at + 1}"
        )

    def blank(self) -> None:
        blank = _BLANK.match(self.text, self.at)  # matches everywhere, if only nothing
        if blank is not None:
            self.at = blank.end()

    def peek(self) -> str:
        return self.text[self.at : self.at + 1]

    def token(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.at)
        if found is None:
            raise self.fail(f"expected {what}")
        self.at = found.end()
        return found.group()

    def operator(self) -> MatchType:
        for symbol, type_ in _OPERATORS:
            if self.text.startswith(symbol, self.at):
                self.at += len(symbol)
                return type_
        if self.peek() == "=":
            self.at += 1
            return MatchType.EQ
        raise self.fail("expected one of =, !=, =~, !~")

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted string")
        self.at += 1
        if quote == "`":
            end = self.text.find("`", self.at)
            if end < 0:
                raise self.fail("unterminated raw string")
            value, self.at = self.text[self.at : end], end + 1
            return value
        parts: list[str] = []
        while True:
            char = self.peek()
            if char in ("", "\n"):
                raise self.fail("unterminated string")
            self.at += 1
            if char == quote:
                return "".join(parts)
            parts.append(self.escape() if char == "\\" else char)

    def escape(self) -> str:
        char = self.peek()
        self.at += 1
        if char in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[char]
        if char in _NUMERIC_ESCAPES or char in "01234567":
            width, base = _NUMERIC_ESCAPES.get(char, (3, 8))
            start = self.at if char in _NUMERIC_ESCAPES else self.at - 1
            digits = self.text[start : start + width]
            try:
                code = int(digits, base) if len(digits) == width else -1
            except ValueError:
                code = -1
            if not 0 <= code <= 0x10FFFF or 0xD800 <= code < 0xE000 or (base == 8 and code > 255):
                raise self.fail(f"bad escape \\{char}{digits[1:] if base == 8 else digits}")
            self.at = start + width
            return chr(code)
        raise self.fail(f"unknown escape \\{char}")


def parse_selector(text: str) -> list[Matcher]:
    """The matchers of one series selector (the metric name as a ``__name__`` matcher), or
    :class:`BadPromRequest` (``bad_selector`` or ``bad_regex``)."""
    if len(text) > MAX_SELECTOR:
        raise BadPromRequest("bad_selector", f"a selector is at most {MAX_SELECTOR} characters")
    reader = _Reader(text)
    matchers: list[Matcher] = []
    reader.blank()
    if reader.peek() != "{":
        matchers.append(matcher(NAME_LABEL, MatchType.EQ, reader.token(_METRIC, "a metric name")))
        reader.blank()
    if reader.peek() == "{":
        reader.at += 1
        reader.blank()
        while reader.peek() != "}":
            name = reader.token(_LABEL, "a label name or '}'")
            reader.blank()
            type_ = reader.operator()
            reader.blank()
            matchers.append(matcher(name, type_, reader.string()))
            reader.blank()
            if reader.peek() == ",":
                reader.at += 1
                reader.blank()
            elif reader.peek() != "}":
                raise reader.fail("expected ',' or '}'")
        reader.at += 1
        reader.blank()
    if reader.at != len(text):
        raise reader.fail("unexpected text")
    if sum(m.name == NAME_LABEL for m in matchers) > 1 and text.lstrip()[:1] != "{":
        raise BadPromRequest("bad_selector", f"selector {text!r}: the metric name is set twice")
    if all(m.matches("") for m in matchers):
        raise BadPromRequest(
            "bad_selector",
            f"selector {text!r} must contain at least one matcher that does not match the "
            "empty string",
        )
    return matchers
