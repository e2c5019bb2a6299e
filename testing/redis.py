"""Real redis-server processes for tests and benchmarks: one server, or a cluster, on free
127.0.0.1 ports in a scratch directory, started in the foreground (no daemonize), waited for
with deadlines and always stopped (SIGTERM, then SIGKILL if it lingers).

Each server runs with ``--save '' --appendonly no`` unless told otherwise, so nothing is written
outside its directory and no system service is involved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from servertrack.testing.hosts import STOP_DEADLINE, free_port, wait_until

READY_DEADLINE = 20.0
CLUSTER_DEADLINE = 60.0


def redis_available() -> bool:
    """redis-server and redis-cli are installed (Debian's redis-server package)."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@dataclass
class RedisServer:
    """One redis-server on 127.0.0.1:``port`` with its files in ``workdir``."""

    workdir: Path
    port: int = 0
    options: tuple[str, ...] = ("--save", "", "--appendonly", "no")
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _clients: list[redis.Redis] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def argv(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            "",
            *self.options,
            *self.extra,
        ]

    def start(self, deadline: float = READY_DEADLINE) -> RedisServer:
        """Start (or start again, on the same port and directory) and wait for PING."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(self._ready, deadline, f"redis-server on port {self.port}")
        except TimeoutError:
            self.kill()
            raise
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited early:\n{self.log()[-2000:]}")
        try:
            return bool(self.client(timeout=0.5).ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A new client of this server (closed by :meth:`stop`)."""
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._clients.append(client)
        return client

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """SIGTERM and wait; SIGKILL (and TimeoutError) if it does not stop in time."""
        self._close_clients()
        if not self.running:
            return
        assert self.process is not None
        self.resume()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"redis-server on port {self.port} ignored SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (AOF tests restart it afterwards)."""
        self._close_clients()
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)

    def reset(self) -> RedisServer:
        """Make it as new for the next test: running and answering, no keys, no function
        library, no memory limit, and no client of the previous test left open."""
        self._close_clients()
        if not self.running:
            self.start()
        self.resume()
        client = self.client()
        client.flushall()
        client.function_flush()
        client.config_set("maxmemory", 0)
        self._close_clients()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def info(self, section: str) -> dict[str, Any]:
        return dict(self.client().info(section))


@dataclass
class RedisClusterUnderTest:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, every node a
    :class:`RedisServer` on loopback (cluster bus on its own free port)."""

    workdir: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 2000
    extra: tuple[str, ...] = ()
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def start(self, deadline: float = CLUSTER_DEADLINE) -> RedisClusterUnderTest:
        try:
            for k in range(self.masters * (1 + self.replicas)):
                node = RedisServer(
                    self.workdir / f"node{k}",
                    extra=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                        "--cluster-port",
                        str(free_port()),
                        *self.extra,
                    ),
                )
                self.nodes.append(node.start())
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=deadline,
            )
            wait_until(self.settled, deadline, "the cluster to settle", step=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def settled(self) -> bool:
        """Every running node sees state ok and the same full slot map, and every replica's
        link to its master is up."""
        maps = []
        for node in self.running_nodes():
            client = node.client(timeout=1.0)
            info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                return False
            maps.append(self._owners(client))
            replication = client.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return bool(maps) and all(owners == maps[0] for owners in maps)

    @staticmethod
    def _owners(client: redis.Redis) -> list[tuple[int, int, int]]:
        raw = client.execute_command("CLUSTER", "SLOTS")
        if isinstance(raw, dict):
            return sorted((s, e, int(i["primary"][1])) for (s, e), i in raw.items())
        return sorted((int(e[0]), int(e[1]), int(e[2][1])) for e in raw)

    def running_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    def role(self, node: RedisServer) -> str:
        return str(node.client(timeout=1.0).info("replication")["role"])

    def master_nodes(self) -> list[RedisServer]:
        return [node for node in self.running_nodes() if self.role(node) == "master"]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        out = []
        for node in self.running_nodes():
            replication = node.client(timeout=1.0).info("replication")
            if (
                replication.get("role") == "slave"
                and int(replication["master_port"]) == master.port
            ):
                out.append(node)
        return out

    def stop(self) -> None:
        problems = []
        for node in self.nodes:
            try:
                node.stop()
            except TimeoutError as err:
                problems.append(str(err))
        if problems:
            raise TimeoutError("; ".join(problems))
