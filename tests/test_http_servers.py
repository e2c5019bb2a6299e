"""What the API promises, over real HTTP on each server ``--http`` offers (waitress, granian):
bearer tokens, body limits, error shapes, reads that follow every batch at once (the read cache
never serves what a newer batch changed) and single records that each get their own verdict
(group commit)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from servertrack.common import rpc
from servertrack.readmodel.answers import decode_answer
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import http_json, settled_stats
from tests.support import wait_for

pytestmark = pytest.mark.e2e
RECORD = "rec-0123456789abcdef"
READ = "read-fedcba9876543210"


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; the status, the headers (lower-case names) and the raw body."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, head, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, head, payload = err.code, err.headers, err.read()
    return status, {k.lower(): v for k, v in head.items()}, payload


def test_tokens_guard_records_and_reads(
    start_host: Callable[..., Host], tmp_path: Path, http_server: str
) -> None:
    """With both token files, records and reads need their own token (401 with a Bearer
    challenge otherwise), /health stays open, and the right tokens get 202 and 200."""
    (tmp_path / "token").write_text(RECORD + "\n")
    (tmp_path / "read-token").write_text(READ + "\n")
    host = start_host(
        "--no-agent",
        "--http",
        http_server,
        "--token-file",
        str(tmp_path / "token"),
        "--read-token-file",
        str(tmp_path / "read-token"),
    )
    body = json.dumps({"cpu": 1.5}).encode()
    url = host.api + "/servers/tok-1/loads"
    status, head, payload = request("POST", url, body, {"Content-Type": "application/json"})
    assert status == 401 and json.loads(payload)["reason"] == "unauthorized"
    assert head["www-authenticate"].startswith('Bearer realm="servertrack"')
    wrong = {"Authorization": f"Bearer {READ}", "Content-Type": "application/json"}
    status, head, _ = request("POST", url, body, wrong)
    assert status == 401 and 'error="invalid_token"' in head["www-authenticate"]
    right = {"Authorization": f"Bearer {RECORD}", "Content-Type": "application/json"}
    assert request("POST", url, body, right)[0] == 202
    assert request("GET", url)[0] == 401
    assert request("GET", url, headers={"Authorization": f"Bearer {RECORD}"})[0] == 401
    assert request("GET", host.api + "/health")[0] == 200
    wait_for(
        lambda: request("GET", url, headers={"Authorization": f"Bearer {READ}"})[0] == 200,
        5,
        "the record to show with the read token",
    )


def test_body_limits(shared_host: Callable[..., Host], http_server: str) -> None:
    """A body over 4 MiB is 413 (announced or sent), 10,001 items are 413 too_many, and both
    are JSON errors; the server stays up."""
    host = shared_host("--no-agent", "--http", http_server)
    big = b"[" + b" " * (4 * 1024 * 1024 + 10) + b"]"
    status, head, payload = request(
        "POST", host.api + "/loads", big, {"Content-Type": "application/json"}
    )
    assert status == 413 and head["content-type"].startswith("application/json")
    assert json.loads(payload)["reason"] == "too_large"
    # Announced far beyond any limit, then nothing sent: refused without waiting for the body.
    with socket.create_connection(("127.0.0.1", host.api_port), timeout=10) as sock:
        sock.sendall(
            b"POST /loads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = receive_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    items = [{"server": "a", "cpu": 1}] * 10_001
    status, got = http_json("POST", host.api + "/loads", items)
    assert (status, got["reason"]) == (413, "too_many")
    assert host.get("/health")[0] == 200


def send_chunked(port: int, path: str, chunks: list[bytes]) -> bytes:
    """POST ``chunks`` with ``Transfer-Encoding: chunked`` (a thread sends while the answer is
    read, so a server answering early is heard); the raw answer, head and body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered and closed before the whole body was sent

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return receive_answer(sock)
    finally:
        sock.close()
        sender.join(timeout=10)


def receive_answer(sock: socket.socket) -> bytes:
    """One whole raw answer: its head, and as much body as its Content-Length says (or all
    until the server closes); a head and its body may arrive in separate segments."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < answer_length(answer):
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def answer_length(answer: bytes) -> int:
    """The length a raw answer has once whole (head, blank line and Content-Length bytes)."""
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(answer) + 1


def test_chunked_bodies_are_read_and_one_over_the_limit_is_413_json(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """A small chunked body is recorded (202), and a 64 MiB chunked one is refused 413 with the
    JSON error shape and the same words on both servers, and counted once; the server stays
    up."""
    host = shared_host("--no-agent", "--http", http_server)
    too_large = host.get("/stats")[1]["api"]["rejected"].get("too_large", 0)
    answer = send_chunked(host.api_port, "/servers/chunk-1/loads", [b'{"cpu"', b": 3.5}"])
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    answer = send_chunked(host.api_port, "/loads", [b" " * (1 << 20)] * 64)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "title": "Content Too Large",
        "reason": "too_large",
        "description": "body exceeds 4194304 bytes",
    }
    assert host.get("/stats")[1]["api"]["rejected"]["too_large"] == too_large + 1
    assert host.get("/health")[0] == 200


def test_every_answer_says_nosniff(
    start_host: Callable[..., Host], tmp_path: Path, http_server: str
) -> None:
    """Every route, its errors and the cached fast path answer with
    ``X-Content-Type-Options: nosniff``."""
    (tmp_path / "read-token").write_text(READ + "\n")
    host = start_host(
        "--no-agent", "--http", http_server, "--read-token-file", str(tmp_path / "read-token")
    )
    auth = {"Authorization": f"Bearer {READ}"}
    record = json.dumps({"cpu": 1.0}).encode()
    batch = json.dumps([{"server": "sniff-2", "cpu": 2.0}]).encode()
    json_type = {"Content-Type": "application/json"}
    assert request("POST", host.api + "/servers/sniff-1/loads", record, json_type)[0] == 202
    loads = host.api + "/servers/sniff-1/loads"
    wait_for(lambda: request("GET", loads, headers=auth)[0] == 200, 5, "the record")
    cases: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
        ("GET", "/health", None, {}, 200),
        ("HEAD", "/health", None, {}, 200),
        ("GET", "/openapi.json", None, {}, 200),
        ("GET", "/", None, {}, 200),
        ("GET", "/ui/servers/sniff-1", None, {}, 200),
        ("GET", "/ui/static/style.css", None, {}, 200),
        ("GET", "/stats", None, auth, 200),
        ("GET", "/metrics", None, auth, 200),
        ("GET", "/fleet", None, auth, 200),
        ("GET", "/fleet/grid", None, auth, 200),
        ("GET", "/servers", None, auth, 200),
        ("GET", "/servers/sniff-1/loads", None, auth, 200),
        ("GET", "/servers/sniff-1/loads", None, {}, 401),
        ("GET", "/servers/nobody/loads", None, auth, 404),
        ("GET", "/fleet?sort=bogus", None, auth, 400),
        ("GET", "/no/such/path", None, auth, 404),
        ("POST", "/servers/sniff-1/loads", record, json_type, 202),
        ("POST", "/loads", batch, json_type, 202),
        ("POST", "/loads", b"{not json", json_type, 400),
        ("POST", "/servers/sniff-1/loads", b'{"cpu": 101}', json_type, 422),
        ("PUT", "/loads", batch, {**json_type, **auth}, 405),
    ]
    for method, path, body, headers, expected in cases:
        status, head, _ = request(method, host.api + path, body, headers)
        assert status == expected, (method, path, status)
        assert head.get("x-content-type-options") == "nosniff", (method, path, head)

    def served_from_cache() -> bool:
        status, head, _ = request("GET", loads, headers=auth)
        hits = request("GET", host.api + "/stats", headers=auth)[2]
        assert status == 200 and head.get("x-content-type-options") == "nosniff"
        return bool(json.loads(hits)["api"]["read_cache"].get("hit"))

    wait_for(served_from_cache, 5, "a read served by the fast path")
    with socket.create_connection(("127.0.0.1", host.api_port), timeout=10) as sock:
        sock.sendall(
            b"POST /loads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = receive_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"x-content-type-options: nosniff" in answer.lower()
    if http_server == "waitress":  # its own answer to a request it cannot parse (hyper's is bare)
        with socket.create_connection(("127.0.0.1", host.api_port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            answer = read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert (
            head.startswith(b"HTTP/1.1 400") and b"x-content-type-options: nosniff" in head.lower()
        )
        assert json.loads(body)["reason"] == "bad_request"


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (head and body may come in
    separate writes)."""
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def aggregator_view(host: Host, zmq_context: zmq.Context, name: str) -> Any:
    """The aggregator's own answer for ``name``, asked on its query socket (no API between)."""
    client = rpc.RpcClient(zmq_context, f"ipc://{host_runtime(host)}/query", 2.0)
    try:
        return decode_answer(client.call({"op": "view", "name": name})["answer"])
    finally:
        client.close()


def host_runtime(host: Host) -> str:
    argv = host.process.argv
    return argv[argv.index("--runtime-dir") + 1]


def samples_in(view: dict[str, Any]) -> int:
    """Samples over every minute bucket (the records may straddle a minute's edge)."""
    return sum(bucket["samples"] for bucket in view["minutes"])


def test_reads_follow_every_batch_and_are_the_aggregators_bytes(
    shared_host: Callable[..., Host], zmq_context: zmq.Context, http_server: str
) -> None:
    """GETs repeated while records arrive show each new record within about a batch interval
    (the cache is dropped at every batch), and the body is byte for byte what the aggregator
    builds."""
    host = shared_host("--no-agent", "--http", http_server)
    name = "cache-1.example"
    url = f"{host.api}/servers/{name}/loads"
    for count in range(1, 5):
        assert host.post(f"/servers/{name}/loads", {"cpu": float(count)})[0] == 202

        def shows(count: int = count) -> bool:
            status, _, payload = request("GET", url)
            return status == 200 and samples_in(json.loads(payload)) >= count

        # A batch a second, its application, at most 0.5 s of the previous answer, a margin.
        wait_for(shows, 3.0, f"record {count} in GET", step=0.02)
        for _ in range(20):  # repeated reads: served from the cache, still the newest
            body = json.loads(request("GET", url)[2])
            assert samples_in(body) >= count
    # Identical bytes: read through the API and straight from the aggregator in one batch.
    for _ in range(20):
        first = request("GET", url)[2]
        direct = aggregator_view(host, zmq_context, name)
        second = request("GET", url)[2]
        if first == second:  # no batch between the two reads
            assert direct.body == first
            break
    else:
        pytest.fail("every pair of reads straddled a batch")


def test_concurrent_single_records_each_get_their_own_verdict(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """Many clients posting at once, some with bad or repeated records: each request gets the
    verdict of its own record (202 accepted, 202 duplicate, 422 with its reason), never that of
    a record grouped with it, and exactly the accepted records are counted."""
    host = shared_host("--no-agent", "--http", http_server)
    before = receiver_counts(settled_stats(host))
    base_ts = time.time() - 5
    jobs: list[tuple[str, dict[str, Any], tuple[int, str | int]]] = []
    for index in range(240):
        name = f"grp-{(index // 4) % 12}"
        kind = index % 4
        if kind == 0:
            jobs.append((name, {"cpu": 101.0}, (422, "bad_cpu")))
        elif kind == 1:
            jobs.append((name, {"ram": 5.0, "ts": base_ts + 1e9}, (422, "future")))
        else:
            # kinds 2 and 3 send the same (name, ts): one is accepted, the other a duplicate
            jobs.append((name, {"cpu": 5.0, "ts": base_ts + index // 4}, (202, "either")))
    results: list[tuple[int, Any] | None] = [None] * len(jobs)
    start = threading.Barrier(24)

    def worker(offset: int) -> None:
        start.wait(timeout=10)
        for slot in range(offset, len(jobs), 24):
            name, body, _ = jobs[slot]
            results[slot] = host.post(f"/servers/{name}/loads", body)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    accepted = duplicates = 0
    for (_, _, (status, reason)), got in zip(jobs, results, strict=True):
        assert got is not None
        assert got[0] == status, got
        if status == 422:
            assert got[1]["reason"] == reason
        else:
            assert got[1]["accepted"] + got[1]["duplicates"] == 1
            accepted += got[1]["accepted"]
            duplicates += got[1]["duplicates"]
    assert (accepted, duplicates) == (60, 60)

    def counted() -> bool:
        return receiver_counts(host.get("/stats")[1])[0] - before[0] >= 60

    wait_for(counted, 5, "the receiver's counters")
    after = receiver_counts(host.get("/stats")[1])
    # the 422s were refused by the API itself: 120 received, 60 accepted, 60 duplicates
    assert [a - b for a, b in zip(after, before, strict=True)] == [60, 60, 120]


def receiver_counts(stats: dict[str, Any]) -> tuple[int, int, int]:
    """The receiver's HTTP samples accepted, duplicates, and HTTP samples received."""
    receiver = stats["receiver"]
    return (
        receiver.get("accepted", {}).get("http", 0),
        receiver.get("duplicates", 0),
        receiver.get("received", {}).get("http", 0),
    )


def test_granian_workers_do_not_outlive_a_killed_api(shared_host: Callable[..., Host]) -> None:
    """``kill -9`` of a granian API leaves no worker serving on the port: the workers get
    SIGTERM from the kernel, and the host starts a new API that answers."""
    host = shared_host("--no-agent", "--http", "granian")
    api = host.child("api")
    workers = api.children()
    assert workers
    api.kill()
    api.wait(timeout=5)
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
    wait_for(lambda: host.get("/health")[0] == 200, 30, "a new API")


def test_the_api_stops_cleanly_with_requests_in_flight(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """SIGTERM while clients keep reading: the requests in flight finish or their connections
    close, the API exits, and nothing it logs on the way out is a traceback."""
    host = shared_host("--no-agent", "--http", http_server)
    for index in range(50):
        assert host.post(f"/servers/busy-{index}/loads", {"cpu": float(index)})[0] == 202
    wait_for(lambda: host.get("/fleet")[0] == 200, 5, "the fleet page")
    stop = threading.Event()
    answered = [0]

    def keep_reading() -> None:
        paths = ["/fleet", "/fleet/grid", "/servers/busy-1/loads", "/servers?limit=50"]
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(host.api + random.choice(paths), timeout=2) as answer:
                    answer.read()
                answered[0] += 1
            except OSError:
                time.sleep(0.01)

    readers = [threading.Thread(target=keep_reading) for _ in range(16)]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: answered[0] > 200, 10, "the readers to be busy")
        api = host.child("api")
        api.terminate()
        api.wait(timeout=10)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=5)
    assert "Traceback" not in host.process.log()


def test_the_api_stops_at_once_while_it_follows_the_aggregator(
    shared_host: Callable[..., Host], http_server: str
) -> None:
    """SIGTERM to an API whose read cache follows the aggregator (a long poll in flight) stops
    it within a second: no thread of the cache or of group commit holds it up."""
    host = shared_host("--no-agent", "--http", http_server)
    assert host.post("/servers/stop-1/loads", {"cpu": 1.0})[0] == 202
    wait_for(lambda: host.get("/servers/stop-1/loads")[0] == 200, 5, "the record")
    api = host.child("api")
    began = time.monotonic()
    api.terminate()
    api.wait(timeout=10)
    assert time.monotonic() - began < 1.0
