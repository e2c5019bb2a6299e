"""Where a daemon spends its time under load: py-spy samples of running processes, summed by
function, for the bench's results file (the evidence behind a figure that misses its target).

``sampled(pids, seconds)`` runs one ``py-spy record --format raw`` per process while the caller
drives load, and gives back, per process, the share of samples in each function's own code (the
leaf frame) and under each of the daemon's own functions. Samples of threads waiting for work or
a peer (``WAITING``) are counted apart, so the shares are of the time spent working.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RATE = 250
TOP = 10
WAITING = (
    "Condition.wait",
    "Poller.poll",
    "Socket.poll",
    "GroupCommit.record",
    "handler_thread",
    "poll2",
    "_main",
)
"""Leaf frames of a thread that waits (for work, a peer or the network) rather than works."""


def py_spy() -> str | None:
    """The py-spy program (the bench extra installs it), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarize(raw: str, top: int = TOP) -> dict[str, Any]:
    """Leaf-frame and inclusive shares from py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        if any(frames[-1].startswith(wait) for wait in WAITING):
            waiting += samples
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            if any(part in frame for part in ("servertrack", "/api/", "aggregator/", "receiver/")):
                under[frame] += samples
    if not total:
        return {"samples": 0, "waiting_samples": waiting}

    def share(counter: Counter[str]) -> list[str]:
        return [f"{count / total:.1%} {frame}" for frame, count in counter.most_common(top)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "self": share(own),
        "inclusive_own_code": share(under),
    }


@contextlib.contextmanager
def sampled(pids: dict[str, int], seconds: float) -> Iterator[dict[str, Any]]:
    """Sample ``pids`` for ``seconds`` while the body runs; the dict is filled on exit."""
    found: dict[str, Any] = {}
    program = py_spy()
    if program is None:
        found["error"] = "py-spy is not installed (pip install servertrack[bench])"
        yield found
        return
    with tempfile.TemporaryDirectory(prefix="bench-spy-") as tmp:
        spies = {
            name: subprocess.Popen(
                [
                    program,
                    "record",
                    "--rate",
                    str(RATE),
                    "--duration",
                    str(max(1, round(seconds))),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(Path(tmp) / f"{name}.txt"),
                    "--pid",
                    str(pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, pid in pids.items()
        }
        try:
            yield found
        finally:
            for name, spy in spies.items():
                try:
                    _, err = spy.communicate(timeout=seconds + 60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(timeout=10)
                    found[name] = {"error": "py-spy did not finish"}
                    continue
                out = Path(tmp) / f"{name}.txt"
                if spy.returncode != 0 or not out.exists():
                    found[name] = {"error": f"py-spy exit {spy.returncode}: {err[-300:]}"}
                else:
                    found[name] = summarize(out.read_text())
