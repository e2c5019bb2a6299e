"""The agent's cost on a node, beside the bare floor: a Python process that only imports pyzmq,
psutil and msgpack and opens a PUB socket.

- resident memory of each, a few seconds after start;
- CPU of the agent at a one-second interval over ``seconds`` (user + system time / wall time);
- how soon the first sample leaves: from spawning ``servertrack-agent`` to the sample arriving
  at a SUB socket already bound (the median of several starts).

Run alone: ``python -m bench.agent_bench [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

FLOOR = (
    "import sys, time, zmq, psutil, msgpack\n"
    "socket = zmq.Context().socket(zmq.PUB)\n"
    "socket.connect(sys.argv[1])\n"
    "time.sleep(float(sys.argv[2]))\n"
)
STARTS = 7


def agent_argv(endpoint: str, interval: float = 1.0) -> list[str]:
    script = Path(sys.executable).with_name("servertrack-agent")
    return [str(script), "--connect", endpoint, "--interval", str(interval), "--name", "bench"]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def first_sample_seconds(endpoint: str, sub: zmq.Socket) -> float:
    """Spawn the agent; seconds until its first sample arrives at ``sub``."""
    began = time.monotonic()
    process = subprocess.Popen(agent_argv(endpoint), stderr=subprocess.DEVNULL)
    try:
        if not sub.poll(10_000):
            raise RuntimeError("the agent sent nothing within 10 s")
        arrived = time.monotonic() - began
        while sub.poll(0):
            sub.recv_multipart()
        return arrived
    finally:
        process.terminate()
        process.wait(timeout=10)
        while sub.poll(200):  # anything sent at stop
            sub.recv_multipart()


def measure(seconds: float = 60.0) -> dict[str, Any]:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    with tempfile.TemporaryDirectory(prefix="servertrack-agent-bench-") as tmp:
        endpoint = f"ipc://{tmp}/ingest"
        sub.bind(endpoint)
        try:
            starts = [first_sample_seconds(endpoint, sub) for _ in range(STARTS)]
            floor = subprocess.Popen([sys.executable, "-c", FLOOR, endpoint, str(seconds + 10)])
            agent = subprocess.Popen(agent_argv(endpoint), stderr=subprocess.DEVNULL)
            try:
                time.sleep(3)
                floor_rss = psutil.Process(floor.pid).memory_info().rss
                agent_process = psutil.Process(agent.pid)
                agent_rss = agent_process.memory_info().rss
                cpu_before, wall_before = cpu_seconds(agent_process), time.monotonic()
                received = 0
                end = wall_before + seconds
                while time.monotonic() < end:
                    if sub.poll(200):
                        sub.recv_multipart()
                        received += 1
                cpu = cpu_seconds(agent_process) - cpu_before
                wall = time.monotonic() - wall_before
                agent_rss_end = agent_process.memory_info().rss
            finally:
                for process in (agent, floor):
                    process.terminate()
                    process.wait(timeout=10)
        finally:
            sub.close()
            context.destroy(linger=0)
    return {
        "floor_rss_mb": round(floor_rss / 2**20, 2),
        "agent_rss_mb": round(agent_rss / 2**20, 2),
        "agent_rss_mb_at_end": round(agent_rss_end / 2**20, 2),
        "agent_cpu_percent": round(100 * cpu / wall, 3),
        "cpu_window_s": round(wall, 1),
        "samples_received": received,
        "first_sample_s_median": round(statistics.median(starts), 3),
        "first_sample_s_max": round(max(starts), 3),
        "first_sample_s_all": [round(value, 3) for value in starts],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    print(json.dumps(measure(parser.parse_args(argv).seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
