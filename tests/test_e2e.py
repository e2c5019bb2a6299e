"""End to end: the real daemons as child processes, real ZeroMQ and real HTTP on loopback."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import zmq

from servertrack.agent.probe import node_addresses
from servertrack.common import wire
from servertrack.common.oracle import RawSample, oracle_buckets
from servertrack.common.sample import Sample
from servertrack.testing.hosts import ChildProcess as Process
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import (
    free_port,
    random_history,
    settled_stats,
    view_at_stable_minute,
    wait_until,
)
from servertrack.testing.hosts import http_json as http
from servertrack.testing.hosts import servertrack_argv as servertrack
from servertrack.testing.hosts import warm_up as _warm_up
from tests.support import assert_matches_oracle, wait_for

pytestmark = pytest.mark.e2e


def warm_up(pub: zmq.Socket, host: Host) -> None:
    try:
        _warm_up(pub, host)
    except TimeoutError as err:
        pytest.fail(str(err))


def accepted_total(host: Host) -> int:
    status, stats = host.get("/stats")
    assert status == 200
    return sum(stats["aggregator"].get(key, 0) for key in ("applied",))


def test_zmq_and_http_samples_match_the_oracle(
    start_host: Callable[..., Host], zmq_context: zmq.Context
) -> None:
    """Samples sent over ZeroMQ (both formats) and HTTP come back as the oracle's exact means."""
    host = start_host("--no-agent", "--accept-pickle")
    rng = random.Random(7)
    now = time.time()
    sent: dict[str, list[RawSample]] = {}
    pub = zmq_context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(host.ingest)
    try:
        warm_up(pub, host)
        before = accepted_total(host)
        for server, fmt in (("zmq-a.example", "msgpack"), ("zmq-b.example", "pickle.gz")):
            sent[server] = random_history(rng, server, now, 300)
            for seq, (name, ts, cpu, ram) in enumerate(sent[server]):
                pub.send_multipart(wire.encode(Sample(name, ts, cpu, ram, seq), fmt))
    finally:
        pub.close(linger=5000)  # deliver everything queued before closing
    items = []
    for server in ("http-a.example", "http-b.example"):
        sent[server] = random_history(rng, server, now, 200)
        for name, ts, cpu, ram in sent[server]:
            item = {"server": name, "ts": ts}
            item.update({"cpu": cpu} if cpu is not None else {})
            item.update({"ram": ram} if ram is not None else {})
            items.append(item)
    status, body = host.post("/loads", items)
    assert (status, body["accepted"]) == (202, len(items))
    total = sum(len(samples) for samples in sent.values())
    try:
        wait_until(lambda: accepted_total(host) - before >= total, 30, "every sample")
    except TimeoutError:
        pytest.fail(f"not every sample was applied: {before} + {total}; {host.get('/stats')}")
    for server, samples in sent.items():
        view, at = view_at_stable_minute(host, server)
        assert_matches_oracle(view, oracle_buckets(samples, at))


def test_single_post_shows_up_within_two_seconds(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """A load recorded with POST /servers/{name}/loads is visible to GET within 2 s."""
    host = shared_host("--no-agent", "--http", http_server)
    status, body = host.post("/servers/web-1.example/loads", {"cpu": 12.5, "ram": 40.0})
    assert (status, body["accepted"]) == (202, 1)
    wait_for(  # within 2 s: the one-second batch plus a margin
        lambda: host.get("/servers/web-1.example/loads")[0] == 200,
        2.0,
        "the load in GET",
        step=0.05,
    )
    view = host.get("/servers/web-1.example/loads")[1]
    assert view["minutes"][-1]["cpu"] == 12.5 and view["minutes"][-1]["ram"] == 40.0


BAD_INPUTS = [
    ("/servers/web-1/loads", {"cpu": 101}, 422, "bad_cpu"),
    ("/servers/web-1/loads", {"cpu": "12"}, 422, "bad_cpu"),
    ("/servers/web-1/loads", {}, 422, "no_metrics"),
    ("/servers/w%C3%A9b/loads", {"cpu": 1}, 400, "bad_fqdn"),
    ("/servers/..%2F..%2Fetc/loads", {"cpu": 1}, 400, "bad_fqdn"),
    ("/servers/web-1/loads", {"cpu": 1, "ts": 4e9}, 422, "future"),
    ("/servers/web-1/loads", {"cpu": 1, "ts": 1e9}, 422, "too_old"),
    ("/loads", {"server": "a", "cpu": 1}, 400, "not_a_list"),
    ("/loads", [{"server": "a", "cpu": 1}] * 10_001, 413, "too_many"),
]


def test_bad_input_gets_a_4xx_json_body_and_changes_nothing(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """Each kind of bad input is answered with its 4xx and reason, and nothing is recorded: once
    a good record sent after them all is in, it is the only server and the only sample added."""
    host = shared_host("--no-agent", "--http", http_server)
    before_servers = {s["server"] for s in host.get("/servers?limit=1000")[1]["servers"]}
    before = settled_stats(host)["aggregator"].get("applied", 0)
    answers = []
    for path, body, _, _ in BAD_INPUTS:
        got_status, got = host.post(path, body)
        answers.append((got_status, got.get("reason"), bool(got.get("description"))))
    assert answers == [(status, reason, True) for _, _, status, reason in BAD_INPUTS]
    sentinel = f"after-bad-input-{http_server}"
    assert host.post(f"/servers/{sentinel}/loads", {"cpu": 1.0})[0] == 202
    wait_for(lambda: host.get(f"/servers/{sentinel}/loads")[0] == 200, 5, "the good record")
    servers = {s["server"] for s in host.get("/servers?limit=1000")[1]["servers"]}
    assert servers - before_servers == {sentinel}
    assert accepted_total(host) == before + 1


def test_malformed_json_over_http_is_400(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """A body that is not JSON gets 400 with reason bad_json."""
    host = shared_host("--no-agent", "--http", http_server)
    status, body = http("POST", host.api + "/servers/web-1/loads", raw=b"{cpu: 1")
    assert (status, body["reason"]) == (400, "bad_json")


def test_api_answers_503_while_the_aggregator_is_down_and_recovers(
    tmp_path: Path, http_server: str
) -> None:
    """Without an aggregator GET is 503 within a second; once it starts, GET works again."""
    api_port = free_port()
    ports = {name: free_port() for name in ("ingest", "control", "batches", "query")}
    endpoint = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    receiver = Process(
        servertrack(
            "receiver",
            "--bind",
            endpoint["ingest"],
            "--control",
            endpoint["control"],
            "--aggregator",
            endpoint["batches"],
        ),
        tmp_path / "receiver.log",
    ).start()
    api = Process(
        servertrack(
            "api",
            "--http",
            http_server,
            "--port",
            str(api_port),
            "--receiver-control",
            endpoint["control"],
            "--aggregator-query",
            endpoint["query"],
        ),
        tmp_path / "api.log",
    ).start()
    aggregator = Process(
        servertrack(
            "aggregator",
            "--batches",
            endpoint["batches"],
            "--query",
            endpoint["query"],
            "--receiver-control",
            endpoint["control"],
        ),
        tmp_path / "aggregator.log",
    )
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(
            lambda: http("GET", base + "/health")[1]["receiver"]["ok"], 20, "the receiver to answer"
        )
        began = time.monotonic()
        status, body = http("GET", base + "/servers/web-1/loads")
        assert time.monotonic() - began < 1.0
        assert (status, body["reason"]) == (503, "backend_unavailable")
        assert http("POST", base + "/servers/web-1/loads", {"cpu": 5.0})[0] == 202
        aggregator.start()
        wait_for(lambda: http("GET", base + "/health")[0] == 200, 20, "the api to recover")
        assert http("POST", base + "/servers/web-1/loads", {"cpu": 7.0})[0] == 202
        wait_for(lambda: http("GET", base + "/servers/web-1/loads")[0] == 200, 5, "data again")
    finally:
        for process in (api, aggregator, receiver):
            if process.process is not None:
                process.stop()


def test_real_agent_reports_this_machine(start_host: Callable[..., Host]) -> None:
    """With a local agent, the node's own minute data appears within a few seconds."""
    host = start_host("--agent-interval", "0.2", "--agent-name", "agent-under-test.example")
    wait_for(
        lambda: host.get("/servers/agent-under-test.example/loads")[0] == 200,
        10,
        "the agent's samples",
    )
    view = host.get("/servers/agent-under-test.example/loads")[1]
    minute = view["minutes"][-1]
    assert minute["samples"] >= 1
    assert 0.0 <= minute["cpu"] <= 100.0 and 0.0 < minute["ram"] <= 100.0
    ips = view["health"]["ip"]
    assert ips and set(ips) == set(node_addresses())  # the agent runs on this very machine


def test_the_printed_first_command_answers_with_this_machine(
    start_host: Callable[..., Host],
) -> None:
    """``servertrack run`` prints the name its agent reports under and a curl line for it; that
    line's URL answers 200 with this machine's data, whatever its FQDN resolves to."""
    host = start_host("--agent-interval", "0.2")
    line = wait_for(
        lambda: re.search(
            r"The local agent reports as '([^']+)': curl -s (\S+)", host.process.log()
        ),
        10,
        "the agent's name on the host's output",
    )
    name, url = line.group(1), line.group(2)
    assert url == f"{host.api}/servers/{name}/loads"
    wait_for(lambda: http("GET", url)[0] == 200, 10, "the printed URL to answer")
    status, servers = host.get("/servers")
    assert status == 200 and name in [s["server"] for s in servers["servers"]]


def test_sigterm_stops_every_process_within_the_deadline(start_host: Callable[..., Host]) -> None:
    """SIGTERM to ``servertrack run`` stops it and all its children within 10 s."""
    host = start_host("--agent-interval", "0.5")
    children = psutil.Process(host.process.pid).children(recursive=True)
    assert len(children) == 4
    host.process.stop(deadline=10)  # raises (after killing) past the deadline
    assert host.process.process.returncode == 0
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []


def test_a_dead_child_is_restarted(start_host: Callable[..., Host]) -> None:
    """When the aggregator is killed, the host starts it again and the API is healthy again."""
    host = start_host("--no-agent")
    children = psutil.Process(host.process.pid).children()
    aggregator = next(c for c in children if "servertrack.aggregator" in " ".join(c.cmdline()))
    aggregator.kill()
    aggregator.wait(timeout=5)
    wait_for(lambda: host.get("/health")[0] == 503, 10, "the outage to show")
    wait_for(lambda: host.get("/health")[0] == 200, 20, "the aggregator to be restarted")
    names = [" ".join(c.cmdline()) for c in psutil.Process(host.process.pid).children()]
    assert sum("servertrack.aggregator" in name for name in names) == 1


def test_two_hosts_run_side_by_side(shared_host: Callable[..., Host]) -> None:
    """Two monitoring hosts on different ports keep their data apart."""
    first = shared_host("--no-agent", "--http", "waitress")
    second = shared_host("--no-agent", "--http", "granian")
    assert first.post("/servers/only-first/loads", {"cpu": 1.0})[0] == 202
    wait_for(lambda: first.get("/servers/only-first/loads")[0] == 200, 5, "the first host's data")
    assert second.get("/servers/only-first/loads")[0] == 404
