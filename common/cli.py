"""``servertrack`` command: one entry point with a subcommand per daemon."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import import_module

COMMANDS = {
    "run": (
        "servertrack.common.host",
        "the whole monitoring host (receiver, aggregator, api, agent)",
    ),
    "agent": ("servertrack.agent.main", "sample this node and publish to the receiver"),
    "receiver": ("servertrack.receiver.main", "validate, de-duplicate and batch samples"),
    "aggregator": ("servertrack.aggregator.main", "per-server rollups and queries"),
    "api": ("servertrack.api.main", "the HTTP API on waitress"),
    "loadgen": ("servertrack.agent.loadgen", "simulate a fleet and check the answers"),
    "keys": ("servertrack.common.keys", "generate a CURVE key pair"),
    "forward": (
        "servertrack.forward.main",
        "stream per-window means to Graphite or Grok (plaintext protocol)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servertrack", description="ServerTrack fleet monitor")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.build_parser(command)
        runner: Callable[[argparse.Namespace], int] = module.run
        command.set_defaults(runner=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.runner(args))


if __name__ == "__main__":
    raise SystemExit(main())
