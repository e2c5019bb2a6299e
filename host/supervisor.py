"""``servertrack run``: the whole monitoring host as supervised child processes.

The receiver, the aggregator and the API (plus a local agent) each run in their own process and
talk over ipc sockets in a private runtime directory, so two hosts on different ports can run side
by side. A child that dies is started again, with a growing pause if it keeps dying.

The host knows no daemon's flags: each daemon declares its options in its ``settings`` module,
``run`` offers some of them under its own names (:data:`OFFERS`), and :func:`compose` makes each
daemon's settings of those, of what the host decides (endpoints, ports) and of the daemon's own
variables, checked before anything starts. A child gets its settings as its command line
(``to_argv``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from servertrack.agent.probe import node_name
from servertrack.agent.settings import AgentSettings
from servertrack.aggregator.settings import AggregatorSettings
from servertrack.alerts.delivery import base_url_argument
from servertrack.api.settings import ApiSettings
from servertrack.common.config import optional_port, port, setup_logging, tcp_endpoint
from servertrack.common.curve_keys import load_pair
from servertrack.common.lifecycle import (
    EXIT_CONFIG,
    die_with_parent,
    fatal,
    hold_lock,
    port_unavailable,
    stop_on_signals,
)
from servertrack.common.settings import ConfigError, Option, Settings, field_of
from servertrack.receiver import curve
from servertrack.receiver.settings import ReceiverSettings
from servertrack.store.options import MEMORY, STORE_OPTIONS, WRITER_OPTIONS

log = logging.getLogger("servertrack.host")
STOP_GRACE = 10.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 10.0
"""A child that ran this many seconds counts as healthy again: its restart pause is reset."""
S = TypeVar("S", bound=Settings)


@dataclass
class Child:
    name: str
    argv: list[str]
    unset: frozenset[str] = frozenset()
    """Variables of the host's environment the child does not get: its own options', which its
    command line gives it."""
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.5
    restart_at: float = 0.0
    restarts: int = 0

    def environment(self) -> dict[str, str]:
        return {name: value for name, value in os.environ.items() if name not in self.unset}

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.environment(), preexec_fn=die_with_parent
        )
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Offer(NamedTuple):
    """An option of ``servertrack run``: its own, or a daemon's under the name and help text
    ``run`` gives it, whose value sets ``field`` in the settings of each daemon of ``to``."""

    option: Option
    field: str
    to: tuple[type[Settings], ...] = ()


def own(option: Option) -> Offer:
    """An option of the host itself."""
    return Offer(option, option.field)


def offer(help_text: str, field: str, *to: type[Settings], flag: str = "") -> Offer:
    """The option of ``to``'s ``field`` (its default and checks), under ``flag`` if given."""
    option = to[0].option(field)
    return Offer(option._replace(flag=flag or option.flag, help=help_text), field, to)


def offer_store(option: Option) -> Offer:
    """A ``--store`` option, for the aggregator, and for the API when it reads it too."""
    readers = (ApiSettings,) if option in STORE_OPTIONS else ()
    return Offer(option, option.field, (AggregatorSettings, *readers))


OFFERS = (
    own(Option("--api-port", 8080, "HTTP API port", port)),
    own(Option("--ingest-port", 5556, "port the agents connect to", port)),
    own(Option("--bind", "127.0.0.1", "address the API and the ingest socket listen on")),
    own(
        Option(
            "--graphite-port",
            None,
            "receiver: take Graphite plaintext (collectd, netdata, Diamond) on this TCP port of "
            "the --bind address ('' or unset: off)",
            optional_port,
        )
    ),
    offer(
        "receiver: file of rules mapping Graphite paths to a server's cpu or ram",
        "graphite_map",
        ReceiverSettings,
    ),
    own(Option("--no-agent", False, "do not start a local agent", switch=True)),
    offer("receiver: also accept the legacy pickle.gz format", "accept_pickle", ReceiverSettings),
    offer("receiver: seconds of batches kept for replay", "retention", ReceiverSettings),
    own(
        Option(
            "--data-dir",
            None,
            "aggregator: where its snapshot lives (default ~/.local/state/servertrack/port-<api "
            "port>; '' for no snapshots)",
        )
    ),
    offer("aggregator: seconds between snapshots", "snapshot_interval", AggregatorSettings),
    offer(
        "alerts: rules file (YAML; a bad one stops the host with each mistake's line, exit 2; "
        "default: the default rules)",
        "rules",
        AggregatorSettings,
    ),
    offer("alerts: evaluate no rules at all", "no_rules", AggregatorSettings),
    offer(
        "alerts: seconds between evaluations of every rule over every server",
        "rules_interval",
        AggregatorSettings,
    ),
    offer(
        "alerts: an Alertmanager's base URL (http://host:9093) to send alerts to",
        "alertmanager",
        AggregatorSettings,
    ),
    own(
        Option(
            "--external-url",
            None,
            "alerts: where people reach this host's dashboard, which each alert links to "
            "(default http://<bind>:<api port>)",
            base_url_argument,
        )
    ),
    offer("api: worker threads (per granian worker)", "threads", ApiSettings),
    offer(
        "api: HTTP server, waitress or granian (faster; pip install servertrack[fast])",
        "http",
        ApiSettings,
    ),
    offer("api: granian worker processes (waitress has one)", "workers", ApiSettings),
    offer(
        "api: a proxy that buffers request bodies is in front, so --http granian may listen "
        "beyond loopback",
        "behind_buffering_proxy",
        ApiSettings,
    ),
    offer(
        "receiver and aggregator: server names tracked at most (new ones beyond are refused)",
        "max_servers",
        ReceiverSettings,
        AggregatorSettings,
    ),
    offer("api: file holding the bearer token POST requests need", "token_file", ApiSettings),
    offer(
        "api: file holding the bearer token GET requests need (not /health, /openapi.json)",
        "read_token_file",
        ApiSettings,
    ),
    offer("agent: seconds between samples", "interval", AgentSettings, flag="--agent-interval"),
    offer(
        "agent: server name (default: this host's FQDN)",
        "name",
        AgentSettings,
        flag="--agent-name",
    ),
    offer("agent: wire format", "format", AgentSettings, flag="--agent-format"),
    offer(
        "receiver: CURVE secret key file; with --authorized-keys, only listed agents get in",
        "curve_secret",
        ReceiverSettings,
    ),
    offer(
        "receiver: directory of the agents' public key files", "authorized_keys", ReceiverSettings
    ),
    offer(
        "agent: its CURVE secret key file (needed with --curve-secret unless --no-agent)",
        "curve_secret",
        AgentSettings,
        flag="--agent-curve-secret",
    ),
    *map(offer_store, (*STORE_OPTIONS, *WRITER_OPTIONS)),
    own(
        Option(
            "--runtime-dir",
            None,
            "directory for internal sockets (default: a new "
            "private temporary directory, removed at exit)",
        )
    ),
)
"""The options of ``servertrack run``, in the order ``--help`` lists them. Everything else a
daemon takes is either decided by the host (its endpoints and ports) or read from the daemon's
own ``SERVERTRACK_<DAEMON>_*`` variables (``SERVERTRACK_RECEIVER_GRAPHITE_RATE``)."""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack run", description=__doc__)
    for entry in OFFERS:
        entry.option.add_to(parser)
    return parser


def data_dir_of(args: argparse.Namespace) -> str | None:
    """The data directory (one per API port by default, so hosts side by side keep theirs
    apart), or None for memory only."""
    data_dir: str | None = args.data_dir
    if data_dir == "":
        return None
    if data_dir is None:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(state, "servertrack", f"port-{args.api_port}")
    return os.path.abspath(data_dir)


def compose(kind: type[S], args: argparse.Namespace, **decided: Any) -> S:
    """The settings of one daemon, checked: what the host ``decided``, the options ``run``
    offers it, and its own variables' values (or defaults) for the rest. A setting the daemon
    cannot run with stops the host here, with ``run``'s name for the flag, rather than a child
    restarted forever."""
    values = {e.field: getattr(args, e.option.field) for e in OFFERS if kind in e.to}
    values.update(decided)
    values.update(kind.defaults(o.field for o in kind.OPTIONS if o.field not in values))
    try:
        return kind.from_args(argparse.Namespace(**values))
    except ConfigError as err:
        if err.flag is None:
            fatal(f"servertrack run: {err}")
        fatal(f"servertrack run: {run_flag(kind, err.flag)}: {err.reason}")


def run_flag(kind: type[Settings], flag: str) -> str:
    """What ``servertrack run`` calls the option ``flag`` of ``kind``: the name it offers it
    under, or ``DAEMON --flag`` for one the host sets itself."""
    field = field_of(flag)
    offered = (e.option.flag for e in OFFERS if kind in e.to and e.field == field)
    return next(offered, f"{kind.COMMAND} {flag}")


def web_host(bind: str) -> str:
    """The host part of a URL reaching a socket listening on ``bind``: an IPv6 address in
    brackets."""
    host = reachable(bind)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def reachable(bind: str) -> str:
    """The address at which a client on this machine reaches a socket listening on ``bind``."""
    return "127.0.0.1" if bind in ("0.0.0.0", "*") else bind


def child_of(settings: Settings) -> Child:
    """The process of a daemon with ``settings``: given on its command line, and nothing of them
    left to its variables, which the host has already read."""
    argv = [sys.executable, "-m", f"servertrack.{settings.COMMAND}", *settings.to_argv()]
    return Child(settings.COMMAND, argv, unset=settings.variables())


def plan(args: argparse.Namespace, runtime_dir: str) -> list[Child]:
    """The children to run, in start order, every daemon's settings checked."""
    control = f"ipc://{runtime_dir}/receiver-control"
    batches = f"ipc://{runtime_dir}/batches"
    query = f"ipc://{runtime_dir}/query"
    graphite = "" if args.graphite_port is None else tcp_endpoint(args.bind, args.graphite_port)
    receiver = compose(
        ReceiverSettings,
        args,
        bind=tcp_endpoint(args.bind, args.ingest_port),
        control=control,
        aggregator=batches,
        aggregator_query=query,
        graphite=graphite,
    )
    data_dir = data_dir_of(args)
    snapshot = alerts_state = None
    if data_dir is not None and args.store == MEMORY:
        snapshot = os.path.join(data_dir, "aggregator.npz")  # which keeps the alert state too
    elif data_dir is not None:
        alerts_state = os.path.join(data_dir, "alerts.json")
    aggregator = compose(
        AggregatorSettings,
        args,
        batches=batches,
        query=query,
        receiver_control=control,
        snapshot=snapshot,
        external_url=args.external_url or f"http://{web_host(args.bind)}:{args.api_port}",
        alerts_state=alerts_state,
    )
    if snapshot is not None and receiver.retention <= aggregator.snapshot_interval:
        fatal(
            "servertrack run: --retention must be longer than --snapshot-interval, or a crash "
            "between two snapshots could lose batches the receiver no longer holds"
        )
    api = compose(
        ApiSettings,
        args,
        host=args.bind,
        port=args.api_port,
        receiver_control=control,
        aggregator_query=query,
    )
    children = [child_of(aggregator), child_of(receiver), child_of(api)]
    check_agent_curve(args, receiver)
    if not args.no_agent:
        children.append(child_of(local_agent(args, receiver, runtime_dir)))
    return children


def check_agent_curve(args: argparse.Namespace, receiver: ReceiverSettings) -> None:
    """The local agent uses CURVE when the receiver does, and only then."""
    if receiver.curve_secret is None and args.agent_curve_secret:
        fatal("servertrack run: --agent-curve-secret needs --curve-secret")
    if receiver.curve_secret is not None and not args.no_agent and not args.agent_curve_secret:
        fatal(
            "servertrack run: with --curve-secret the local agent needs --agent-curve-secret "
            "(or use --no-agent)"
        )


def local_agent(
    args: argparse.Namespace, receiver: ReceiverSettings, runtime_dir: str
) -> AgentSettings:
    """The local agent's settings. With CURVE it gets the receiver's public key only, written
    next to the sockets; a warning says when its own key is not among the authorized ones."""
    server_key = None
    if receiver.curve_secret is not None:
        try:
            server_key = curve.write_public_key(
                receiver.curve_secret, os.path.join(runtime_dir, "receiver.key")
            )
        except (OSError, ValueError) as err:
            fatal(f"servertrack run: {err}")
    agent = compose(
        AgentSettings,
        args,
        connect=tcp_endpoint(reachable(args.bind), args.ingest_port),
        server_key=server_key,
    )
    authorized = receiver.authorized_keys
    if agent.curve_secret is not None and authorized is not None:
        public = load_pair(agent.curve_secret)[0]
        if public not in curve.AuthorizedKeys(authorized).keys:
            log.warning(
                "the local agent's public key is not in %s: copy its .key file there", authorized
            )
    return agent


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
    running = [
        (c.name, c.process) for c in reversed(children) if c.process is not None and c.alive()
    ]
    for _, process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for name, process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s; killing it", name, STOP_GRACE)
            process.kill()
            process.wait()


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
        reason = port_unavailable(host, number)
        if reason:
            fatal(
                f"servertrack run: {flag} {number} on {host} is not available ({reason}); "
                "is another servertrack run using it?"
            )


def run(args: argparse.Namespace) -> int:
    """Check the ports, take the runtime directory, check every daemon's settings, take the data
    directory, and only then start the children: a setting they cannot run with leaves the data
    directory untouched."""
    setup_logging()
    check_ports(args)
    own_dir = args.runtime_dir is None
    runtime_dir = ""
    locks = []
    try:
        try:
            runtime_dir = tempfile.mkdtemp(prefix="servertrack-") if own_dir else args.runtime_dir
            os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
            locks.append(hold_lock(os.path.join(runtime_dir, "host.lock"), "runtime directory"))
            children = plan(args, runtime_dir)
            data_dir = data_dir_of(args)
            if data_dir is not None:
                locks.append(hold_lock(os.path.join(data_dir, "host.lock"), "data directory"))
        except OSError as err:  # LockHeld included
            fatal(f"servertrack run: {err}")
        base = f"http://{reachable(args.bind)}:{args.api_port}"
        print(f"ServerTrack API on {base}  (Ctrl-C stops)", flush=True)
        if not args.no_agent:
            name = args.agent_name or node_name()
            print(
                f"The local agent reports as {name!r}: curl -s {base}/servers/{name}/loads",
                flush=True,
            )
        stop = threading.Event()
        with stop_on_signals(stop):
            return supervise(children, stop)
    finally:
        if own_dir and runtime_dir:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        for lock in locks:
            lock.close()
