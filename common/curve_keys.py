"""CURVE key files, for both ends: the receiver's and the agents' pairs, and public keys.

Key files are the czmq certificate files that ``zmq.auth`` reads and writes: ``NAME.key_secret``
holds a pair (readable by its owner only), ``NAME.key`` the public key to copy to the other side.
"""

from __future__ import annotations

import os
from pathlib import Path


class KeyFileError(ValueError):
    """A key file that cannot be read or holds no usable key."""


def load_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret key file written by ``servertrack keys``."""
    import zmq.auth  # PERF: only with CURVE on (it is most of a megabyte of an agent's RSS)

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise KeyFileError(f"cannot read the key pair in {path}: {err}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds only a public key; give the secret file")
    return public, secret


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The public key in a key file (public or secret)."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise KeyFileError(f"cannot read a public key in {path}: {err}") from None
    return public


def write_public(public: bytes, path: str | os.PathLike[str], comment: str) -> Path:
    """Write ``public`` as a public key file (what the other side loads with
    :func:`load_public`) and return its path."""
    text = (
        f"#   ZeroMQ CURVE Public Certificate: {comment}\n"
        "metadata\ncurve\n"
        f'    public-key = "{public.decode("ascii")}"\n'
    )
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def generate_pair(directory: str, name: str, force: bool = False) -> tuple[Path, Path]:
    """Create ``DIR/NAME.key`` and ``DIR/NAME.key_secret``; returns (public, secret) paths.

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
    import zmq.auth

    previous = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(previous)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)
