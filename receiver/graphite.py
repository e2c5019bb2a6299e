"""Graphite plaintext, I/O-free: lines cut from a byte stream, parsed, mapped to a server's cpu or
ram, and offered to the receiver's state. The TCP side is :mod:`receiver.graphite_listener`.

Lines. A line is ``path value timestamp`` ending in ``\\n`` or ``\\r\\n``; its fields are separated
by spaces or tabs. ``value`` and ``timestamp`` are numbers (integer or float); a timestamp of
``-1`` means "now" (the receiving clock). Every line is counted once, in ``received`` of source
``graphite`` and then in ``accepted``, ``duplicates`` or ``rejected["graphite"][reason]``:

- ``bad_line``: not three fields, a field that is not a number, or a path that is not UTF-8.
  A number is what ``float()`` reads, but for digit separators: ``5_0`` is refused, not taken as
  50. Python's ``float`` (so carbon-cache) and Go's ``strconv.ParseFloat`` accept them, but no
  Graphite writer sends them, and such a value is more likely a mangled line than a reading;
- ``unmapped``: no rule maps the path (checked before the value, so collectd's many other
  series count here whatever their value);
- ``nan``: the value is ``nan`` (collectd sends it for a first reading);
- ``line_too_long``: more than ``max_line`` bytes before the line ending; the rest of the line
  is discarded up to its newline, however many reads that takes;
- ``partial_line``: a half line left when the connection closed;
- ``rate_limited``: lines read beyond the connection's line rate (a token bucket of ``rate``
  lines per second holding at most one second's worth); the connection is then closed;
- then the sample's own checks (``bad_cpu``, ``bad_fqdn``, ``future``, ``too_old``,
  ``server_limit``...), in :meth:`ReceiverState.offer_graphite`.

Rules. A path is mapped by the first rule that matches it: the rules of ``--graphite-map FILE``
in file order, then the built-in ones (:data:`BUILTIN_RULES`)::

    # comment lines and blank lines are ignored; a rule is one line:
    # PATTERN                              METRIC  [inverted]
    servers.{server}.cpu.total.idle        cpu     inverted
    hosts.{server}.memory.percent-used     ram
    collectd{server}.cpu.percent-active    cpu

- PATTERN is a dotted path. Each node holds letters, digits, ``_`` and ``-``, plus two
  placeholders: ``*`` matches any run of characters inside one node (none included), and
  ``{server}`` (exactly once per pattern) captures a non-empty run inside one node as the server
  name. Neither crosses a ``.``, and the two may not touch (``*{server}`` is ambiguous).
- METRIC is ``cpu`` or ``ram``; ``inverted`` takes ``100 - value`` (an idle or free percentage).
- A pattern may appear once per file. A file holds at most :data:`MAX_RULES` rules. Anything
  else is an error naming the file and the line, raised when the file is loaded (at start).

The captured server name is taken as it comes: Graphite writers replace the dots of a host name
(collectd and ``servertrack forward`` write ``web-1.example.com`` as ``web-1_example_com``), and
that is the name the server gets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from servertrack.common.sample import METRICS, PERCENT_MAX
from servertrack.receiver.state import ReceiverState

SOURCE = "graphite"
MAX_LINE = 1024
"""Bytes a line may hold before its line ending."""
DEFAULT_RATE = 250_000.0
"""Lines per second one connection may send (a token bucket holding one second's worth).
Far above any real writer (a collectd with every plugin sends a few hundred lines a second) and
above what one receiver takes in (``bench.graphite_bench`` sustained 200,000 lines/s from one
client on the 2-core test machine, not 300,000), so it cuts only a client that floods, never
the bench's."""
MAX_RULES = 1000
CACHE_SIZE = 200_000
"""Paths whose mapping is remembered at least (the receiver makes room for a cpu and a ram path
per server it may track); the memory is emptied when it is full."""

NODE_TEXT = re.compile(r"[A-Za-z0-9_-]+")
PLACEHOLDER = re.compile(r"(\*|\{server\})")


class RuleError(ValueError):
    """A bad rule or rule file; the message names the file and the line."""


Target = tuple[str, str, bool]
"""Where a path's value goes: ``(server, metric, inverted)``.

PERF: a plain tuple of strings and a bool, not a named tuple: the garbage collector stops
tracking plain tuples of such values, and the cache holds one per path (500,000 for 250,000
servers' cpu and ram), which a named tuple would keep in every full collection."""


class Rule(NamedTuple):
    pattern: str
    metric: str
    inverted: bool
    regex: re.Pattern[str]


def compile_rule(pattern: str, metric: str, inverted: bool = False) -> Rule:
    """A :class:`Rule` for ``pattern``; raises ``ValueError`` saying what is wrong with it."""
    if metric not in METRICS:
        raise ValueError(f"metric must be cpu or ram, got {metric!r}")
    if pattern.count("{server}") != 1:
        raise ValueError(f"{pattern!r} must hold {{server}} exactly once")
    parts = []
    for node in pattern.split("."):
        if not node:
            raise ValueError(f"{pattern!r} has an empty node")
        tokens = [token for token in PLACEHOLDER.split(node) if token]
        for index, token in enumerate(tokens):
            if token == "*":
                parts.append("[^.]*")
            elif token == "{server}":
                parts.append("(?P<server>[^.]+)")
            elif NODE_TEXT.fullmatch(token):
                parts.append(re.escape(token))
                continue
            else:
                raise ValueError(
                    f"{pattern!r}: {token!r} is not letters, digits, '_', '-', '*' or {{server}}"
                )
            if index and tokens[index - 1] in ("*", "{server}"):
                raise ValueError(f"{pattern!r}: '*' and {{server}} may not touch")
        parts.append(r"\.")
    return Rule(pattern, metric, inverted, re.compile("".join(parts[:-1])))


BUILTIN_RULES: tuple[Rule, ...] = (
    compile_rule("servertrack.{server}.cpu", "cpu"),
    compile_rule("servertrack.{server}.ram", "ram"),
    compile_rule("collectd.{server}.cpu.percent-active", "cpu"),
    compile_rule("collectd.{server}.memory.percent-used", "ram"),
)
"""``servertrack forward``'s own series (so two installations can chain), and collectd's
``write_graphite`` with ``Prefix "collectd."`` and the cpu plugin's ``ReportByCpu false``,
``ReportByState false`` (one percent-active series) and the memory plugin's
``ValuesPercentage true``."""


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """The rules of a rule file's ``text``; :class:`RuleError` names ``source`` and the line."""
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}:{number}"
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "inverted"):
            raise RuleError(
                f"{where}: a rule is 'PATTERN METRIC' or 'PATTERN METRIC inverted', got {raw!r}"
            )
        if words[0] in seen:
            raise RuleError(f"{where}: {words[0]!r} is already a rule on line {seen[words[0]]}")
        if len(rules) == MAX_RULES:
            raise RuleError(f"{where}: more than {MAX_RULES} rules")
        try:
            rules.append(compile_rule(words[0], words[1], len(words) == 3))
        except ValueError as err:
            raise RuleError(f"{where}: {err}") from None
        seen[words[0]] = number
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of the file at ``path``; :class:`RuleError` for a bad or unreadable file."""
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")
    except OSError as err:
        raise RuleError(f"cannot read the rule file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{path}: not UTF-8 text") from None
    return parse_rules(text, str(path))


class PathMapper:
    """Maps a path to a :class:`Target` with the given rules, then the built-in ones; the answer
    for each path is remembered (up to ``cache_size`` paths)."""

    def __init__(self, rules: Sequence[Rule] = (), cache_size: int = CACHE_SIZE) -> None:
        self.rules = (*rules, *BUILTIN_RULES)
        self.cache_size = cache_size
        self.cache: dict[bytes, Target | None] = {}

    def map(self, path: bytes) -> Target | None:
        """The target of ``path``, or None when no rule maps it; ``UnicodeDecodeError`` when it
        is not UTF-8."""
        try:
            return self.cache[path]
        except KeyError:
            return self.resolve(path)

    def resolve(self, path: bytes) -> Target | None:
        """:meth:`map` for a path not in the cache (the answer is remembered)."""
        text = path.decode("utf-8")
        target = None
        for rule in self.rules:
            match = rule.regex.fullmatch(text)
            if match is not None:
                target = (match["server"], rule.metric, rule.inverted)
                break
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[path] = target
        return target


class Stream:
    """What one connection's bytes left behind: the half line waiting for its newline, whether
    an over-long line is being discarded, when that unfinished line began, and the rate limit's
    token bucket."""

    __slots__ = ("began", "refilled", "skipping", "tail", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tail = b""
        self.skipping = False
        self.began: float | None = None
        """Monotonic time of the first byte of the line not finished yet (None: none is)."""
        self.tokens = tokens
        self.refilled = now


class GraphiteIntake:
    """Cuts byte streams into lines and takes each line into a :class:`ReceiverState`.

    ``now`` arguments are the wall clock (timestamps, the time window); ``mono`` arguments a
    monotonic clock (the rate limit).
    """

    def __init__(
        self,
        state: ReceiverState,
        mapper: PathMapper | None = None,
        max_line: int = MAX_LINE,
        rate: float = DEFAULT_RATE,
    ) -> None:
        self.state = state
        self.mapper = mapper or PathMapper()
        self.max_line = max_line
        self.rate = rate

    def open(self, mono: float) -> Stream:
        """The state of a new connection (with a full bucket)."""
        return Stream(self.rate, mono)

    def feed(self, stream: Stream, data: bytes, now: float, mono: float) -> bool:
        """Take the bytes a connection sent; False when it went over its line rate (the lines
        beyond are counted ``rate_limited``, and the caller must close it). Notes in
        ``stream.began`` when the line left unfinished began (for the line deadline)."""
        if not data:
            return True
        if stream.skipping:
            end = data.find(b"\n")
            if end < 0:
                return True  # the discarded line goes on: it began when it began
            data = data[end + 1 :]
            stream.skipping = False
            stream.began = None
        if stream.tail:
            data = stream.tail + data
        lines = data.split(b"\n")
        tail = lines.pop()
        if len(tail) > self.max_line + 1:  # +1: room for the \r of a \r\n ending
            self.state.reject("line_too_long", 1, SOURCE)
            stream.skipping = True
            tail = b""
        stream.tail = tail
        if not (tail or stream.skipping):
            stream.began = None
        elif lines or stream.began is None:
            stream.began = mono  # a new line began in these bytes
        if not lines:
            return True
        tokens = min(self.rate, stream.tokens + (mono - stream.refilled) * self.rate)
        stream.refilled = mono
        if len(lines) > tokens:
            allowed = int(tokens)
            stream.tokens = 0.0
            self.take_lines(lines[:allowed], now)
            self.state.reject("rate_limited", len(lines) - allowed, SOURCE)
            return False
        stream.tokens = tokens - len(lines)
        self.take_lines(lines, now)
        return True

    def close(self, stream: Stream) -> None:
        """The connection ended: a half line left is counted ``partial_line``."""
        if stream.tail:
            self.state.reject("partial_line", 1, SOURCE)
            stream.tail = b""

    def take_lines(self, lines: Iterable[bytes], now: float) -> None:
        """Parse, map and offer complete lines (without their ``\\n``)."""
        state = self.state
        offer = state.offer_graphite
        reject = state.reject
        cache = self.mapper.cache
        resolve = self.mapper.resolve
        limit = self.max_line
        for line in lines:
            if len(line) > limit and (len(line) > limit + 1 or line[-1:] != b"\r"):
                reject("line_too_long", 1, SOURCE)
                continue
            fields = line.split()
            if len(fields) != 3:
                reject("bad_line", 1, SOURCE)
                continue
            path, value_text, ts_text = fields
            target: Target | Literal[False] | None = cache.get(path, False)  # False: not cached
            if target is False:
                try:
                    target = resolve(path)
                except UnicodeDecodeError:
                    reject("bad_line", 1, SOURCE)
                    continue
            if target is None:
                reject("unmapped", 1, SOURCE)
                continue
            if b"_" in value_text or b"_" in ts_text:  # float() takes "5_0" as 50
                reject("bad_line", 1, SOURCE)
                continue
            try:
                value = float(value_text)
                ts = float(ts_text)
            except ValueError:
                reject("bad_line", 1, SOURCE)
                continue
            if value != value:
                reject("nan", 1, SOURCE)
                continue
            if ts == -1.0:
                ts = now
            server, metric, inverted = target
            if inverted:
                value = PERCENT_MAX - value
            offer(server, metric, value, ts, now)
