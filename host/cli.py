"""``servertrack`` command: one entry point with a subcommand per daemon.

Only the chosen command's module is imported and only its parser is built, so ``servertrack
agent`` loads the agent and nothing of the server side (numpy, Falcon, waitress...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

COMMANDS = {
    "run": (
        "servertrack.host.supervisor",
        "the whole monitoring host (receiver, aggregator, api, agent)",
    ),
    "agent": ("servertrack.agent.main", "sample this node and publish to the receiver"),
    "receiver": ("servertrack.receiver.main", "validate, de-duplicate and batch samples"),
    "aggregator": ("servertrack.aggregator.main", "per-server rollups and queries"),
    "api": ("servertrack.api.main", "the HTTP API on waitress"),
    "forward": (
        "servertrack.forward.main",
        "stream per-window means to Graphite or Grok (plaintext protocol)",
    ),
    "loadgen": ("servertrack.loadgen.fleet", "simulate a fleet and check the answers"),
    "keys": ("servertrack.host.keys", "generate a CURVE key pair"),
    "rules": ("servertrack.alerts.cli", "check an alert rules file (rules check FILE)"),
}


def overview() -> argparse.ArgumentParser:
    """The top-level parser: the list of commands, with no module imported."""
    parser = argparse.ArgumentParser(
        prog="servertrack",
        description="ServerTrack fleet monitor",
        epilog="'servertrack COMMAND --help' describes a command's flags.",
    )
    choices = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        choices.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command, built by its own module."""
    module = import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"servertrack {name}", description=module.__doc__)
    module.build_parser(parser)
    runner: Callable[[argparse.Namespace], int] = module.run
    parser.set_defaults(runner=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        overview().parse_args(argv[:1])  # prints the commands, or the error, and exits
        return 2
    if argv[0] == "aggregator":
        from servertrack.aggregator.hugepages import without_hugepage_advice

        without_hugepage_advice()  # before the command's module imports numpy
    args = command_parser(argv[0]).parse_args(argv[1:])
    return int(args.runner(args))


if __name__ == "__main__":
    raise SystemExit(main())
