"""``servertrack api``: serve the HTTP API with waitress."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import zmq
from waitress.server import create_server

from servertrack.api.app import create_app
from servertrack.api.auth import TokenFileError, read_token_file
from servertrack.api.backend import ZmqBackend
from servertrack.common import endpoints
from servertrack.common.config import add_option, setup_logging
from servertrack.common.lifecycle import stop_on_signals

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack api", description=__doc__)
    add_option(parser, "--host", "127.0.0.1", "address to listen on")
    add_option(parser, "--port", 8080, "HTTP port", int)
    add_option(parser, "--threads", 64, "waitress worker threads (keep >= concurrent clients)", int)
    add_option(
        parser,
        "--channel-timeout",
        30,
        "seconds before a connection that sends nothing (or trickles a request) is closed",
        int,
    )
    add_option(
        parser, "--receiver-control", endpoints.RECEIVER_CONTROL, "receiver control endpoint"
    )
    add_option(
        parser, "--aggregator-query", endpoints.AGGREGATOR_QUERY, "aggregator query endpoint"
    )
    add_option(
        parser,
        "--backend-timeout",
        0.5,
        "seconds to wait for the receiver/aggregator to take a request (503 after that)",
        float,
    )
    add_option(
        parser,
        "--record-timeout",
        5.0,
        "seconds the receiver may take to confirm a record it has taken (large batches)",
        float,
    )
    add_option(
        parser,
        "--token-file",
        None,
        "file whose first line is the bearer token POST requests need (default: none needed)",
    )
    add_option(
        parser,
        "--read-token-file",
        None,
        "file whose first line is the bearer token GET requests need (/health and "
        "/openapi.json stay open; default: none needed)",
    )
    return parser


def read_tokens(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The record and read tokens; exits with a message when a token file is given but unusable.

    Paths, not tokens, are passed on the command line, so ``ps`` never shows a token.
    """
    try:
        record = read_token_file(args.token_file) if args.token_file else None
        read = read_token_file(args.read_token_file) if args.read_token_file else None
    except TokenFileError as err:
        raise SystemExit(f"servertrack api: {err}") from err
    log.info(
        "bearer token needed for records: %s, for reads: %s",
        "yes" if record else "no",
        "yes" if read else "no",
    )
    return record, read


def make_server(app: Any, host: str, port: int, threads: int, channel_timeout: int = 30) -> Any:
    """Waitress as ServerTrack runs it: a worker per concurrent client (waitress queues the rest
    and collapses to a few hundred requests/s when it must); a channel idle (or trickling a
    request, slow-loris style) for ``channel_timeout`` seconds is closed."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # one warning per queued request
    return create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        channel_timeout=channel_timeout,
        cleanup_interval=max(1, min(30, channel_timeout // 2)),  # how often idle ones are swept
        connection_limit=max(100, threads * 4),
        ident="servertrack",
    )


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    record_token, read_token = read_tokens(args)
    context = zmq.Context()
    try:
        backend = ZmqBackend(
            args.receiver_control,
            args.aggregator_query,
            args.backend_timeout,
            context,
            record_timeout=args.record_timeout,
        )
        app = create_app(backend, record_token=record_token, read_token=read_token)
        server = make_server(app, args.host, args.port, args.threads, args.channel_timeout)
        stop = threading.Event()
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        log.info("api listening on http://%s:%s", args.host, server.effective_port)
        with stop_on_signals(stop):
            serving.start()
            while not stop.wait(0.5) and serving.is_alive():
                pass
        # Stop accepting, let in-flight requests finish, then leave the loop thread behind.
        server.close()
        server.task_dispatcher.shutdown(timeout=5)
        backend.close()
    finally:
        context.destroy(linger=0)
    return 0
