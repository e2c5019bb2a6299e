"""``GET /metrics/servers``: each server's last complete minute in Prometheus' text format (or
OpenMetrics 1.0), streamed as bytes chunks from a columnar snapshot.

The input is :class:`ServerMinutes`, one array per figure with a row per server; the writer
goes family by family (a family's lines must be together) and a chunk of rows at a time, so the
largest thing it holds besides the snapshot is one chunk of text. Values are written in
Python's shortest round-trip form (``repr``), so Prometheus parses back the very float64 the
snapshot holds; figures of the minute carry the minute's start as their timestamp (milliseconds
in the text format, seconds in OpenMetrics), readings of the moment (last-seen age, status)
carry none. A NaN means "no value": that server's series is left out of that family.

``match[]`` selectors and ``server=`` names choose the series, as ``/federate`` does: a series
is written when its server is among the ``server=`` names (when given) and any one ``match[]``
selector (when given) selects it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.families import FAMILIES, Family
from servertrack.promapi.matchers import Matcher, Selection, select
from servertrack.promapi.selectors import parse_selector

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CHUNK_ROWS = 4096
"""Rows written per chunk: about 400 KB of text."""
PARAMETERS = frozenset({"match[]", "server"})
MAX_SELECTORS = 64
AGE_DECIMALS = 3
"""The last-seen age is written to the millisecond."""


@dataclass(frozen=True, slots=True, eq=False)
class ServerMinutes:
    """Every server's last complete minute and current state, one row per server.

    Float columns use NaN for "no value" (that series is omitted for that server).
    ``minute_start`` is the start (epoch seconds) of the last complete minute, one for all or
    one per server; ``status`` is the rank in ``common.fleet_query.STATUSES`` (0 down, 1 stale,
    2 live).
    """

    names: Sequence[str]
    minute_start: float | np.ndarray
    cpu: np.ndarray
    cpu_min: np.ndarray
    cpu_max: np.ndarray
    ram: np.ndarray
    ram_min: np.ndarray
    ram_max: np.ndarray
    samples: np.ndarray
    cpu_anomaly: np.ndarray
    ram_anomaly: np.ndarray
    last_seen: np.ndarray
    now: float
    status: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.names)
        for family in FAMILIES:
            if family.column != "age" and len(getattr(self, family.column)) != count:
                raise ValueError(f"column {family.column} does not have {count} rows")
        if len(self.last_seen) != count:
            raise ValueError(f"column last_seen does not have {count} rows")

    def column(self, family: Family) -> np.ndarray:
        """The values of ``family``, one per server."""
        if family.column == "age":
            return np.round(np.maximum(self.now - self.last_seen, 0.0), AGE_DECIMALS)
        return np.asarray(getattr(self, family.column), dtype=float)


@dataclass(frozen=True, slots=True)
class ScrapeFilter:
    """Which series a scrape asks for: ``server=`` names and ``match[]`` selectors."""

    servers: frozenset[str] | None = None
    selectors: tuple[tuple[Matcher, ...], ...] = ()


def _values(params: Mapping[str, str | Sequence[str]], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_scrape_params(params: Mapping[str, str | Sequence[str]]) -> ScrapeFilter:
    """A :class:`ScrapeFilter` from the URL's query parameters (a value, or a list for a
    repeated one); :class:`BadPromRequest` for an unknown parameter or a bad selector."""
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise BadPromRequest(
            "unknown_parameter",
            f"unknown parameter(s): {', '.join(unknown)}; known: match[], server",
        )
    texts = _values(params, "match[]")
    if len(texts) > MAX_SELECTORS:
        raise BadPromRequest("bad_selector", f"at most {MAX_SELECTORS} match[] selectors")
    servers = _values(params, "server")
    return ScrapeFilter(
        servers=frozenset(servers) if servers else None,
        selectors=tuple(tuple(parse_selector(text)) for text in texts),
    )


@dataclass(frozen=True, slots=True)
class Format:
    """An exposition format: its content type and whether it is OpenMetrics."""

    content_type: str
    openmetrics: bool


TEXT = Format(TEXT_CONTENT_TYPE, openmetrics=False)
OPENMETRICS = Format(OPENMETRICS_CONTENT_TYPE, openmetrics=True)


def _quality(parameters: list[str]) -> float:
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept: str | None) -> Format:
    """OpenMetrics when ``Accept`` prefers ``application/openmetrics-text`` (version 1.0.0,
    0.0.1 or none) at least as much as plain text; the text format otherwise."""
    best_openmetrics = best_text = 0.0
    for media_range in (accept or "").split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        quality = _quality(parameters)
        versions = [p.partition("=")[2].strip() for p in parameters if p.startswith("version")]
        if kind.lower() == "application/openmetrics-text":
            if not versions or versions[0] in ("1.0.0", "0.0.1"):
                best_openmetrics = max(best_openmetrics, quality)
        elif kind.lower() in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, quality)
    return OPENMETRICS if best_openmetrics > 0 and best_openmetrics >= best_text else TEXT


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` takes gzip (with a non-zero quality)."""
    for coding in (accept_encoding or "").split(","):
        name, *parameters = (part.strip() for part in coding.split(";"))
        if name.lower() in ("gzip", "x-gzip") and _quality(parameters) > 0:
            return True
    return False


def escape_label_value(value: str) -> str:
    """A label value as both formats write it: backslash, double quote and newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _header(family: Family, fmt: Format) -> str:
    lines = [
        f"# HELP {family.name} {_escape_help(family.help, fmt.openmetrics)}\n",
        f"# TYPE {family.name} gauge\n",
    ]
    if fmt.openmetrics and family.unit:
        lines.append(f"# UNIT {family.name} {family.unit}\n")
    return "".join(lines)


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass(slots=True)
class _Plan:
    """What one scrape writes, prepared once: the label text of every server, the rows the
    filter keeps, and each selector evaluated over the names."""

    snapshot: ServerMinutes
    fmt: Format
    labels: np.ndarray = field(init=False)
    servers: np.ndarray | None = field(init=False)
    selections: tuple[Selection, ...] = field(init=False)

    def prepare(self, scrape: ScrapeFilter) -> None:
        names = self.snapshot.names
        self.labels = np.array(
            [f'{{server="{escape_label_value(name)}"}} ' for name in names], dtype=object
        )
        self.servers = None
        if scrape.servers is not None:
            wanted = scrape.servers
            self.servers = np.fromiter((name in wanted for name in names), bool, len(names))
        self.selections = tuple(select(matchers, names) for matchers in scrape.selectors)

    def rows(self, family: Family, values: np.ndarray) -> np.ndarray:
        count = len(self.snapshot.names)
        keep = ~np.isnan(values)
        if self.servers is not None:
            keep &= self.servers
        if self.selections:
            chosen = np.zeros(count, bool)
            for selection in self.selections:
                rows = selection.family_rows(family.name, count)
                if rows is not None:
                    chosen |= rows
            keep &= chosen
        return np.flatnonzero(keep)

    def stamps(self, rows: np.ndarray) -> list[str] | str:
        """The timestamp text (with its leading blank and the newline) of each row, or one for
        every row."""
        starts = self.snapshot.minute_start
        scale = 1 if self.fmt.openmetrics else 1000  # the text format counts milliseconds
        if np.ndim(starts) == 0:
            return f" {int(np.asarray(starts, dtype=np.int64)) * scale}\n"
        picked = np.asarray(starts, dtype=np.int64)[rows] * scale
        return [f" {value}\n" for value in picked.tolist()]


def _chunk_text(
    family: Family, labels: list[str], values: np.ndarray, stamps: list[str] | str
) -> str:
    """The lines of one chunk of rows. ``str(float)`` is ``repr(float)``: the shortest text that
    parses back to the same float64."""
    name = family.name
    texts: list[int] | list[float] | list[str]
    if family.integer:
        texts = values.astype(np.int64).tolist()
    elif np.isfinite(values).all():
        texts = values.tolist()
    else:
        texts = [_float_text(value) for value in values.tolist()]
    if isinstance(stamps, str):
        pairs = zip(labels, texts, strict=True)
        return "".join([f"{name}{label}{value}{stamps}" for label, value in pairs])
    triples = zip(labels, texts, stamps, strict=True)
    return "".join([f"{name}{label}{value}{stamp}" for label, value, stamp in triples])


def exposition(
    snapshot: ServerMinutes,
    scrape: ScrapeFilter | None = None,
    fmt: Format = TEXT,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[bytes]:
    """The exposition of ``snapshot`` in ``fmt``, as UTF-8 chunks of whole lines."""
    plan = _Plan(snapshot, fmt)
    plan.prepare(scrape or ScrapeFilter())
    for family in FAMILIES:
        values = snapshot.column(family)
        rows = plan.rows(family, values)
        if not len(rows):
            continue
        yield _header(family, fmt).encode()
        for start in range(0, len(rows), chunk_rows):
            part = rows[start : start + chunk_rows]
            stamps: list[str] | str = "\n"
            if family.minute:
                stamps = plan.stamps(part)
            text = _chunk_text(family, plan.labels[part].tolist(), values[part], stamps)
            yield text.encode()
    if fmt.openmetrics:
        yield b"# EOF\n"


def gzipped(chunks: Iterable[bytes], level: int = 1) -> Iterator[bytes]:
    """``chunks`` as one gzip stream, compressed as they come (level 1: the exposition is
    repetitive text, so the fastest level already shrinks it about tenfold)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
