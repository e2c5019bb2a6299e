"""``servertrack loadgen``: simulate a fleet, then check every number the host reports.

It sends N servers x R samples/s for S seconds over ZeroMQ (P publisher processes, each owning a
share of the servers, so each server's samples stay in order) or over HTTP (batched ``POST
/loads``), optionally after back-filling H hours of history with past timestamps. It keeps the raw
samples of the K servers it will check, computes their buckets with the independent oracle in
``testing/hosts.py``, and compares them with ``GET /servers/{name}/loads``; it also compares the
receiver's counters with what it sent. The last line is ``PASSED`` or ``FAILED: <reason>``.

Pacing runs on the monotonic clock. A tick that starts late is counted, and the summary says when
the generator could not keep the requested rate, so its own limits are not taken for the server's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from servertrack.common import endpoints, wire
from servertrack.common.buckets import HOUR, oldest_accepted_ts
from servertrack.common.config import (
    add_option,
    endpoint,
    non_negative_float,
    positive_float,
    positive_int,
)
from servertrack.common.oracle import RawSample, bucket_differences, oracle_buckets
from servertrack.loadgen.encoding import name_block, pack_many

HTTP_BATCH = 10_000
SETTLE_DEADLINE = 60.0
REL_TOLERANCE = 1e-9


@dataclass(slots=True)
class Plan:
    prefix: str
    servers: int
    rate: float
    duration: float
    via: str
    publishers: int
    api: str
    ingest: str
    backfill_hours: float
    backfill_step: float
    checked: frozenset[int]
    seed: int


@dataclass(slots=True)
class Report:
    """What one publisher did."""

    sent: int = 0
    backfilled: int = 0
    late_ticks: int = 0
    ticks: int = 0
    send_seconds: float = 0.0
    http_errors: int = 0
    raw: dict[int, list[RawSample]] = field(default_factory=dict)


def server_name(plan: Plan, index: int) -> str:
    return f"{plan.prefix}-{index:06d}.loadgen"


def values_for(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """CPU and RAM percentages for ``count`` samples, rounded like psutil's one decimal."""
    cpu = np.round(rng.uniform(0.0, 100.0, count), 1)
    ram = np.round(rng.uniform(0.0, 100.0, count), 1)
    return cpu, ram


class Sender:
    """Sends one publisher's share of samples and keeps the raw samples of checked servers."""

    def __init__(self, plan: Plan, share: list[int]) -> None:
        self.plan = plan
        self.share = share
        self.names = [server_name(plan, index) for index in share]
        self.checked = [
            (position, index) for position, index in enumerate(share) if index in plan.checked
        ]
        self.report = Report(raw={index: [] for _, index in self.checked})
        self.rng = np.random.default_rng(plan.seed + (share[0] if share else 0))
        # Spread each server's samples over the tick so that bucket edges are crossed.
        self.offsets = np.array([(index % 997) / 997 for index in share]) / plan.rate

    def tick(self, started: float, backfill: bool = False) -> int:
        """Send one sample for every server in the share, all stamped from ``started``."""
        cpu, ram = values_for(self.rng, len(self.share))
        stamps = started + self.offsets
        for position, index in self.checked:
            self.report.raw[index].append(
                (
                    self.names[position],
                    float(stamps[position]),
                    float(cpu[position]),
                    float(ram[position]),
                )
            )
        self.emit(stamps, cpu, ram)
        count = len(self.share)
        if backfill:
            self.report.backfilled += count
        self.report.sent += count
        return count

    def emit(self, stamps: np.ndarray, cpu: np.ndarray, ram: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the transport."""

    def run(self) -> Report:
        plan = self.plan
        try:
            if plan.backfill_hours > 0:
                now = time.time()
                first = max(now - plan.backfill_hours * HOUR, oldest_accepted_ts(now) + 1)
                start = first
                while start < now - plan.backfill_step:
                    self.tick(start, backfill=True)
                    start += plan.backfill_step
            interval = 1.0 / plan.rate
            ticks = max(1, round(plan.duration * plan.rate))
            deadline = time.monotonic()
            for _ in range(ticks):
                pause = deadline - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                elif pause < -interval / 2:
                    self.report.late_ticks += 1
                began = time.monotonic()
                self.tick(time.time())
                self.report.send_seconds += time.monotonic() - began
                self.report.ticks += 1
                deadline += interval
        finally:
            self.close()
        return self.report


class ZmqSender(Sender):
    def __init__(self, plan: Plan, share: list[int]) -> None:
        super().__init__(plan, share)
        self.context = zmq.Context()
        # XPUB is a PUB that also hands us the receiver's subscription, so sending starts only
        # once the receiver listens (a plain PUB drops everything before that: slow joiner).
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 120_000)  # let a backlog drain before exit
        self.socket.setsockopt(zmq.SNDHWM, 200_000)
        # At the high-water mark wait instead of dropping: a drop at the tail of a stream leaves
        # no seq gap behind, so nobody could count it. The wait shows up as late ticks.
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.socket.setsockopt(zmq.SNDTIMEO, 30_000)
        self.socket.connect(plan.ingest)
        if not self.socket.poll(10_000, zmq.POLLIN):
            self.close()
            raise RuntimeError(f"no receiver subscribed at {plan.ingest} within 10 s")
        self.socket.recv()
        self.seq = np.zeros(len(share), np.uint64)
        self.block: np.ndarray | None = None

    def emit(self, stamps: np.ndarray, cpu: np.ndarray, ram: np.ndarray) -> None:
        if self.block is None:
            self.block = name_block(self.names)
        buffer, width = pack_many(self.block, stamps, cpu, ram, self.seq)
        self.seq += 1
        view = memoryview(buffer)
        # PERF: two plain sends with int flags cost ~0.5 µs; send_multipart ~2 µs.
        send = self.socket.send
        fmt, more = wire.MSGPACK, int(zmq.SNDMORE)
        try:
            for start in range(0, len(buffer), width):
                send(fmt, more)
                send(view[start : start + width])
        except zmq.Again as err:
            raise RuntimeError("the receiver took no samples for 30 s") from err

    def close(self) -> None:
        self.socket.close()
        self.context.term()


class HttpSender(Sender):
    def __init__(self, plan: Plan, share: list[int]) -> None:
        super().__init__(plan, share)
        host, port = api_address(plan.api)
        self.connection = http.client.HTTPConnection(host, port, timeout=30)

    def emit(self, stamps: np.ndarray, cpu: np.ndarray, ram: np.ndarray) -> None:
        stamps, cpu, ram = stamps.tolist(), cpu.tolist(), ram.tolist()
        items = [
            {"server": name, "ts": stamps[i], "cpu": cpu[i], "ram": ram[i]}
            for i, name in enumerate(self.names)
        ]
        for first in range(0, len(items), HTTP_BATCH):
            body = json.dumps(items[first : first + HTTP_BATCH])
            self.connection.request("POST", "/loads", body, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            response.read()
            if response.status != 202:
                self.report.http_errors += 1

    def close(self) -> None:
        self.connection.close()


def publish(plan: Plan, share: list[int]) -> Report:
    sender = ZmqSender(plan, share) if plan.via == "zmq" else HttpSender(plan, share)
    return sender.run()


def send_fleet(plan: Plan) -> tuple[list[Report], float]:
    """Run the publishers (one process each when there are several); returns their reports and
    the seconds the sending took."""
    shares = [list(range(k, plan.servers, plan.publishers)) for k in range(plan.publishers)]
    began = time.monotonic()
    if plan.publishers == 1:
        reports = [publish(plan, shares[0])]
    else:
        with multiprocessing.get_context("fork").Pool(plan.publishers) as pool:
            reports = pool.starmap(publish, [(plan, share) for share in shares])
    return reports, time.monotonic() - began


# -- checking -----------------------------------------------------------------------------------
def api_address(api: str) -> tuple[str, int]:
    """``http://HOST[:PORT]`` → ``(HOST, PORT)`` (port 80 if left out)."""
    parts = urllib.parse.urlsplit(api)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--api must be an http:// URL with a host, got {api!r}")
    return parts.hostname, parts.port or 80


def get_json(api: str, path: str) -> tuple[int, Any]:
    host, port = api_address(api)
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", urllib.parse.quote(path))
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        connection.close()


def receiver_totals(api: str, patience: float = 30.0) -> dict[str, int]:
    """The receiver's and aggregator's running totals (waiting out a busy moment's 503)."""
    deadline = time.monotonic() + patience
    status, stats = get_json(api, "/stats")
    while status == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, stats = get_json(api, "/stats")
    if status != 200:
        raise RuntimeError(f"/stats answered {status}")
    receiver = stats.get("receiver", {})
    return {
        "received": sum(receiver.get("received", {}).values()),
        "accepted": sum(receiver.get("accepted", {}).values()),
        "rejected": sum(sum(counts.values()) for counts in receiver.get("rejected", {}).values()),
        "duplicates": receiver.get("duplicates", 0),
        "lost": receiver.get("lost", 0),
        "forward_dropped": receiver.get("forward_dropped", 0),
        "applied": stats.get("aggregator", {}).get("applied", 0),
        "expired": stats.get("aggregator", {}).get("expired", 0),
    }


def wait_settled(api: str, before: dict[str, int], sent: int) -> dict[str, int]:
    """Wait until every sent sample is accounted for by the receiver and the aggregator."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    while True:
        now = receiver_totals(api)
        delta = {key: now[key] - before[key] for key in now}
        accounted = delta["accepted"] + delta["rejected"] + delta["duplicates"] + delta["lost"]
        if (accounted >= sent and delta["applied"] + delta["expired"] >= delta["accepted"]) or (
            time.monotonic() > deadline
        ):
            return delta
        time.sleep(0.25)


def check(plan: Plan, reports: list[Report], delta: dict[str, int]) -> tuple[list[str], int, int]:
    """Compare the checked servers with the oracle; returns problems, servers compared, skipped."""
    raw: dict[int, list[RawSample]] = {}
    for report in reports:
        raw.update(report.raw)
    problems: list[str] = []
    compared = skipped = 0
    for index in sorted(raw):
        name = server_name(plan, index)
        asked = time.time()
        status, view = get_json(plan.api, f"/servers/{name}/loads")
        answered = time.time()
        if status != 200:
            problems.append(f"{name}: GET answered {status}")
            continue
        if view.get("health", {}).get("lost", 0):
            skipped += 1  # counted loss: its buckets cannot match what was sent
            continue
        # The answer was computed at some moment between ``asked`` and ``answered``: when a
        # minute edge falls in between, it is right if it matches the oracle at either side.
        differences = bucket_differences(view, oracle_buckets(raw[index], asked), REL_TOLERANCE)
        if differences and int(asked // 60) != int(answered // 60):
            differences = bucket_differences(
                view, oracle_buckets(raw[index], answered), REL_TOLERANCE
            )
        problems.extend(f"{name}: {text}" for text in differences[:3])
        compared += 1
    return problems, compared, skipped


# -- command ------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack loadgen", description=__doc__)
    add_option(parser, "--servers", 1000, "simulated servers", positive_int)
    add_option(parser, "--rate", 1.0, "samples per second per server", positive_float)
    add_option(parser, "--duration", 10.0, "seconds of live sending", positive_float)
    add_option(parser, "--via", "zmq", "transport", choices=["zmq", "http"])
    add_option(
        parser, "--publishers", 2, "sending processes (each with its own socket)", positive_int
    )
    add_option(parser, "--api", "http://127.0.0.1:8080", "API base URL (for checks and --via http)")
    add_option(parser, "--ingest", endpoints.INGEST, "receiver endpoint (for --via zmq)", endpoint)
    add_option(
        parser, "--backfill-hours", 0.0, "hours of history to send first", non_negative_float
    )
    add_option(
        parser, "--backfill-step", 300.0, "seconds between back-filled samples", positive_float
    )
    add_option(parser, "--check", 100, "servers to check against the oracle (0 = all)", int)
    add_option(parser, "--prefix", None, "server name prefix (default: a new random one)")
    add_option(parser, "--seed", 1, "random seed for the values", int)
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    servers = args.servers
    count = servers if args.check <= 0 else min(args.check, servers)
    step = servers / count if count else 1
    checked = frozenset(int(i * step) for i in range(count))
    for name, value in (
        ("--servers", servers),
        ("--rate", args.rate),
        ("--duration", args.duration),
        ("--publishers", args.publishers),
    ):
        if value <= 0:
            raise SystemExit(f"{name} must be positive")
    if servers > 1_000_000:
        raise SystemExit("--servers is at most 1,000,000")
    if not 0 <= args.backfill_hours <= 23:
        raise SystemExit("--backfill-hours must be between 0 and 23")
    try:
        api_address(args.api)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return Plan(
        prefix=args.prefix or f"lg{uuid.uuid4().hex[:6]}",
        servers=servers,
        rate=args.rate,
        duration=args.duration,
        via=args.via,
        publishers=min(args.publishers, servers),
        api=args.api.rstrip("/"),
        ingest=args.ingest,
        backfill_hours=args.backfill_hours,
        backfill_step=args.backfill_step,
        checked=checked,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    before = receiver_totals(plan.api)
    reports, elapsed = send_fleet(plan)
    sent = sum(r.sent for r in reports)
    backfilled = sum(r.backfilled for r in reports)
    live = sent - backfilled
    late = sum(r.late_ticks for r in reports)
    delta = wait_settled(plan.api, before, sent)
    problems, compared, skipped = check(plan, reports, delta)
    achieved = live / max(elapsed, 1e-9) if not backfilled else live / plan.duration
    target = plan.servers * plan.rate
    print(
        f"servers {plan.servers}  rate {plan.rate}/s  via {plan.via}  publishers "
        f"{plan.publishers}  prefix {plan.prefix}"
    )
    print(f"sent {sent} (live {live}, backfill {backfilled})  in {elapsed:.1f} s")
    print(
        f"accepted {delta['accepted']}  duplicates {delta['duplicates']}  lost {delta['lost']}  "
        f"rejected {delta['rejected']}  forward_dropped {delta['forward_dropped']}  "
        f"applied {delta['applied']}  expired {delta['expired']}"
    )
    print(
        f"checked {compared} servers against the oracle ({skipped} skipped for counted loss), "
        f"mismatches {len(problems)}"
    )
    print(
        f"requested {target:.0f} samples/s, generator achieved {achieved:.0f} samples/s, "
        f"late ticks {late}"
    )
    if late:
        print(
            "note: the generator could not keep the requested rate; the figures above are "
            "limited by the generator, not necessarily by the server"
        )
    for problem in problems[:10]:
        print(f"  mismatch: {problem}")
    unexplained = sent - (
        delta["accepted"] + delta["rejected"] + delta["duplicates"] + delta["lost"]
    )
    reason = None
    if sum(r.http_errors for r in reports):
        reason = f"{sum(r.http_errors for r in reports)} HTTP batches refused"
    elif unexplained:
        reason = f"{unexplained} samples unaccounted for (sent - accepted - counted drops)"
    elif delta["applied"] + delta["expired"] < delta["accepted"]:
        reason = f"{delta['accepted'] - delta['applied']} accepted samples never applied"
    elif problems:
        reason = f"{len(problems)} mismatches against the oracle"
    elif compared == 0:
        reason = "no server could be checked"
    print("PASSED" if reason is None else f"FAILED: {reason}")
    return 0 if reason is None else 1
