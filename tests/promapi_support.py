"""A synthetic fleet, a stand-in HTTP app serving ``/metrics/servers`` and ``/api/v1/read`` over
it, and a real Prometheus to point at it.

The fleet is raw samples ``(server, ts, cpu, ram)`` placed around an injected ``now``; the tests'
expectations come from :func:`servertrack.common.oracle.oracle_buckets` over those samples,
while the stand-in builds the columnar inputs of :mod:`servertrack.promapi` with numpy, the way
a read model would. Every value is a multiple of 0.5, so sums are exact and both computations
give the same float64 means, bit for bit.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon
import numpy as np
import pytest
import yaml
from waitress import wasyncore
from waitress.server import create_server

from servertrack.api.admission import bearer_ok
from servertrack.common.buckets import HOUR, MINUTE, oldest_accepted_ts
from servertrack.common.fleet_query import STATUSES, status_of
from servertrack.common.oracle import RawSample
from servertrack.promapi import exposition, remote_read
from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.exposition import ServerMinutes
from servertrack.promapi.remote_read import Limits, SeriesHistory
from servertrack.testing.hosts import ChildProcess, free_port, wait_until

LIVE = ("web-1.example.com", "web-2.example.com", "web-3.example.com", "db-1.example.com")
STALE = "batch-1.example.com"
DOWN = "old-1.example.com"
WARMING = "db-1.example.com"
"""Its ram anomaly score is still warming up (NaN)."""
GAP_SERVER = "web-3.example.com"
GAP_MINUTES = range(20, 26)
"""Minutes ago (of the fleet's now) in which the gap server sent nothing."""
CPU_ONLY_SERVER = "web-2.example.com"
MAX_BODY = 1 << 20


def _value(rng: np.random.Generator) -> float:
    return float(rng.integers(0, 201)) / 2


@dataclass
class SyntheticFleet:
    """Raw samples of a few servers: live ones with a sample every 10 s over the last 70
    minutes and every 5 minutes before, back to the start of the 24-hour window; a stale one
    silent for 5 minutes; a down one silent for 2 hours; a gap in one, ram missing from every
    7th sample of another."""

    now: float
    samples: list[RawSample] = field(default_factory=list)

    @classmethod
    def make(cls, now: float, seed: int = 7) -> SyntheticFleet:
        rng = np.random.default_rng(seed)
        fleet = cls(now)
        oldest = oldest_accepted_ts(now)
        for name, silent_for in [(n, 0.0) for n in LIVE] + [(STALE, 300.0), (DOWN, 7200.0)]:
            newest = now - silent_for - 1.0
            ts = float(oldest + 30)
            count = 0
            while ts <= newest:
                minutes_ago = int((now - ts) // MINUTE)
                if not (name == GAP_SERVER and minutes_ago in GAP_MINUTES):
                    ram = None if name == CPU_ONLY_SERVER and count % 7 == 3 else _value(rng)
                    fleet.samples.append((name, ts, _value(rng), ram))
                    count += 1
                ts += 10.0 if now - ts < 70 * MINUTE else 300.0
        return fleet

    @property
    def names(self) -> list[str]:
        """The servers, in the (unsorted) order the stand-in lists them."""
        return [*LIVE, STALE, DOWN][::-1]

    def of(self, name: str) -> list[RawSample]:
        return [sample for sample in self.samples if sample[0] == name]

    @property
    def current_minute(self) -> int:
        return int(self.now - self.now % MINUTE)

    @property
    def last_complete_minute(self) -> int:
        return self.current_minute - MINUTE

    def minute_starts(self) -> np.ndarray:
        return self.current_minute - MINUTE * np.arange(59, -1, -1, dtype=np.int64)

    def hour_starts(self) -> np.ndarray:
        current = int(self.now - self.now % HOUR)
        return current - HOUR * np.arange(23, -1, -1, dtype=np.int64)

    def anomaly(self, name: str, metric: str) -> float:
        """A made-up score in [0, 1] for the live servers, NaN while warming up."""
        if name not in LIVE or (name == WARMING and metric == "ram"):
            return float("nan")
        return (LIVE.index(name) + (0.25 if metric == "cpu" else 0.5)) / len(LIVE)


STATS = ("cpu", "cpu_min", "cpu_max", "ram", "ram_min", "ram_max")


def _bucket_stats(cpu: np.ndarray, ram: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, values in (("cpu", cpu), ("ram", ram)):
        values = values[~np.isnan(values)]
        empty = not len(values)
        out[metric] = float("nan") if empty else float(values.sum() / len(values))
        out[f"{metric}_min"] = float("nan") if empty else float(values.min())
        out[f"{metric}_max"] = float("nan") if empty else float(values.max())
    return out


class ColumnarFleet:
    """What a read model would hand the Prometheus modules, computed with numpy."""

    def __init__(self, fleet: SyntheticFleet) -> None:
        self.fleet = fleet
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for name in fleet.names:
            rows = fleet.of(name)
            self.arrays[name] = (
                np.array([s[1] for s in rows]),
                np.array([np.nan if s[2] is None else s[2] for s in rows]),
                np.array([np.nan if s[3] is None else s[3] for s in rows]),
            )

    def bucket(self, name: str, start: float, width: int) -> tuple[dict[str, float], int]:
        ts, cpu, ram = self.arrays[name]
        inside = (ts >= start) & (ts < start + width)
        return _bucket_stats(cpu[inside], ram[inside]), int(inside.sum())

    def snapshot(self) -> ServerMinutes:
        fleet = self.fleet
        columns: dict[str, list[float]] = {key: [] for key in (*STATS, "samples")}
        for name in fleet.names:
            stats, count = self.bucket(name, fleet.last_complete_minute, MINUTE)
            for key in STATS:
                columns[key].append(stats[key])
            columns["samples"].append(count)
        last_seen = np.array([self.arrays[name][0].max() for name in fleet.names])
        status = [STATUSES.index(status_of(fleet.now - seen)) for seen in last_seen.tolist()]
        return ServerMinutes(
            names=fleet.names,
            minute_start=float(fleet.last_complete_minute),
            **{key: np.array(values, dtype=float) for key, values in columns.items()},
            cpu_anomaly=np.array([fleet.anomaly(n, "cpu") for n in fleet.names]),
            ram_anomaly=np.array([fleet.anomaly(n, "ram") for n in fleet.names]),
            last_seen=last_seen,
            now=fleet.now,
            status=np.array(status, dtype=float),
        )

    def history(self, names: Sequence[str]) -> SeriesHistory:
        minute_starts, hour_starts = self.fleet.minute_starts(), self.fleet.hour_starts()
        minutes = {f"servertrack_server_{k}_percent": np.empty((len(names), 60)) for k in STATS}
        hours = {f"servertrack_server_{k}_percent": np.empty((len(names), 24)) for k in STATS}
        for row, name in enumerate(names):
            for starts, width, out in (
                (minute_starts, MINUTE, minutes),
                (hour_starts, HOUR, hours),
            ):
                for column, start in enumerate(starts.tolist()):
                    stats, _ = self.bucket(name, start, width)
                    for key in STATS:
                        out[_family(key)][row, column] = stats[key]
        return SeriesHistory(minute_starts, hour_starts, minutes, hours)


def _family(stat: str) -> str:
    metric, _, extreme = stat.partition("_")
    return f"servertrack_server_{metric}{'_' + extreme if extreme else ''}_percent"


# -- the stand-in app ---------------------------------------------------------------------------
class StandIn:
    """``GET /metrics/servers`` and ``POST /api/v1/read`` over a :class:`ColumnarFleet`, with a
    read token, every refusal counted by reason in :attr:`refused`."""

    def __init__(self, columns: ColumnarFleet, read_token: str | None, limits: Limits) -> None:
        self.columns = columns
        self.token = read_token.encode() if read_token else None
        self.limits = limits
        self.refused: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.history_calls = 0
        self.app = falcon.App()
        self.app.add_route("/metrics/servers", self, suffix="scrape")
        self.app.add_route("/api/v1/read", self, suffix="read")
        self.app.add_error_handler(BadPromRequest, self._refuse)

    def _refuse(
        self, req: falcon.Request, resp: falcon.Response, err: BadPromRequest, _: Any
    ) -> None:
        self.refused[err.reason] += 1
        resp.status = falcon.HTTP_400
        resp.media = err.body()

    def _authorize(self, req: falcon.Request) -> None:
        if self.token is not None and not bearer_ok(req.get_header("Authorization"), self.token):
            raise falcon.HTTPUnauthorized(title="Unauthorized", description="read token needed")

    def on_get_scrape(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._authorize(req)
        scrape = exposition.parse_scrape_params(req.params)
        fmt = exposition.negotiate(req.get_header("Accept"))
        chunks = exposition.exposition(self.columns.snapshot(), scrape, fmt)
        if exposition.accepts_gzip(req.get_header("Accept-Encoding")):
            chunks = exposition.gzipped(chunks)
            resp.set_header("Content-Encoding", "gzip")
        resp.content_type = fmt.content_type
        resp.vary = ("Accept", "Accept-Encoding")
        resp.stream = chunks
        self.formats[fmt.content_type] += 1

    def on_post_read(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._authorize(req)
        body = req.bounded_stream.read(self.limits.max_body_bytes + 1)

        def history(names: Sequence[str]) -> SeriesHistory:
            self.history_calls += 1
            return self.columns.history(names)

        resp.data = remote_read.handle(
            body,
            req.get_header("Content-Encoding"),
            req.get_header("Content-Type"),
            self.columns.fleet.names,
            history,
            self.limits,
        )
        for name, value in remote_read.RESPONSE_HEADERS.items():
            resp.set_header(name, value)


class Served:
    """A WSGI app on a real waitress server on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.map: dict[int, Any] = {}
        self.server = create_server(app, map=self.map, host="127.0.0.1", port=0, threads=4)
        self.port = int(self.server.effective_port)  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.server.run, name="stand-in", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self.map)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the stand-in server did not stop"


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; the status, headers and raw body, errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- a real Prometheus --------------------------------------------------------------------------
def tool(name: str) -> str:
    """The path of ``name``; the test fails when it is missing (``make test`` installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found (make test installs it from Debian)")
    return path


README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Grafana and Prometheus"


def documented_configs() -> list[dict[str, Any]]:
    """The prometheus.yml of each set-up, as the README's "Grafana and Prometheus" shows them."""
    text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = []
    for part in text.split("```yaml")[1:]:
        block = part.split("```", 1)[0]
        indent = min(len(line) - len(line.lstrip()) for line in block.splitlines() if line.strip())
        blocks.append(yaml.safe_load("\n".join(line[indent:] for line in block.splitlines())))
    return blocks


def _pointed(config: dict[str, Any], target: str, token_file: Path) -> dict[str, Any]:
    """A documented config pointed at ``target`` with ``token_file``, scraping every second."""
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["authorization"]["credentials_file"] = str(token_file)
        job["static_configs"] = [{"targets": [target]}]
    for remote in config.get("remote_read", []):
        remote["url"] = f"http://{target}/api/v1/read"
        remote["authorization"]["credentials_file"] = str(token_file)
    return config


def scrape_only_config(target: str, token_file: Path) -> dict[str, Any]:
    """Set-up A as documented: Prometheus scrapes every family of ``/metrics/servers``."""
    return _pointed(documented_configs()[0], target, token_file)


def scrape_and_read_config(target: str, token_file: Path) -> dict[str, Any]:
    """Set-up B as documented: Prometheus scrapes only the readings of the moment and reads cpu
    and ram (the families with history) from ServerTrack when a query needs them."""
    return _pointed(documented_configs()[1], target, token_file)


@dataclass
class Prometheus:
    process: ChildProcess
    port: int

    def api(self, path: str, warnings: tuple[str, ...] = (), **params: Any) -> Any:
        """``/api/v1/<path>``'s ``data``; AssertionError with Prometheus' error, or with a
        warning other than ``warnings``, otherwise."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        status, _, body = http("GET", url)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {answer}")
        if set(answer.get("warnings", ())) - set(warnings):
            raise AssertionError(f"{path} {params}: warnings {answer['warnings']}")
        return answer["data"]

    def stop(self) -> None:
        self.process.stop()


def start_prometheus(workdir: Path, config: dict[str, Any]) -> Prometheus:
    """A real Prometheus with ``config``, its own storage and a free port, once it is ready."""
    binary = tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    process = ChildProcess(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
    ).start()
    prometheus = Prometheus(process, port)

    def ready() -> bool:
        return http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200

    try:
        wait_until(ready, 30.0, "Prometheus to be ready")
    except TimeoutError:
        process.stop()
        pytest.fail(f"Prometheus never ready:\n{process.log()[-3000:]}")
    return prometheus


def scraped_up(prometheus: Prometheus, deadline: float = 30.0) -> None:
    """Wait until Prometheus has scraped its target as up."""

    def up() -> bool:
        targets = prometheus.api("targets")["activeTargets"]
        return any(target["health"] == "up" for target in targets)

    try:
        wait_until(up, deadline, "Prometheus to scrape the stand-in as up")
    except TimeoutError:
        pytest.fail(f"{prometheus.api('targets')}\n{prometheus.process.log()[-3000:]}")


def scraping_prometheus(
    tmp_path_factory: pytest.TempPathFactory, config: dict[str, Any], name: str
) -> Iterator[Prometheus]:
    """A Prometheus started with ``config`` in a fresh folder, once it has scraped its target;
    stopped afterwards (for module fixtures: ``yield from``)."""
    prometheus = start_prometheus(tmp_path_factory.mktemp(name), config)
    try:
        scraped_up(prometheus)
        yield prometheus
    finally:
        prometheus.stop()


def by_server(result: list[dict[str, Any]]) -> dict[str, Any]:
    """A Prometheus vector or matrix keyed by its ``server`` label."""
    return {item["metric"]["server"]: item for item in result}
