"""Graphite carbon-cache baseline: how many datapoints/s it sustains on this machine.

Why: ServerTrack is meant to replace a Graphite setup, so its throughput figures need the
real carbon-cache (PyPI ``carbon`` + ``whisper`` on Twisted) measured on the same machine,
with the same load shape, as a yardstick. Nothing here re-implements Graphite.

Load shape: N simulated servers each report one sample per second; a sample is two
plaintext-protocol datapoints (``servertrack.<server>.cpu <v> <ts>`` and ``.ram``), so a
step of N servers offers 2*N datapoints/s. Two sender processes (one TCP connection each to
127.0.0.1) are paced on ``time.monotonic`` in 1-s ticks and send each tick's lines in large
``sendall`` chunks. Timestamps are ``base + tick`` so every datapoint is unique.

carbon-cache runs from the venv (``carbon-cache.py --config=... --nodaemon start``) with
everything in a temp dir, listeners on free loopback ports only (pickle and UDP receivers
off), ``MAX_CACHE_SIZE``, ``MAX_UPDATES_PER_SECOND`` and ``MAX_CREATES_PER_MINUTE`` all
``inf``, per-update logging off (as in carbon.conf.example), retentions ``60s:1h,1h:1d`` with
average aggregation for the fed metrics (so whisper keeps the last of each minute's 60
samples, not their mean; carbon still performs every write). Each step gets a fresh carbon
process; the whisper tree is kept across the steps of one run.

Warm-up: creating a whisper file costs far more than updating one (~1 ms of carbon CPU on
the 2-core dev VM), and a real fleet's files exist long before its steady state. So before
each hold one tick of all N servers is sent and the step waits (bounded) until all 2*N files
exist; the hold then measures steady-state updates only. ``warmup_s`` reports that time.

Carbon's own instrumentation is the judge of "kept up": every ``CARBON_METRIC_INTERVAL``
(2 s; 1 s for holds under 30 s) it records ``carbon.agents.<host>-a.*`` (cache.size,
committedPoints, metricsReceived, ...) into its cache. Those series get their own ``1s:1h``
schema so no record overwrites another, and are read back the way graphite-web does: the
whisper file merged with a ``cache-query-bulk`` on the cache query port (records not yet
flushed to disk).

Criterion. The window W is the hold minus its first ``min(10 s, hold/3)`` (connection and
pacing settle; the files already exist). A tick of points is 2N. A step is *sustained* iff

1. the senders kept pace: every 1-s tick's lines were fully sent before the next tick
   began, and no sender errored or fell behind by more than ``SENDER_GIVE_UP_S``; and
2. carbon kept up, shown by either
   a. a bounded backlog: ``cache.size`` <= 2 ticks at every record in the window. By
      conservation (committed = received - growth of the cache) every point was then
      committed within about 2 s, and any deficit above ~2 % would have pushed the cache
      past the bound within a 50-s window; or
   b. steady rates: committed datapoints/s >= 0.98 * offered AND the cache grew by at most
      2 ticks over W. This covers a stable but larger backlog (carbon batching several
      points per whisper update).

Rates are least-squares slopes of carbon's cumulative counters over the records stamped in
the window (not sums), and growth is the LS slope of ``cache.size`` times W. Form (a)
exists because at light load carbon's writer empties the cache and then sleeps 1 s: the
cache saw-tooths between 0 and ~1 tick, beating against the 1-s ticks, so over any window
the committed rate and cache slope jitter by up to a tick, several percent of a 30-60-s
window, while the backlog itself stays tiny. At least ``MIN_SAMPLES`` records are required.

The sweep stops at the first step that is not sustained; ``sustained_datapoints_per_s`` is
the offered rate of the highest sustained step. Carbon CPU is the psutil ``cpu_times``
(user+system) delta over the hold divided by the hold's wall time (in cores); RSS is the max
sampled every 0.5 s during the hold. ``other_cpu_cores`` is the machine's busy time (incl.
steal) over the hold minus carbon's and the senders': carbon is single-threaded in effect
(one GIL for the line receiver and the whisper writer), so anything else using a core of
this 2-core box lowers its ceiling; rerun steps where that figure is well above 0.1.
Carbon's self-metrics add ~10-20 points/s to committedPoints (negligible).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import pickle
import queue
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
METRIC_PREFIX = "servertrack"
SENDERS = 2
CHUNK_BYTES = 256 * 1024
VALUE_POOL = 1009  # distinct pre-formatted values, cycled so lines differ tick to tick
SENDER_GIVE_UP_S = 5.0  # a tick this late means carbon stopped reading; stop the sender
START_DELAY_S = 3.0  # time for spawned senders to import and build their name tables
COMMIT_RATIO = 0.98
CACHE_GROWTH_TICKS = 2.0  # allowed cache.size growth over the window, in ticks of points
BACKLOG_TICKS = 2.0  # cache.size bound for the bounded-backlog form, in ticks of points
SETTLE_S = 10.0  # start of the hold left out of the window
MIN_SAMPLES = 4
CARBON_START_TIMEOUT_S = 30.0
WARMUP_BASE_S = 30.0
WARMUP_CREATES_PER_S = 300.0  # pessimistic; only bounds the warm-up wait
STOP_TIMEOUT_S = 15.0
DEFAULT_STEPS = (5000, 10000, 20000, 25000, 30000, 35000, 40000)
SELF_STATS = (
    "cache.size",
    "committedPoints",
    "metricsReceived",
    "updateOperations",
    "pointsPerUpdate",
    "creates",
)


# --------------------------------------------------------------------------- carbon setup


def _free_ports(count: int) -> list[int]:
    """Pick distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_config(root: Path, line_port: int, query_port: int, interval: int) -> Path:
    """Write carbon.conf + schemas under root/conf; everything carbon touches stays in root."""
    conf_dir = root / "conf"
    storage = root / "storage"
    for d in (conf_dir, storage / "whisper", storage / "log", storage / "lists"):
        d.mkdir(parents=True, exist_ok=True)
    carbon_conf = conf_dir / "carbon.conf"
    carbon_conf.write_text(f"""[cache]
STORAGE_DIR = {storage}
LOCAL_DATA_DIR = {storage / "whisper"}
WHITELISTS_DIR = {storage / "lists"}
LOG_DIR = {storage / "log"}
PID_DIR = {storage}
DATABASE = whisper
ENABLE_LOGROTATION = False
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = {LOOPBACK}
LINE_RECEIVER_PORT = {line_port}
ENABLE_UDP_LISTENER = False
UDP_RECEIVER_INTERFACE = {LOOPBACK}
PICKLE_RECEIVER_INTERFACE = {LOOPBACK}
PICKLE_RECEIVER_PORT = 0
CACHE_QUERY_INTERFACE = {LOOPBACK}
CACHE_QUERY_PORT = {query_port}
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
LOG_CACHE_QUEUE_SORTS = False
LOG_LISTENER_CONN_SUCCESS = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = False
WHISPER_FALLOCATE_CREATE = True
CARBON_METRIC_INTERVAL = {interval}
""")
    # First match wins: carbon's self-metrics at 1 s so no record overwrites another.
    (conf_dir / "storage-schemas.conf").write_text("""[carbon]
pattern = ^carbon\\.
retentions = 1s:1h

[default]
pattern = .*
retentions = 60s:1h,1h:1d
""")
    (conf_dir / "storage-aggregation.conf").write_text("""[default]
pattern = .*
xFilesFactor = 0.5
aggregationMethod = average
""")
    return carbon_conf


def _carbon_script() -> Path:
    """carbon-cache.py installed next to this interpreter (the venv's bin/), else on PATH."""
    local = Path(sys.executable).parent / "carbon-cache.py"
    if local.exists():
        return local
    found = shutil.which("carbon-cache.py")
    if found is None:
        raise RuntimeError("carbon-cache.py not found: pip install carbon whisper")
    return Path(found)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Block until carbon accepts on port; fail fast if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"carbon-cache exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"carbon-cache not listening on {LOOPBACK}:{port} after {timeout}s")


def _start_carbon(root: Path, conf: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start carbon-cache in the foreground (no daemon fork, so Popen.pid is carbon)."""
    env = dict(
        os.environ,
        GRAPHITE_ROOT=str(root),
        GRAPHITE_CONF_DIR=str(conf.parent),
        GRAPHITE_STORAGE_DIR=str(root / "storage"),
        # carbon's generated protobuf module predates the protobuf runtime the remote read
        # installs; only its protobuf receiver (unused here) needs the fast implementation.
        PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python",
    )
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(_carbon_script()), f"--config={conf}", "--nodaemon", "start"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------- load


def _server_name(i: int) -> str:
    return f"{METRIC_PREFIX}.srv{i:06d}"


class Fleet:
    """Pre-encoded line prefixes and values, so a tick costs one join per sender."""

    def __init__(self, first: int, count: int) -> None:
        rng = random.Random(first)
        self.pool = [f"{rng.uniform(0.0, 100.0):.2f}".encode() for _ in range(VALUE_POOL)]
        names = [_server_name(i) for i in range(first, first + count)]
        self.cpu = [f"{n}.cpu ".encode() for n in names]
        self.ram = [f"{n}.ram ".encode() for n in names]

    def payload(self, tick: int, ts: int) -> bytes:
        """One tick: a cpu and a ram line per server, all stamped ts."""
        tail = b" %d\n" % ts
        pool = self.pool
        parts: list[bytes] = []
        for i, (cpu, ram) in enumerate(zip(self.cpu, self.ram, strict=True)):
            j = (i * 7 + tick) % VALUE_POOL
            parts += (cpu, pool[j], tail, ram, pool[(j + 503) % VALUE_POOL], tail)
        return b"".join(parts)


def _send_all(sock: socket.socket, data: bytes) -> None:
    """sendall in CHUNK_BYTES pieces so the socket timeout bounds each piece."""
    view = memoryview(data)
    for off in range(0, len(view), CHUNK_BYTES):
        sock.sendall(view[off : off + CHUNK_BYTES])


def sender_main(
    first: int, count: int, port: int, start_mono: float, base_ts: int, ticks: int, out: Any
) -> None:
    """Child process: send `ticks` 1-s ticks for servers [first, first+count).

    Runs in its own process so line formatting and socket writes do not share a GIL with
    the parent's monitoring. Reports one dict on `out`.
    """
    result: dict[str, Any] = {
        "points": 0,
        "ticks": 0,
        "late_ticks": 0,
        "max_tick_s": 0.0,
        "error": None,
        "cpu_s": 0.0,
    }
    fleet = Fleet(first, count)
    sock = None
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=SENDER_GIVE_UP_S)
        for k in range(ticks):
            slot = start_mono + k
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _send_all(sock, fleet.payload(k, base_ts + k))
            done = time.monotonic()
            result["ticks"] += 1
            result["points"] += 2 * count
            result["max_tick_s"] = max(result["max_tick_s"], done - slot)
            if done > slot + 1.0:
                result["late_ticks"] += 1
            if done > slot + SENDER_GIVE_UP_S:
                result["error"] = f"fell {done - slot:.1f}s behind at tick {k}"
                break
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if sock is not None:
            sock.close()
        times = os.times()
        result["cpu_s"] = times.user + times.system
        out.put(result)


def _warm_up(servers: int, port: int, data_dir: Path, timeout: float) -> float | None:
    """Send one tick for every server and wait until carbon has created all 2N files.

    Returns the seconds it took, or None if `timeout` passed first.
    """
    t0 = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=SENDER_GIVE_UP_S) as sock:
        _send_all(sock, Fleet(0, servers).payload(0, int(time.time()) - 1))
    missing = [
        data_dir / METRIC_PREFIX / f"srv{i:06d}" / f"{kind}.wsp"
        for i in range(servers)
        for kind in ("cpu", "ram")
    ]
    deadline = t0 + timeout
    while time.monotonic() < deadline:  # bounded by timeout
        missing = [p for p in missing if not p.exists()]
        if not missing:
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


# --------------------------------------------------------------------------- carbon metrics


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:  # bounded: each recv blocks at most the socket timeout
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("cache query connection closed")
        buf += chunk
    return bytes(buf)


def _cache_query(port: int, metrics: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Points carbon still holds in memory for `metrics` (Int32-framed pickle protocol)."""
    request = pickle.dumps({"type": "cache-query-bulk", "metrics": metrics}, protocol=2)
    with socket.create_connection((LOOPBACK, port), timeout=10.0) as sock:
        sock.sendall(struct.pack("!I", len(request)) + request)
        (length,) = struct.unpack("!I", _recv_exact(sock, 4))
        # Trusted: the carbon-cache we started, on loopback.
        reply = pickle.loads(_recv_exact(sock, length))
    return reply.get("datapointsByMetric", {})


def _self_metric_prefix(data_dir: Path) -> str:
    """carbon.agents.<host>-a, as carbon.instrumentation builds it (or the one on disk)."""
    name = f"{socket.gethostname().replace('.', '_')}-a"
    agents = data_dir / "carbon" / "agents"
    if not (agents / name).is_dir() and agents.is_dir():
        found = [d.name for d in agents.iterdir() if d.is_dir()]
        if len(found) == 1:
            name = found[0]
    return f"carbon.agents.{name}"


def _read_self_metrics(
    data_dir: Path, query_port: int, since: float, until: float
) -> dict[str, dict[int, float]]:
    """carbon's own records stamped in [since, until]: whisper on disk merged with cache."""
    import whisper  # bench extra; imported here so the module imports without it

    prefix = _self_metric_prefix(data_dir)
    names = [f"{prefix}.{stat}" for stat in SELF_STATS]
    series: dict[str, dict[int, float]] = {stat: {} for stat in SELF_STATS}
    for stat, name in zip(SELF_STATS, names, strict=True):
        path = data_dir / (name.replace(".", "/") + ".wsp")
        if not path.exists():
            continue
        (start, _end, step), values = whisper.fetch(str(path), int(since) - 1, int(until) + 1)
        for i, value in enumerate(values):
            if value is not None:
                series[stat][start + i * step] = value
    for name, points in _cache_query(query_port, names).items():
        stat = name[len(prefix) + 1 :]
        for ts, value in points:
            series[stat][int(ts)] = value
    return {
        stat: dict(sorted((t, v) for t, v in pts.items() if since <= t <= until))
        for stat, pts in series.items()
    }


def _slope(points: dict[int, float]) -> float:
    """Least-squares slope (units per second); 0 with fewer than two points."""
    if len(points) < 2:
        return 0.0
    xs = list(points)
    ys = list(points.values())
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _rate(increments: dict[int, float]) -> float:
    """Per-second rate of a counter recorded as per-interval increments: LS slope of its
    running total, which is robust to lost or late records and to bursty edges."""
    total = 0.0
    cumulative: dict[int, float] = {}
    for ts, value in increments.items():
        total += value
        cumulative[ts] = total
    return _slope(cumulative)


# --------------------------------------------------------------------------- one step


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (incl. steal), to spot other load."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def _stop_senders(senders: list[Any]) -> None:
    """Join sender processes; SIGTERM then SIGKILL any that linger."""
    for proc in senders:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=STOP_TIMEOUT_S)


def _collect(results_q: Any, n: int, ticks: int) -> list[dict[str, Any]]:
    """One result per sender; a sender that never reports counts as not keeping pace."""
    sent: list[dict[str, Any]] = []
    deadline = time.monotonic() + SENDER_GIVE_UP_S + 10.0
    for _ in range(n):
        try:
            sent.append(results_q.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            sent.append(
                {
                    "error": "no result",
                    "points": 0,
                    "ticks": 0,
                    "late_ticks": ticks,
                    "max_tick_s": None,
                    "cpu_s": 0.0,
                }
            )
    return sent


def _run_step(servers: int, hold: float, root: Path, interval: int) -> dict[str, Any]:
    """Start carbon, warm it up, offer `servers` samples/s for `hold` s, judge, stop all."""
    ticks = max(1, round(hold))
    window = ticks - min(SETTLE_S, ticks / 3)
    offered = 2 * servers
    data_dir = root / "storage" / "whisper"
    line_port, query_port = _free_ports(2)
    conf = _write_config(root, line_port, query_port, interval)
    carbon: subprocess.Popen[bytes] | None = None
    senders: list[Any] = []
    ctx = mp.get_context("spawn")
    results_q = ctx.Queue()
    base: dict[str, Any] = {"servers": servers, "offered_datapoints_per_s": offered}
    try:
        carbon = _start_carbon(root, conf, root / "storage" / "log" / "carbon-console.log")
        _wait_listening(carbon, line_port, CARBON_START_TIMEOUT_S)
        cproc = psutil.Process(carbon.pid)
        warm_timeout = WARMUP_BASE_S + offered / WARMUP_CREATES_PER_S
        warmup_s = _warm_up(servers, line_port, data_dir, warm_timeout)
        base["warmup_s"] = None if warmup_s is None else round(warmup_s, 1)
        if warmup_s is None:
            return base | {"sustained": False, "error": f"warm-up over {warm_timeout:.0f}s"}

        start_mono = time.monotonic() + START_DELAY_S
        start_wall = time.time() + START_DELAY_S
        base_ts = int(start_wall)
        share = -(-servers // SENDERS)
        for idx in range(SENDERS):
            first = idx * share
            count = min(share, servers - first)
            if count <= 0:
                continue
            proc = ctx.Process(
                target=sender_main,
                daemon=True,
                args=(first, count, line_port, start_mono, base_ts, ticks, results_q),
            )
            proc.start()
            senders.append(proc)

        time.sleep(max(0.0, start_mono - time.monotonic()))
        cpu0 = sum(cproc.cpu_times()[:2])
        busy0 = _machine_busy_s()
        rss_max = cproc.memory_info().rss
        end_mono = start_mono + ticks
        while time.monotonic() < end_mono:  # bounded by the hold
            time.sleep(min(0.5, max(0.0, end_mono - time.monotonic())))
            rss_max = max(rss_max, cproc.memory_info().rss)
        cpu_cores = (sum(cproc.cpu_times()[:2]) - cpu0) / ticks
        busy_cores = (_machine_busy_s() - busy0) / ticks
        sent = _collect(results_q, len(senders), ticks)

        # Records are stamped floor(time); those stamped in [end - W, end - 1] bound the
        # increments measured inside the window. Wait for the last of them, then read.
        time.sleep(interval + 1.0)
        if carbon.poll() is not None:
            raise RuntimeError(f"carbon-cache died during the step (rc={carbon.returncode})")
        end_wall = start_wall + ticks
        stats = _read_self_metrics(data_dir, query_port, end_wall - window, end_wall - 1)
    finally:
        _stop_senders(senders)
        results_q.close()
        _stop_process(carbon)
    judged = _judge(stats, sent, offered, ticks, window)
    other = busy_cores - cpu_cores - judged["sender_cpu_cores"]
    return (
        base
        | judged
        | {
            "carbon_cpu_cores": round(cpu_cores, 3),
            "carbon_rss_bytes": rss_max,
            "other_cpu_cores": round(max(0.0, other), 3),
        }
    )


def _judge(
    stats: dict[str, dict[int, float]],
    sent: list[dict[str, Any]],
    offered: int,
    ticks: int,
    window: float,
) -> dict[str, Any]:
    """Apply the module docstring's criterion to one step's measurements."""
    cache = stats["cache.size"]
    ppu = stats["pointsPerUpdate"]
    committed_rate = _rate(stats["committedPoints"])
    received_rate = _rate(stats["metricsReceived"])
    updates_rate = _rate(stats["updateOperations"])
    growth = _slope(cache) * window
    enough = min(len(cache), len(stats["committedPoints"])) >= MIN_SAMPLES
    sender_ok = all(
        s["error"] is None and s["late_ticks"] == 0 and s["ticks"] == ticks for s in sent
    )
    bounded_ok = enough and max(cache.values()) <= BACKLOG_TICKS * offered
    rates_ok = (
        enough
        and committed_rate >= COMMIT_RATIO * offered
        and growth <= CACHE_GROWTH_TICKS * offered
    )
    tick_times = [s["max_tick_s"] for s in sent if s["max_tick_s"] is not None]
    return {
        "sent_datapoints_per_s": round(sum(s["points"] for s in sent) / ticks, 1),
        "received_datapoints_per_s": round(received_rate, 1),
        "committed_datapoints_per_s": round(committed_rate, 1),
        "cache_size_samples": [int(v) for v in cache.values()],
        "cache_growth_over_window": round(growth, 1),
        "points_per_update": round(sum(ppu.values()) / len(ppu), 2) if ppu else None,
        "updates_per_s": round(updates_rate, 1),
        "creates_in_window": int(sum(stats["creates"].values())),
        "sender_cpu_cores": round(sum(s["cpu_s"] for s in sent) / ticks, 3),
        "sender_late_ticks": sum(s["late_ticks"] for s in sent),
        "sender_max_tick_s": round(max(tick_times), 3) if tick_times else None,
        "sender_errors": [s["error"] for s in sent if s["error"]],
        "sender_kept_pace": sender_ok,
        "carbon_backlog_bounded": bounded_ok,
        "carbon_rates_ok": rates_ok,
        "sustained": sender_ok and (bounded_ok or rates_ok),
        "window_s": window,
        "samples_in_window": len(cache),
    }


# --------------------------------------------------------------------------- public API


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("carbon", "whisper", "Twisted"):
        try:
            out[dist.lower()] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.lower()] = None
    return out


def measure_carbon(
    servers_steps: list[int], hold_seconds: float = 60.0, workdir: Path | None = None
) -> dict[str, Any]:
    """Step the offered load up until carbon-cache no longer sustains it (see module doc).

    workdir: where carbon's conf/storage/logs go (a fresh subdirectory, kept for
    inspection); by default a temp dir that is removed afterwards.
    """
    steps = sorted({int(n) for n in servers_steps if int(n) > 0})
    if not steps:
        raise ValueError("servers_steps needs at least one positive count")
    if hold_seconds < 6:
        raise ValueError(f"hold_seconds must be >= 6 (the window needs {MIN_SAMPLES} records)")
    # 2 s keeps consecutive records in distinct 1-s whisper slots even with reactor lag.
    interval = 2 if hold_seconds >= 30 else 1
    if workdir is None:
        root = Path(tempfile.mkdtemp(prefix="carbon-baseline-"))
        cleanup = True
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="carbon-baseline-", dir=workdir))
        cleanup = False
    results: list[dict[str, Any]] = []
    try:
        for servers in steps:
            try:
                step = _run_step(servers, hold_seconds, root, interval)
            except (OSError, RuntimeError) as exc:  # carbon failed to start or died
                step = {"servers": servers, "sustained": False, "error": repr(exc)}
            results.append(step)
            print(json.dumps(step), file=sys.stderr, flush=True)
            if not step["sustained"]:
                break
    finally:
        if cleanup:
            shutil.rmtree(root, ignore_errors=True)
    best = max(
        (s for s in results if s["sustained"]),
        key=lambda s: s["servers"],
        default=None,
    )
    return {
        "sustained_datapoints_per_s": best["offered_datapoints_per_s"] if best else 0,
        "sustained_servers": best["servers"] if best else 0,
        "cpu_cores": best["carbon_cpu_cores"] if best else None,
        "rss_bytes": best["carbon_rss_bytes"] if best else None,
        "hold_seconds": hold_seconds,
        "carbon_metric_interval_s": interval,
        "cpu_count": os.cpu_count(),
        "steps": results,
        "versions": _versions(),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print measure_carbon()'s result as JSON on stdout (per-step progress on stderr)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--steps",
        default=",".join(map(str, DEFAULT_STEPS)),
        help="comma-separated simulated server counts, ascending",
    )
    parser.add_argument("--hold", type=float, default=60.0, help="seconds per step")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep carbon's conf/storage/logs here"
    )
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    print(json.dumps(measure_carbon(steps, args.hold, args.workdir), indent=2))


if __name__ == "__main__":
    main()
