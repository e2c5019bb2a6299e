"""``servertrack api``: serve the HTTP API with waitress (the default) or granian (``--http``)."""

from __future__ import annotations

import argparse
import logging
import threading

import zmq

from servertrack.api.assembly import build_app, read_tokens
from servertrack.api.server import make_waitress
from servertrack.api.settings import ApiSettings
from servertrack.common.config import setup_logging
from servertrack.common.lifecycle import fatal, stop_on_signals

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack api", description=__doc__)
    ApiSettings.add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    setup_logging()
    ApiSettings.checked(args)
    record_token, read_token = read_tokens(args)
    if args.http == "granian":
        from servertrack.api import granian_server  # only when chosen: an optional extra

        return granian_server.serve(args)
    return serve_waitress(args, record_token, read_token)


def serve_waitress(
    args: argparse.Namespace, record_token: str | None, read_token: str | None
) -> int:
    context = zmq.Context()
    try:
        app, reads, stats = build_app(args, context, record_token, read_token)
        try:
            server = make_waitress(
                app,
                args.host,
                args.port,
                args.threads,
                stats,
                idle_timeout=args.idle_timeout,
                request_timeout=args.request_timeout,
                connection_limit=args.connection_limit,
            )
        except OSError as err:
            reads.close()
            fatal(f"servertrack api: cannot listen on {args.host}:{args.port}: {err.strerror}")
        stop = threading.Event()
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        log.info("api (waitress) listening on http://%s:%s", args.host, server.effective_port)
        reads.start()
        with stop_on_signals(stop):
            serving.start()
            while not stop.wait(0.5) and serving.is_alive():
                pass
        # Stop accepting, let in-flight requests finish, then leave the loop thread behind.
        server.stop(timeout=2)
        reads.close()
    finally:
        context.destroy(linger=0)
    return 0
