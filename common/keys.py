"""``servertrack keys``: generate a CURVE key pair for a receiver or an agent.

Writes ``DIR/NAME.key_secret`` (the pair, readable by the owner only) and ``DIR/NAME.key`` (the
public key, to copy to the other side: an agent's into the receiver's ``--authorized-keys``
directory, the receiver's to each agent's ``--server-key``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import zmq.auth

from servertrack.common.config import add_option, add_switch


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack keys", description=__doc__)
    parser.add_argument("directory", metavar="DIR", help="where to write the two key files")
    add_option(parser, "--name", None, "base name of the files (default: this host's FQDN)")
    add_switch(parser, "--force", "overwrite an existing key pair of that name")
    return parser


def generate(directory: str, name: str, force: bool = False) -> tuple[Path, Path]:
    """Create the pair with ``zmq.auth.create_certificates``; returns (public, secret) paths.

    The files are created under umask 077 so that the secret is never readable by others, not
    even for a moment; the public file is made world-readable afterwards.
    """
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"bad key name {name!r}: use a plain file name such as the host's FQDN")
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [p for p in (folder / f"{name}.key", folder / f"{name}.key_secret") if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; use --force to replace the key pair")
    previous = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(previous)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    name = args.name or socket.getfqdn()
    try:
        public, secret = generate(args.directory, name, args.force)
    except (OSError, ValueError) as err:
        print(f"servertrack keys: {err}", file=sys.stderr)
        return 1
    print(f"secret key: {secret}  (keep it on this machine)")
    print(f"public key: {public}  (copy it to the other side)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
