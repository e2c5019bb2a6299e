"""CURVE on the ingest socket: the receiver's key pair and a ZAP check against authorized keys.

The check runs in pyzmq's :class:`zmq.auth.thread.ThreadAuthenticator`. A CURVE server socket only
completes handshakes with CURVE clients, so once CURVE is on a NULL (plain) agent is never
accepted, whatever the authenticator says.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from servertrack.common.curve_keys import KeyFileError, load_pair, load_public, write_public

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 1.0
"""Seconds between two looks at the authorized keys directory."""


class CurveConfigError(KeyFileError):
    """The CURVE flags are incomplete, or a key file or directory cannot be used."""


def check_flags(secret: str | None, authorized_keys: str | None) -> bool:
    """True when CURVE is asked for; CurveConfigError when only one of the two flags is set."""
    if (secret is None) != (authorized_keys is None):
        raise CurveConfigError(
            "--curve-secret and --authorized-keys go together: give both to require CURVE, "
            "or neither"
        )
    return secret is not None


def load_secret(path: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` from the receiver's secret key file."""
    try:
        return load_pair(path)
    except KeyFileError as err:
        raise CurveConfigError(str(err)) from None


def check_config(secret: str | None, authorized_keys: str | None) -> None:
    """Fail early, before any socket, on incomplete flags or unusable key paths; warn about a
    secret readable by other users or a keys directory others may write to (anyone who can
    add a file there can admit an agent)."""
    if check_flags(secret, authorized_keys):
        load_secret(str(secret))
        if not Path(str(authorized_keys)).is_dir():
            raise CurveConfigError(f"authorized keys directory {authorized_keys} does not exist")
        warn_permissions(str(secret), str(authorized_keys))


def warn_permissions(secret: str, authorized_keys: str) -> list[str]:
    """Log (and return) a warning for each risky permission of the receiver's key files."""
    warnings = []
    try:
        if os.stat(secret).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"secret key file {secret} can be read by other users (chmod 600 it)")
        if os.stat(authorized_keys).st_mode & stat.S_IWOTH:
            warnings.append(
                f"authorized keys directory {authorized_keys} can be written by any user, who "
                "could admit an agent (chmod o-w it)"
            )
    except OSError:  # pragma: no cover - they were readable a moment ago
        pass
    for text in warnings:
        log.warning("%s", text)
    return warnings


def write_public_key(secret: str, path: str) -> str:
    """Write the public half of the pair in ``secret`` to ``path`` as a public certificate (what
    an agent takes as ``--server-key``) and return ``path``."""
    public, _ = load_secret(secret)
    write_public(public, path, "the receiver's key, for agents' --server-key")
    return path


class AuthorizedKeys:
    """Credentials provider for ``Authenticator.configure_curve_callback``.

    The public keys are the ``*.key`` files of one directory (the czmq layout that
    ``zmq.auth.load_certificates`` reads). ``callback`` runs in the ZAP thread for every
    handshake; at most once per ``reload_interval`` it compares the sorted (name, mtime, size)
    listing of those files with the one it loaded and re-reads them when it differs. So a key file
    copied into the directory admits its agent on its next handshake, without a restart, and a
    removed one refuses new connections (an established connection stays until it drops). A file
    that cannot be read yet (still being copied) is skipped and tried again on the next look.
    """

    def __init__(
        self,
        directory: str,
        reload_interval: float = RELOAD_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CurveConfigError(f"authorized keys directory {directory} does not exist")
        self.reload_interval = reload_interval
        self.monotonic = monotonic
        self.keys: frozenset[bytes] = frozenset()
        self._listing: list[tuple[str, int, int]] | None = None
        self._checked_at = float("-inf")
        self._refused: set[bytes] = set()
        self.reload_if_changed(force=True)

    def _scan(self) -> list[tuple[str, int, int]]:
        listing = []
        for path in self.directory.glob("*.key"):
            try:
                stat = path.stat()
            except OSError:
                continue
            listing.append((path.name, stat.st_mtime_ns, stat.st_size))
        return sorted(listing)

    def reload_if_changed(self, force: bool = False) -> None:
        """Re-read the key files if the listing changed (looked at once per reload interval)."""
        now = self.monotonic()
        if not force and now - self._checked_at < self.reload_interval:
            return
        self._checked_at = now
        try:
            listing = self._scan()
        except OSError as err:
            log.warning("cannot list authorized keys in %s: %s", self.directory, err)
            return
        if listing == self._listing:
            return
        keys, complete = set(), True
        for name, _, _ in listing:
            try:
                public = load_public(self.directory / name)
            except (OSError, ValueError) as err:
                log.warning("skipping authorized key %s: %s", name, err)
                complete = False
                continue
            keys.add(public)
        self.keys = frozenset(keys)
        self._listing = listing if complete else None
        self._refused.clear()
        log.info("%d authorized agent keys loaded from %s", len(self.keys), self.directory)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP decision for a client's z85-encoded public ``key``."""
        try:
            self.reload_if_changed()
        except Exception:  # an escaping error would end the ZAP thread and hang every handshake
            log.exception("reloading the authorized keys failed; keeping the loaded ones")
        if key in self.keys:
            return True
        if key not in self._refused:  # once per key and load: a refused agent keeps retrying
            self._refused.add(key)
            log.warning("refused an agent with unknown public key %s", key.decode("ascii"))
        return False


def secure(
    sock: zmq.SyncSocket, secret: str | None, authorized_keys: str | None
) -> ThreadAuthenticator | None:
    """Make ``sock`` a CURVE server that admits only the keys in ``authorized_keys``.

    Call before ``sock.bind``. Returns the running authenticator, which the caller stops after
    closing the socket, or None when neither flag is set (CURVE off, as before).
    """
    if not check_flags(secret, authorized_keys):
        return None
    assert secret is not None and authorized_keys is not None
    public, secret_key = load_secret(secret)
    provider = AuthorizedKeys(authorized_keys)
    auth = ThreadAuthenticator(sock.context, log=log)
    auth.start()
    try:
        auth.configure_curve_callback("*", credentials_provider=provider)
        sock.curve_secretkey = secret_key
        sock.curve_publickey = public
        sock.curve_server = True
    except BaseException:
        auth.stop()
        raise
    log.info("CURVE on: only agents whose public key is in %s are accepted", authorized_keys)
    return auth


def stop(auth: ThreadAuthenticator | None) -> None:
    """Stop the ZAP thread (and close its sockets) if :func:`secure` started one."""
    if auth is not None:
        auth.stop()
