"""A real Alertmanager for tests (Debian's ``prometheus-alertmanager``), and a small real HTTP
server that records what is POSTed to it: the webhook Alertmanager notifies, or an endpoint with
scripted answers for the delivery client.

The Alertmanager runs on a free loopback port with its storage in the test's directory,
clustering off (``--cluster.listen-address=``), and a config whose one webhook receiver points at
a :class:`Recorder`, with short waits (group_wait 0s, group_interval 1s) so that tests wait
seconds, not minutes. It is always stopped (SIGTERM, then SIGKILL of its process group).
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from servertrack.testing.hosts import ChildProcess, free_port, wait_until

READY_DEADLINE = 30.0
HOLD_LIMIT = 30.0
"""A held request is answered after this long at most, so no test can hang on one."""


class Recorder:
    """An HTTP server on 127.0.0.1 that records the JSON body of every POST and answers with
    the next status of ``statuses`` (200 once they are used up). While :attr:`hold` is clear a
    request waits (up to 30 s) before it is answered."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.statuses = list(statuses)
        self.bodies: list[Any] = []
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with recorder.lock:
                    recorder.bodies.append(body)
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                recorder.hold.wait(HOLD_LIMIT)
                payload = b"{}" if status == 200 else b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Recorder:
        self.thread.start()
        return self

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def received(self) -> list[Any]:
        with self.lock:
            return list(self.bodies)

    def wait_for(self, predicate: Callable[[list[Any]], Any], what: str, deadline: float) -> Any:
        """Wait until ``predicate(bodies)`` is truthy; fail the test after ``deadline`` s."""
        try:
            return wait_until(lambda: predicate(self.received()), deadline, what, step=0.05)
        except TimeoutError as err:
            pytest.fail(f"{err}; received: {self.received()}")


def notified(bodies: list[Any]) -> list[tuple[str, str, str]]:
    """(status, alertname, server) of each alert of each webhook notification, in order."""
    return [
        (alert["status"], alert["labels"]["alertname"], alert["labels"]["server"])
        for body in bodies
        for alert in body["alerts"]
    ]


@dataclass
class Alertmanager:
    """``prometheus-alertmanager`` on a free loopback port, notifying ``webhook_url``."""

    workdir: Path
    webhook_url: str
    port: int = field(default_factory=free_port)
    process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        return json.dumps(  # YAML is a superset of JSON
            {
                "route": {
                    "receiver": "webhook",
                    "group_by": ["alertname", "server"],
                    "group_wait": "0s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "webhook",
                        "webhook_configs": [{"url": self.webhook_url, "send_resolved": True}],
                    }
                ],
            }
        )

    def argv(self) -> list[str]:
        binary = shutil.which("prometheus-alertmanager")
        if binary is None:
            pytest.fail("prometheus-alertmanager not found (make test installs it)")
        config = self.workdir / "alertmanager.yml"
        config.write_text(self.config())
        return [
            binary,
            f"--config.file={config}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def start(self) -> Alertmanager:
        """Start (or start again, on the same port and storage) and wait until it is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = ChildProcess(self.argv(), self.workdir / "alertmanager.log").start()
        try:
            wait_until(self._ready, READY_DEADLINE, f"Alertmanager on port {self.port}")
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.process is not None
        if self.process.process.poll() is not None:
            raise RuntimeError(f"Alertmanager exited:\n{self.process.log()[-2000:]}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
            return response.status == 200

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metric(self, name: str) -> float:
        """The sum of the samples of metric family ``name`` in its /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def flushes(self) -> float:
        """Notification log queries: one per flush of an alert group, notified or not."""
        return self.metric("alertmanager_nflog_queries_total")

    def wait_flushes(self, count: int, deadline: float = 15.0) -> None:
        """Wait until Alertmanager has flushed its alert groups ``count`` more times from now
        (all groups together: once a second each)."""
        target = self.flushes() + count
        try:
            wait_until(lambda: self.flushes() >= target, deadline, f"{count} group flushes")
        except TimeoutError as err:
            pytest.fail(str(err))
