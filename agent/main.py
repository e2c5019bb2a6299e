"""``servertrack agent``: sample this node and publish to the receiver."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.agent import curve
from servertrack.agent.probe import PsutilProbe
from servertrack.agent.publisher import Agent, AgentConfig
from servertrack.common import endpoints, wire
from servertrack.common.config import add_option, endpoint, positive_float, setup_logging
from servertrack.common.lifecycle import stop_on_signals


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack agent", description=__doc__)
    add_option(parser, "--connect", endpoints.INGEST, "receiver endpoint to connect to", endpoint)
    add_option(parser, "--interval", 1.0, "seconds between samples", positive_float)
    add_option(
        parser,
        "--name",
        None,
        "server name to report (default: this host's FQDN, or its host name if that is localhost)",
    )
    add_option(parser, "--format", "msgpack", "wire format", choices=sorted(wire.FORMATS))
    add_option(
        parser,
        "--curve-secret",
        None,
        "this agent's CURVE secret key file (from servertrack keys); needs --server-key",
    )
    add_option(parser, "--server-key", None, "the receiver's CURVE public key file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        if curve.check_flags(args.curve_secret, args.server_key):
            curve.load_keys(args.curve_secret, args.server_key)
    except (OSError, ValueError) as err:
        raise SystemExit(f"servertrack agent: {err}") from None
    config = AgentConfig(
        args.connect,
        args.interval,
        args.name,
        args.format,
        curve_secret=args.curve_secret,
        server_key=args.server_key,
    )
    with zmq.Context() as context:
        agent = Agent(config, PsutilProbe(), context)
        with stop_on_signals(agent.stop), contextlib.suppress(KeyboardInterrupt):
            agent.run()
    return 0
