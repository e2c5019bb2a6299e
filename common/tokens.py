"""Bearer token files: the token is the file's first line, stripped.

Paths, not tokens, travel on command lines, so ``ps`` never shows a token. Used by the API (the
tokens it requires) and the forwarder (the read token it sends).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class TokenFileError(ValueError):
    """A token file that cannot be used: the API refuses to start."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``: its first line, stripped. Refuses a missing file or empty token.

    The token must be printable ASCII without spaces, as a Bearer token in a header has to be.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"cannot read token file {str(file)!r}: {err}") from err
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise TokenFileError(f"token file {str(file)!r} is empty (the token is its first line)")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise TokenFileError(f"the token in {str(file)!r} must be printable ASCII without spaces")
    try:
        if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s can be read by other users (chmod 600 it)", file)
    except OSError:  # pragma: no cover - it was readable a moment ago
        pass
    return token
