"""The agent runs on every node: starting it loads nothing of the server side.

``servertrack agent`` and ``servertrack-agent`` run for real in a subprocess with Python's import
log on (``PYTHONPROFILEIMPORTTIME``); every module actually loaded is checked: the agent's own,
light common modules, the standard library, and pyzmq, psutil and msgpack. Nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from servertrack.testing.hosts import servertrack_argv

pytestmark = pytest.mark.e2e
ALLOWED_THIRD_PARTY = {"zmq", "psutil", "msgpack"}
ALLOWED_OWN = ("servertrack.agent", "servertrack.common")
NEVER = {"numpy", "falcon", "waitress", "prometheus_client", "sortedcontainers", "redis"}


def loaded_modules(argv: list[str], endpoint: str) -> set[str]:
    """Run the agent until its first sample arrives, stop it, and return what it imported."""
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(endpoint)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    process = subprocess.Popen(
        [*argv, "--connect", endpoint, "--name", "footprint.example"],
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert sub.poll(10_000), "the agent sent nothing"
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=10)
        sub.close()
        context.destroy(linger=0)
    assert process.returncode == 0, log[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line and "imported package" not in line
    }


def interpreter_baseline() -> set[str]:
    """What this interpreter loads before any program (site, .pth hooks, sitecustomize)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    log = subprocess.run(
        [sys.executable, "-c", "pass"], capture_output=True, text=True, env=env, timeout=30
    ).stderr
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if "|" in line}


def check(modules: set[str]) -> None:
    modules = modules - interpreter_baseline()
    top = {name.split(".")[0] for name in modules}
    assert not top & NEVER, sorted(top & NEVER)
    foreign = top - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY - {"servertrack"}
    # The log also lists failed attempts (the standard library probes Jython's ``org``).
    foreign = {name for name in foreign if importlib.util.find_spec(name) is not None}
    assert not foreign, sorted(foreign)
    own = sorted(n for n in modules if n.startswith("servertrack.") and n.count(".") >= 1)
    entry = ("servertrack.host", "servertrack.host.cli")  # the `servertrack` command itself
    wrong = [n for n in own if not n.startswith(ALLOWED_OWN) and n not in entry]
    assert not wrong, wrong
    assert "servertrack.agent.publisher" in modules and "zmq" in top and "psutil" in top


def test_servertrack_agent_loads_only_the_agent(tmp_path: Path) -> None:
    check(loaded_modules(servertrack_argv("agent"), f"ipc://{tmp_path}/a"))


def test_the_servertrack_agent_script_loads_only_the_agent(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("servertrack-agent")
    path = str(script) if script.exists() else shutil.which("servertrack-agent")
    assert path, "servertrack-agent is not installed beside this interpreter"
    check(loaded_modules([path], f"ipc://{tmp_path}/b"))
