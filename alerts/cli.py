"""Alert rules files: ``servertrack rules check FILE`` says whether a file would be taken, and
names the line and the field of every mistake (exit 2) when it would not."""

from __future__ import annotations

import argparse
import sys

from servertrack.alerts.rules import RulesError, load_rules

EXIT_BAD_FILE = 2
"""As for any other bad flag or file: ``servertrack run --rules`` refuses it the same way."""


def build_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="check a rules file: OK with its rules, or every mistake with its line (exit 2)",
        description="Check an alert rules file (YAML): print OK and its rules, or every "
        "mistake with its line and field and exit 2.",
    )
    check.add_argument("file", metavar="FILE", help="the rules file")


def run(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.file)
    except RulesError as err:
        print(err, file=sys.stderr)
        count = len(err.problems)
        print(f"{args.file}: {count} mistake{'s' if count > 1 else ''}", file=sys.stderr)
        return EXIT_BAD_FILE
    print(f"{args.file}: OK, {len(rules)} rule{'' if len(rules) == 1 else 's'}")
    for rule in rules:
        print(f"  {rule.describe()}")
    return 0
