"""``servertrack run``: the whole monitoring host as supervised child processes.

The receiver, the aggregator and the API (plus a local agent) each run in their own process and
talk over ipc sockets in a private runtime directory, so two hosts on different ports can run side
by side. A child that dies is started again, with a growing pause if it keeps dying.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from servertrack.agent.probe import node_name
from servertrack.api.exposure import FLAG as BEHIND_PROXY
from servertrack.api.exposure import granian_exposure_error
from servertrack.common.config import (
    add_option,
    add_switch,
    optional_port,
    port,
    positive_float,
    positive_int,
    setup_logging,
)
from servertrack.common.curve_keys import load_pair
from servertrack.common.lifecycle import (
    EXIT_CONFIG,
    LockHeld,
    die_with_parent,
    fatal,
    hold_lock,
    stop_on_signals,
)
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.receiver import curve
from servertrack.receiver.graphite import RuleError, load_rules
from servertrack.store.options import MEMORY, add_store_options, store_password

log = logging.getLogger("servertrack.host")
STOP_GRACE = 10.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 10.0
"""A child that ran this many seconds counts as healthy again: its restart pause is reset."""


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 0.5
    restart_at: float = 0.0
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env={**os.environ, **self.env}, preexec_fn=die_with_parent
        )
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack run", description=__doc__)
    add_option(parser, "--api-port", 8080, "HTTP API port", port)
    add_option(parser, "--ingest-port", 5556, "port the agents connect to", port)
    add_option(parser, "--bind", "127.0.0.1", "address the API and the ingest socket listen on")
    add_option(
        parser,
        "--graphite-port",
        None,
        "receiver: take Graphite plaintext (collectd, netdata, Diamond) on this TCP port of "
        "the --bind address ('' or unset: off)",
        optional_port,
    )
    add_option(
        parser,
        "--graphite-map",
        None,
        "receiver: file of rules mapping Graphite paths to a server's cpu or ram",
    )
    add_switch(parser, "--no-agent", "do not start a local agent")
    add_switch(parser, "--accept-pickle", "receiver: also accept the legacy pickle.gz format")
    add_option(
        parser, "--retention", 300.0, "receiver: seconds of batches kept for replay", positive_float
    )
    add_option(
        parser,
        "--data-dir",
        None,
        "aggregator: where its snapshot lives (default ~/.local/state/servertrack/port-<api "
        "port>; '' for no snapshots)",
    )
    add_option(
        parser, "--snapshot-interval", 30.0, "aggregator: seconds between snapshots", positive_float
    )
    add_option(parser, "--threads", 64, "api: worker threads (per granian worker)", positive_int)
    add_option(
        parser,
        "--http",
        "waitress",
        "api: HTTP server, waitress or granian (faster; pip install servertrack[fast])",
        choices=["waitress", "granian"],
    )
    add_option(
        parser, "--workers", 1, "api: granian worker processes (waitress has one)", positive_int
    )
    add_switch(
        parser,
        BEHIND_PROXY,
        "api: a proxy that buffers request bodies is in front, so --http granian may listen "
        "beyond loopback",
    )
    add_option(
        parser,
        "--max-servers",
        DEFAULT_MAX_SERVERS,
        "receiver and aggregator: server names tracked at most (new ones beyond are refused)",
        positive_int,
    )
    add_option(
        parser, "--token-file", None, "api: file holding the bearer token POST requests need"
    )
    add_option(
        parser,
        "--read-token-file",
        None,
        "api: file holding the bearer token GET requests need (not /health, /openapi.json)",
    )
    add_option(parser, "--agent-interval", 1.0, "agent: seconds between samples", positive_float)
    add_option(parser, "--agent-name", None, "agent: server name (default: this host's FQDN)")
    add_option(
        parser, "--agent-format", "msgpack", "agent: wire format", choices=["msgpack", "pickle.gz"]
    )
    add_option(
        parser,
        "--curve-secret",
        None,
        "receiver: CURVE secret key file; with --authorized-keys, only listed agents get in",
    )
    add_option(
        parser, "--authorized-keys", None, "receiver: directory of the agents' public key files"
    )
    add_option(
        parser,
        "--agent-curve-secret",
        None,
        "agent: its CURVE secret key file (needed with --curve-secret unless --no-agent)",
    )
    add_store_options(parser, writer=True)
    add_option(
        parser,
        "--runtime-dir",
        None,
        "directory for internal sockets (default: a new "
        "private temporary directory, removed at exit)",
    )
    return parser


def data_dir_of(args: argparse.Namespace) -> str | None:
    """The data directory (one per API port by default, so hosts side by side keep theirs
    apart), or None for memory only."""
    if args.data_dir == "":
        return None
    if args.data_dir is None:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(state, "servertrack", f"port-{args.api_port}")
    return os.path.abspath(args.data_dir)


def snapshot_args(args: argparse.Namespace) -> list[str]:
    """The aggregator's snapshot flags: a file under the data directory."""
    data_dir = data_dir_of(args)
    if data_dir is None:
        return []
    return [
        "--snapshot",
        os.path.join(data_dir, "aggregator.npz"),
        "--snapshot-interval",
        str(args.snapshot_interval),
    ]


def store_args(args: argparse.Namespace, writer: bool) -> list[str]:
    """The ``--store`` flags of the aggregator (``writer``) or the API; none for memory."""
    if args.store == MEMORY:
        return []
    flags = ["--store", args.store, "--store-timeout", str(args.store_timeout)]
    if args.store_password_file:
        flags += ["--store-password-file", os.path.abspath(args.store_password_file)]
    if writer:
        flags += ["--store-flush", str(args.store_flush)]
        flags += ["--store-wait-replicas", str(args.store_wait_replicas)]
        flags += ["--store-hold", str(args.store_hold)]
    return flags


def plan(args: argparse.Namespace, runtime_dir: str) -> list[Child]:
    """The children to run, in start order."""
    python = [sys.executable, "-m"]
    control = f"ipc://{runtime_dir}/receiver-control"
    batches = f"ipc://{runtime_dir}/batches"
    query = f"ipc://{runtime_dir}/query"
    receiver = [
        *python,
        "servertrack.receiver",
        "--bind",
        f"tcp://{args.bind}:{args.ingest_port}",
        "--control",
        control,
        "--aggregator",
        batches,
        "--aggregator-query",
        query,
        "--retention",
        str(args.retention),
        "--max-servers",
        str(args.max_servers),
    ]
    if args.accept_pickle:
        receiver.append("--accept-pickle")
    if args.graphite_port is not None:
        host = f"[{args.bind}]" if ":" in args.bind else args.bind
        receiver += ["--graphite", f"tcp://{host}:{args.graphite_port}"]
    if args.graphite_map:
        try:  # refuse here rather than restart a receiver that cannot start, forever
            load_rules(args.graphite_map)
        except RuleError as err:
            fatal(f"servertrack run: --graphite-map: {err}")
        receiver += ["--graphite-map", os.path.abspath(args.graphite_map)]
    agent_curve = []
    try:  # refuse here rather than restart a receiver or an agent that cannot start, forever
        if curve.check_flags(args.curve_secret, args.authorized_keys):
            curve.check_config(args.curve_secret, args.authorized_keys)
            receiver += ["--curve-secret", os.path.abspath(args.curve_secret)]
            receiver += ["--authorized-keys", os.path.abspath(args.authorized_keys)]
            if not args.no_agent:
                if not args.agent_curve_secret:
                    raise curve.CurveConfigError(
                        "with --curve-secret the local agent needs --agent-curve-secret "
                        "(or use --no-agent)"
                    )
                # The agent gets the receiver's public key only, written next to the sockets.
                server_key = os.path.join(runtime_dir, "receiver.key")
                curve.write_public_key(args.curve_secret, server_key)
                agent_public = load_pair(args.agent_curve_secret)[0]
                if agent_public not in curve.AuthorizedKeys(args.authorized_keys).keys:
                    log.warning(
                        "the local agent's public key is not in %s: copy its .key file there",
                        args.authorized_keys,
                    )
                agent_curve = ["--curve-secret", os.path.abspath(args.agent_curve_secret)]
                agent_curve += ["--server-key", server_key]
        elif args.agent_curve_secret:
            raise curve.CurveConfigError("--agent-curve-secret needs --curve-secret")
    except (OSError, ValueError) as err:
        fatal(f"servertrack run: {err}")
    api_tokens = []
    for flag, path in (
        ("--token-file", args.token_file),
        ("--read-token-file", args.read_token_file),
    ):
        if path:
            try:  # refuse here rather than restart an api that cannot start, forever
                read_token_file(path)
            except TokenFileError as err:
                fatal(f"servertrack run: {err}")
            api_tokens += [flag, os.path.abspath(path)]
    try:  # a store password that cannot be read stops the host here, not in a restart loop
        store_password(args)
    except ValueError as err:
        fatal(f"servertrack run: {err}")
    children = [
        Child(
            "aggregator",
            [
                *python,
                "servertrack.aggregator",
                "--batches",
                batches,
                "--query",
                query,
                "--receiver-control",
                control,
                "--max-servers",
                str(args.max_servers),
                *(snapshot_args(args) if args.store == MEMORY else []),
                *store_args(args, writer=True),
            ],
        ),
        Child("receiver", receiver),
        Child(
            "api",
            [
                *python,
                "servertrack.api",
                "--host",
                args.bind,
                "--port",
                str(args.api_port),
                "--threads",
                str(args.threads),
                "--http",
                args.http,
                "--workers",
                str(args.workers),
                *([BEHIND_PROXY] if args.behind_buffering_proxy else []),
                "--receiver-control",
                control,
                "--aggregator-query",
                query,
                *api_tokens,
                *store_args(args, writer=False),
            ],
        ),
    ]
    if not args.no_agent:
        agent_host = "127.0.0.1" if args.bind in ("0.0.0.0", "*") else args.bind
        agent = [
            *python,
            "servertrack.agent",
            "--connect",
            f"tcp://{agent_host}:{args.ingest_port}",
            "--interval",
            str(args.agent_interval),
            "--format",
            args.agent_format,
        ]
        if args.agent_name:
            agent += ["--name", args.agent_name]
        children.append(Child("agent", agent + agent_curve))
    return children


def supervise(children: list[Child], stop: threading.Event) -> int:
    """Keep every child running until ``stop`` is set, then stop them all. A child that exits
    with ``EXIT_CONFIG`` cannot run as configured: the host stops and returns that code."""
    try:
        for child in children:
            child.start()
        while not stop.wait(0.2):
            now = time.monotonic()
            for child in children:
                if child.alive():
                    if now - child.started > STABLE_AFTER:
                        child.backoff = 0.5
                    continue
                code = child.process.returncode if child.process else None
                if code == EXIT_CONFIG:
                    log.error("%s cannot run as configured (see above); stopping", child.name)
                    return EXIT_CONFIG
                if child.restart_at == 0.0:
                    log.warning(
                        "%s exited with %s; restarting in %.1f s", child.name, code, child.backoff
                    )
                    child.restart_at = now + child.backoff
                    child.backoff = min(child.backoff * 2, MAX_BACKOFF)
                elif now >= child.restart_at:
                    child.restart_at = 0.0
                    child.restarts += 1
                    child.start()
        return 0
    finally:
        shutdown(children)


def shutdown(children: list[Child]) -> None:
    """SIGTERM in reverse start order, wait, and SIGKILL whatever is still there."""
    running = [c for c in reversed(children) if c.alive()]
    for child in running:
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in running:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE)
            child.process.kill()
            child.process.wait()


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def check_ports(args: argparse.Namespace) -> None:
    """Stop with a message naming the port when the API, ingest or Graphite port is taken,
    before anything is started or written."""
    ports = [("--api-port", args.api_port), ("--ingest-port", args.ingest_port)]
    if args.graphite_port is not None:
        ports.append(("--graphite-port", args.graphite_port))
    for index, (flag, number) in enumerate(ports):
        for other, taken in ports[:index]:
            if number == taken:
                fatal(f"servertrack run: {other} and {flag} are both {number}")
    host = "0.0.0.0" if args.bind in ("0.0.0.0", "*") else args.bind
    for flag, number in ports:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, number))
        except OSError as err:
            fatal(
                f"servertrack run: {flag} {number} on {host} is not available ({err.strerror}); "
                "is another servertrack run using it?"
            )


def run(args: argparse.Namespace) -> int:
    setup_logging()
    if args.store == MEMORY and args.data_dir != "" and args.retention <= args.snapshot_interval:
        fatal(
            "servertrack run: --retention must be longer than --snapshot-interval, or a crash "
            "between two snapshots could lose batches the receiver no longer holds"
        )
    exposure = granian_exposure_error(args.http, args.bind, args.behind_buffering_proxy)
    if exposure:
        fatal(f"servertrack run: {exposure}")
    check_ports(args)
    locks = []
    try:
        data_dir = data_dir_of(args)
        if data_dir is not None:
            locks.append(hold_lock(os.path.join(data_dir, "host.lock"), "data directory"))
        own_dir = args.runtime_dir is None
        runtime_dir = tempfile.mkdtemp(prefix="servertrack-") if own_dir else args.runtime_dir
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        locks.append(hold_lock(os.path.join(runtime_dir, "host.lock"), "runtime directory"))
    except LockHeld as err:
        fatal(f"servertrack run: {err}")
    except OSError as err:
        fatal(f"servertrack run: {err}")
    stop = threading.Event()
    try:
        children = plan(args, runtime_dir)
        shown = "127.0.0.1" if args.bind in ("0.0.0.0", "*") else args.bind
        base = f"http://{shown}:{args.api_port}"
        print(f"ServerTrack API on {base}  (Ctrl-C stops)", flush=True)
        if not args.no_agent:
            name = args.agent_name or node_name()
            print(
                f"The local agent reports as {name!r}: curl -s {base}/servers/{name}/loads",
                flush=True,
            )
        with stop_on_signals(stop):
            code = supervise(children, stop)
    finally:
        if own_dir:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        for lock in locks:
            lock.close()
    return code
