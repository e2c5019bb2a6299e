"""``servertrack forward``: send each complete window's exact means to Graphite or Grok.

Every --interval seconds (a multiple of 60 that divides 3600), once the window is complete plus a
grace period, it reads the API and sends ``PREFIX.<server>.cpu`` and ``.ram`` (the mean of the raw
samples in the window) and the fleet's ``PREFIX._fleet.<metric>.mean``, ``.max`` and ``.servers``,
stamped with the window's start, over the Graphite plaintext protocol. Each point is sent once.
With --anomaly, also ``PREFIX.<server>.cpu_anomaly`` and ``.ram_anomaly`` for each scored minute
of the window, stamped with the minute's start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from urllib.parse import urlsplit

from servertrack.common.config import add_option, add_switch, setup_logging
from servertrack.common.lifecycle import stop_on_signals
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.forward.daemon import ForwardConfig, Forwarder
from servertrack.forward.points import check_prefix
from servertrack.forward.sink import GraphiteSink, PointQueue
from servertrack.forward.source import ApiSource
from servertrack.forward.state_file import StateFile, StateFileError
from servertrack.forward.windows import DEFAULT_GRACE, ScheduleError

log = logging.getLogger(__name__)

GRAPHITE_PORT = 2003
QUEUE_SIZE = 500_000


def parse_graphite(target: str | None) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (port 2003 if left out) → ``(host, port)``."""
    if not target:
        raise ValueError("--graphite tcp://HOST:2003 is required")
    parts = urlsplit(target)
    try:
        port = parts.port or GRAPHITE_PORT
    except ValueError as err:
        raise ValueError(f"--graphite: {err}") from None
    if parts.scheme != "tcp" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"--graphite must look like tcp://HOST:2003, got {target!r}")
    return parts.hostname, port


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack forward", description=__doc__)
    add_option(parser, "--graphite", None, "the Graphite/Grok plaintext receiver, tcp://HOST:2003")
    add_option(parser, "--api", "http://127.0.0.1:8080", "the ServerTrack API to read")
    add_option(parser, "--read-token-file", None, "file whose first line is the API's read token")
    add_option(
        parser, "--interval", 300, "seconds per window (a multiple of 60 dividing 3600)", int
    )
    add_option(parser, "--prefix", "servertrack", "first node(s) of every metric name")
    add_option(parser, "--servers", "*", "only servers whose name matches this glob")
    add_option(parser, "--state", None, "file keeping the last window sent (none: memory only)")
    add_option(
        parser,
        "--backfill",
        None,
        "how far back (s) missed windows are caught up (none: 3300, or 7200 with --interval 3600)",
        int,
    )
    add_option(parser, "--grace", DEFAULT_GRACE, "seconds a window waits for late samples", int)
    add_option(parser, "--queue-size", QUEUE_SIZE, "points kept while the sink is down", int)
    add_switch(
        parser,
        "--anomaly",
        "also send each scored minute's PREFIX.<server>.cpu_anomaly and ram_anomaly (needs "
        "--interval below 3600: minute scores are kept 60 minutes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        host, port = parse_graphite(args.graphite)
        if args.anomaly and args.interval == 3600:
            raise ValueError(
                "--anomaly needs --interval below 3600 (minute scores are kept 60 min)"
            )
        config = ForwardConfig(
            interval=args.interval,
            grace=args.grace,
            backfill=args.backfill,
            prefix=check_prefix(args.prefix),
            servers=args.servers,
            anomaly=args.anomaly,
        )
        token = read_token_file(args.read_token_file) if args.read_token_file else None
        state = StateFile(args.state) if args.state else None
        queue = PointQueue(args.queue_size)
        source = ApiSource(args.api, token)
    except (ValueError, TokenFileError) as err:
        raise SystemExit(f"servertrack forward: {err}") from None
    try:
        forwarder = Forwarder(config, source, GraphiteSink(host, port, queue), state)
    except (StateFileError, ScheduleError) as err:
        source.close()
        raise SystemExit(f"servertrack forward: {err}") from None
    if state is None:
        log.warning("no --state: after a restart, windows up to --backfill back are sent again")
    with stop_on_signals(forwarder.stop), contextlib.suppress(KeyboardInterrupt):
        forwarder.run()
    return 0
