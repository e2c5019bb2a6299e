"""``servertrack agent``: sample this node and publish to the receiver."""

from __future__ import annotations

import argparse
import contextlib

import zmq

from servertrack.agent.probe import PsutilProbe
from servertrack.agent.publisher import Agent
from servertrack.agent.settings import AgentSettings
from servertrack.common.config import setup_logging
from servertrack.common.lifecycle import stop_on_signals


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack agent", description=__doc__)
    AgentSettings.add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    settings = AgentSettings.checked(args)
    with zmq.Context() as context:
        agent = Agent(settings.daemon_config(), PsutilProbe(), context)
        with stop_on_signals(agent.stop), contextlib.suppress(KeyboardInterrupt):
            agent.run()
    return 0
