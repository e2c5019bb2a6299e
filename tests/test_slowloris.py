"""No client can starve the API: trickled requests and idle keep-alive connections are closed after
bounded times, and with hundreds of them open a new client is still answered within a second."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    free_port,
    http_json,
    servertrack_argv,
    wait_until,
)

pytestmark = pytest.mark.e2e
ATTACKERS = 300


def api_beside(host: HostUnderTest, workdir: Path, *flags: str) -> tuple[ChildProcess, str]:
    """A second ``servertrack api`` over ``host``'s receiver and aggregator, with ``flags``."""
    runtime = host.runtime_dir
    port = free_port()
    api = ChildProcess(
        servertrack_argv(
            "api",
            "--port",
            str(port),
            "--receiver-control",
            f"ipc://{runtime}/receiver-control",
            "--aggregator-query",
            f"ipc://{runtime}/query",
            *flags,
        ),
        workdir / "api.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_json("GET", base + "/health")[0] == 200, 20, "the api")
    return api, base


def connect(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(sock)
    return sockets


@pytest.fixture
def trickle() -> Iterator[Callable[[list[socket.socket], float], None]]:
    """Sends one header byte to each socket every ``every`` seconds, in the background."""
    stop = threading.Event()
    threads = []

    def start(sockets: list[socket.socket], every: float) -> None:
        def run() -> None:
            while not stop.wait(every):
                for sock in sockets:
                    try:
                        sock.send(b"x")
                    except OSError:
                        continue

        for sock in sockets:
            sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), waiting up to ``deadline`` s."""
    sock.settimeout(deadline)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def health_time(base: str) -> float:
    began = time.monotonic()
    status, _ = http_json("GET", base + "/health", timeout=10)
    assert status == 200
    return time.monotonic() - began


def test_a_trickled_request_is_cut_after_the_request_timeout(
    shared_host: Callable[..., HostUnderTest], tmp_path: Path, trickle: Callable, http_server: str
) -> None:
    """A header trickled one byte every 0.5 s keeps the connection busy, but the request must
    arrive whole within --request-timeout: the server closes it then (waitress counts it)."""
    host = shared_host("--no-agent")
    api, base = api_beside(host, tmp_path, "--http", http_server, "--request-timeout", "2")
    try:
        port = int(base.rsplit(":", 1)[1])
        (sock,) = connect(port, 1)
        trickle([sock], 0.5)
        began = time.monotonic()
        assert closed_by_server(sock, 10)
        assert time.monotonic() - began < 6
        sock.close()
        if http_server == "waitress":  # hyper closes it without telling the app
            stats = http_json("GET", base + "/stats")[1]
            assert stats["api"]["connections_closed"]["slow_request"] == 1
    finally:
        api.stop()


def slow_and_idle_clients_starve_nobody(
    host: HostUnderTest,
    workdir: Path,
    trickle: Callable,
    http_server: str,
    attackers: int,
    timeout: float,
) -> None:
    """``attackers`` trickling and ``attackers`` idle keep-alive connections to an API with
    ``timeout`` s request and idle timeouts: a new client's /health is answered within 1 s
    every time, and both kinds are closed after their timeouts."""
    api, base = api_beside(
        host, workdir, "--http", http_server,
        "--request-timeout", str(timeout), "--idle-timeout", str(timeout),
    )  # fmt: skip
    port = int(base.rsplit(":", 1)[1])
    slow = idle = []
    try:
        slow = connect(port, attackers)
        trickle(slow, timeout / 2)
        idle = connect(port, attackers)
        for sock in idle:  # one complete request each, then nothing: idle keep-alive
            sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        times = []
        for _ in range(8):
            times.append(health_time(base))
            time.sleep(timeout / 24)  # eight probes over a third of the timeout
        assert max(times) < 1.0, times
        began = time.monotonic()
        assert all(closed_by_server(sock, timeout + 9) for sock in slow + idle)
        assert time.monotonic() - began < timeout + 9
        if http_server == "waitress":
            closed = http_json("GET", base + "/stats")[1]["api"]["connections_closed"]
            assert closed["slow_request"] >= attackers and closed["idle"] >= attackers
    finally:
        for sock in slow + idle:
            sock.close()
        api.stop()


def test_slow_and_idle_clients_starve_nobody(
    shared_host: Callable[..., HostUnderTest], tmp_path: Path, trickle: Callable, http_server: str
) -> None:
    """30 trickling and 30 idle keep-alive connections, 3 s timeouts: a new client's /health
    is answered within 1 s every time, and both kinds are closed after their timeouts."""
    host = shared_host("--no-agent")
    slow_and_idle_clients_starve_nobody(host, tmp_path, trickle, http_server, 30, 3.0)


@pytest.mark.faults
def test_hundreds_of_slow_and_idle_clients_starve_nobody(
    start_host: Callable[..., HostUnderTest], tmp_path: Path, trickle: Callable, http_server: str
) -> None:
    """The same with 300 trickling and 300 idle keep-alive connections and 6 s timeouts."""
    host = start_host("--no-agent")
    slow_and_idle_clients_starve_nobody(host, tmp_path, trickle, http_server, ATTACKERS, 6.0)


SLOW_BODIES = 64
TOKEN = "rec-slow-bodies-0123456789"
RECORD_PATH = "/servers/fast-1/loads"
BODY_HEAD = (
    b"POST /servers/slow-body/loads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000000\r\n\r\n{"
)


def answered_within(url: str, limit: float) -> bool:
    """A new connection's GET of ``url`` is answered 200 within ``limit`` seconds."""
    began = time.monotonic()
    try:
        status, _ = http_json("GET", url, timeout=limit)
    except OSError:
        return False
    return status == 200 and time.monotonic() - began < limit


def recorded_within(url: str, token: str, limit: float) -> bool:
    """A new connection's POST of one record with ``token`` is answered 202 within ``limit``."""
    request = urllib.request.Request(
        url,
        data=b'{"cpu": 7.5}',
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=limit) as answer:
            status = answer.status
    except OSError:
        return False
    return status == 202 and time.monotonic() - began < limit


def slow_bodies_attack(
    base: str, count: int, seconds: float, record_token: str | None = None
) -> list[str]:
    """``count`` connections send a POST head announcing a 1 MB body, then one byte each every
    2 s for ``seconds``; meanwhile /health and a cached read are asked again and again (and a
    record posted with ``record_token``, when given), each on a new connection with a 1 s
    timeout. Returns the probes that failed."""
    port = int(base.rsplit(":", 1)[1])
    sockets = connect(port, count)
    failed = []
    try:
        for sock in sockets:
            sock.sendall(BODY_HEAD)
        end = time.monotonic() + seconds
        next_byte = time.monotonic() + 2.0
        while time.monotonic() < end:
            for path in ("/health", "/servers/fast-1/loads"):
                if not answered_within(base + path, 1.0):
                    failed.append(f"{path} at {seconds - (end - time.monotonic()):.1f} s")
            if record_token and not recorded_within(base + RECORD_PATH, record_token, 1.0):
                failed.append(f"record at {seconds - (end - time.monotonic()):.1f} s")
            if time.monotonic() >= next_byte:
                next_byte += 2.0
                for sock in sockets:
                    try:
                        sock.send(b" ")
                    except OSError:
                        continue  # refused at once and closed: the attacker is gone
            time.sleep(0.2)
    finally:
        for sock in sockets:
            sock.close()
    return failed


def test_slowly_sent_bodies_starve_nobody(
    shared_host: Callable[..., HostUnderTest], http_server: str
) -> None:
    """64 clients announce a 1 MB body and send it one byte every 2 s: every /health and every
    cached read of a new client is answered within 1 s meanwhile (on granian the bodies beyond
    the body slots are refused at once, and counted)."""
    host = shared_host("--no-agent", "--http", http_server)
    refused = host.get("/stats")[1]["api"]["connections_closed"].get("body_slots_full", 0)
    assert host.post("/servers/fast-1/loads", {"cpu": 5.0})[0] == 202
    wait_until(lambda: host.get("/servers/fast-1/loads")[0] == 200, 5, "the record")
    failed = slow_bodies_attack(host.api, SLOW_BODIES, 6.0)
    assert failed == [], failed
    if http_server == "granian":
        closed = host.get("/stats")[1]["api"]["connections_closed"]
        assert closed["body_slots_full"] - refused >= SLOW_BODIES // 2
    ok = wait_until(lambda: host.post("/servers/fast-1/loads", {"cpu": 6.0})[0] == 202, 5, "202")
    assert ok


def test_with_a_record_token_slow_bodies_without_it_hold_no_body_slot(
    start_host: Callable[..., HostUnderTest], tmp_path: Path, http_server: str
) -> None:
    """With --token-file, 64 clients without the token trickling bodies block no record: a
    record with the token is answered 202 within 1 s throughout (granian refuses a POST without
    the token before reading its body)."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    host = start_host("--no-agent", "--http", http_server, "--token-file", str(tmp_path / "token"))
    assert recorded_within(host.api + RECORD_PATH, TOKEN, 5.0)
    wait_until(lambda: host.get("/servers/fast-1/loads")[0] == 200, 5, "the record")
    failed = slow_bodies_attack(host.api, SLOW_BODIES, 6.0, record_token=TOKEN)
    assert failed == [], failed


@pytest.mark.faults
def test_hundreds_of_slowly_sent_bodies_for_half_a_minute_starve_nobody(
    start_host: Callable[..., HostUnderTest], http_server: str
) -> None:
    """The same with 300 trickled bodies for 30 s (past waitress' --request-timeout, which cuts
    them, while granian refuses those beyond its body slots)."""
    host = start_host("--no-agent", "--http", http_server)
    assert host.post("/servers/fast-1/loads", {"cpu": 5.0})[0] == 202
    wait_until(lambda: host.get("/servers/fast-1/loads")[0] == 200, 5, "the record")
    failed = slow_bodies_attack(host.api, ATTACKERS, 30.0)
    assert failed == [], failed


def test_at_the_connection_limit_the_longest_idle_makes_room(
    shared_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    """With --connection-limit 50 and 80 idle connections opened, a new client is answered at
    once: the longest-idle connections were closed to let newcomers in."""
    host = shared_host("--no-agent")
    api, base = api_beside(host, tmp_path, "--connection-limit", "50", "--idle-timeout", "60")
    port = int(base.rsplit(":", 1)[1])
    idle = []
    try:
        idle = connect(port, 80)

        def evicted() -> int:
            closed = http_json("GET", base + "/stats")[1]["api"]["connections_closed"]
            return int(closed.get("evicted", 0))

        wait_until(lambda: evicted() >= 30, 10, "the longest-idle connections closed")
        assert max(health_time(base) for _ in range(5)) < 1.0
        assert closed_by_server(idle[0], 5)  # the oldest went first
    finally:
        for sock in idle:
            sock.close()
        api.stop()
