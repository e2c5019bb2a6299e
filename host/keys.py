"""``servertrack keys``: generate a CURVE key pair for a receiver or an agent.

Writes ``DIR/NAME.key_secret`` (the pair, readable by the owner only) and ``DIR/NAME.key`` (the
public key, to copy to the other side: an agent's into the receiver's ``--authorized-keys``
directory, the receiver's to each agent's ``--server-key``).
"""

from __future__ import annotations

import argparse
import sys

from servertrack.agent.probe import node_name
from servertrack.common.config import add_option, add_switch
from servertrack.common.curve_keys import generate_pair


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack keys", description=__doc__)
    parser.add_argument("directory", metavar="DIR", help="where to write the two key files")
    add_option(parser, "--name", None, "base name of the files (default: this host's FQDN)")
    add_switch(parser, "--force", "overwrite an existing key pair of that name")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    name = args.name or node_name()
    try:
        public, secret = generate_pair(args.directory, name, args.force)
    except (OSError, ValueError) as err:
        print(f"servertrack keys: {err}", file=sys.stderr)
        return 1
    print(f"secret key: {secret}  (keep it on this machine)")
    print(f"public key: {public}  (copy it to the other side)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
