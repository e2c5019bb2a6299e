"""The API's read path owns every thread it runs: nothing starts on first use, ``start`` starts
them all, ``close`` stops them all (twice is fine); and one admission rule serves the fast path
and the Falcon app alike."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from falcon import testing

from servertrack.api.admission import Admission
from servertrack.api.assembly import assemble
from servertrack.api.daemons_backend import DaemonsBackend
from servertrack.api.generation import Current
from servertrack.api.read_path import ReadPath
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample
from tests.support import Clock, InProcessBackend

NOW = 1_800_000_030.0
PATH_THREADS = {"generation-watch", "group-commit", "read-cache-refresh"}


def running() -> set[str]:
    return {thread.name for thread in threading.enumerate()} & PATH_THREADS


def test_nothing_runs_before_start_and_nothing_after_close(tmp_path: Path) -> None:
    """Reads and records before ``start`` start no thread (they answer as if the daemons were
    down); ``start`` starts the generation watch, the group commit and the cache's refresher;
    ``close`` stops them all and is safe to call again."""
    context = zmq.Context()
    reads = ReadPath(
        DaemonsBackend(f"ipc://{tmp_path}/control", f"ipc://{tmp_path}/query", 0.2, context)
    )
    try:
        assert reads.backend.generation() is None
        assert reads.peek("web") is None
        with pytest.raises(Unavailable):
            reads.view("web")  # nobody answers
        with pytest.raises(Unavailable, match="not started"):
            reads.backend.record([Sample("web", NOW, 1.0, None)])
        assert running() == set()
        reads.start()
        assert running() == PATH_THREADS
    finally:
        reads.close()
        reads.close()
        context.destroy(linger=0)
    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running() == set()


class Announced(InProcessBackend):
    """The in-process backend whose generation is always heard, so the cache may serve."""

    def generation(self) -> Current | None:
        return Current(self.aggregator.generation, 0.0, None)


@pytest.mark.parametrize(
    ("headers", "extras"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": "Basic read-token"}, {}),
        ({"Authorization": "Bearer read-token"}, {}),
        ({"Authorization": "Bearer read-token"}, {"servertrack.arrived": NOW - 10}),
        ({"Authorization": "Bearer read-token"}, {"waitress.client_disconnected": lambda: True}),
    ],
)
def test_the_fast_path_and_the_app_admit_alike(
    headers: dict[str, str], extras: dict[str, object]
) -> None:
    """Whatever the token, the wait or the client, a read whose answer the cache holds gets the
    same status and body from the fast path as from the Falcon app behind it: one admission
    rule decides for both."""
    clock = Clock(NOW)
    backend = Announced(clock)
    backend.record([Sample("web", NOW - 1, 3.0, None)])
    fast, reads, _ = assemble(backend, Admission(None, "read-token", 2, wall=clock), clock)
    auth = {"Authorization": "Bearer read-token"}
    assert testing.simulate_get(fast.app, "/servers/web/loads", headers=auth).status_code == 200
    assert reads.peek("web") is not None  # the fast path could answer
    through_fast = testing.simulate_get(fast, "/servers/web/loads", headers=headers, extras=extras)
    through_app = testing.simulate_get(
        fast.app, "/servers/web/loads", headers=headers, extras=extras
    )
    assert (through_fast.status, through_fast.content) == (through_app.status, through_app.content)


def test_memory_mode_never_imports_redis() -> None:
    """Every daemon of a memory-mode host loads without redis-py: it is for the Redis store."""
    code = (
        "import sys\n"
        "import servertrack.api.main, servertrack.aggregator.main, servertrack.receiver.main\n"
        "import servertrack.host.supervisor\n"
        "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if 'redis' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
