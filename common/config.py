"""Command-line helpers: every flag's default can come from a ``SERVERTRACK_*`` variable, and every
value, from the command line or the environment, is checked with a clear message (never a
traceback): ``servertrack run --api-port 99999`` stops with "must be a TCP port from 1 to 65535".
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable
from typing import Any

ENDPOINT_RE = re.compile(
    r"(?:tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(?P<port>\d+|\*)|ipc://\S+)"
)
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}


def variable_name(command: str, flag: str) -> str:
    """``run``, ``--api-port`` → ``SERVERTRACK_RUN_API_PORT``.

    The command is part of the name so that one environment can configure several daemons.
    """
    return "_".join(("SERVERTRACK", command, flag.lstrip("-"))).upper().replace("-", "_")


def env_name(parser: argparse.ArgumentParser, flag: str) -> str:
    """The variable of ``flag`` for the command ``parser`` parses (``servertrack run``)."""
    return variable_name(parser.prog.split()[-1], flag)


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text!r}")
    return value


def endpoint(text: str) -> str:
    """A ZeroMQ endpoint this project binds or connects: ``tcp://HOST:PORT`` or ``ipc://PATH``."""
    match = ENDPOINT_RE.fullmatch(text)
    if match is None or (match["port"] not in (None, "*") and not 1 <= int(match["port"]) <= 65535):
        raise argparse.ArgumentTypeError(
            f"must be tcp://HOST:PORT (port 1 to 65535) or ipc://PATH, got {text!r}"
        )
    return text


def optional_tcp_endpoint(text: str) -> str:
    """``tcp://HOST:PORT`` (a TCP port of its own, not ZeroMQ), or ``''`` for none."""
    match = ENDPOINT_RE.fullmatch(text)
    if text and (
        match is None or match["port"] in (None, "*") or not 1 <= int(match["port"]) <= 65535
    ):
        raise argparse.ArgumentTypeError(
            f"must be tcp://HOST:PORT (port 1 to 65535), or '' for none, got {text!r}"
        )
    return text


def optional_port(text: str) -> int | None:
    """A TCP port, or ``''`` for none."""
    return None if text == "" else port(text)


def optional_endpoint(text: str) -> str:
    """An endpoint, or ``''`` for none."""
    return text if text == "" else endpoint(text)


def path(text: str) -> str:
    """A file or directory, made absolute (so it means the same to a child started elsewhere), or
    ``''``."""
    return os.path.abspath(text) if text else text


def tcp_endpoint(host: str, number: int) -> str:
    """``tcp://HOST:PORT``, an IPv6 address in brackets."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"tcp://{host}:{number}"


def _from_env(kind: Callable[[str], Any], variable: str) -> Callable[[str], Any]:
    """``kind`` for a value read from ``variable``: its error message names the variable."""

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"{variable}={text!r}: {err}") from None

    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: Any,
    help_text: str,
    kind: Callable[[str], Any] = str,
    **extra: Any,
) -> None:
    """Add ``flag`` whose default is read from its environment variable when set.

    The variable's text is converted (and checked) like a command-line value, only when the flag
    is not given on the command line; a bad value stops the command with a usage message.
    """
    variable = env_name(parser, flag)
    raw = os.environ.get(variable)
    choices = extra.get("choices")
    if raw is not None and choices is not None and raw not in choices:
        parser.error(f"{variable}={raw!r}: must be one of {', '.join(map(str, choices))}")
    parser.add_argument(
        flag,
        type=kind if raw is None else _from_env(kind, variable),
        default=default if raw is None else raw,
        help=f"{help_text} (env {variable}, default {default})",
        **extra,
    )


class _Repeated(argparse.Action):
    """Each use of the flag adds a value; the first use replaces the default (the values of
    its variable), so a command line is never added to what the environment gave."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        earlier = () if current is self.default else tuple(current or ())
        setattr(namespace, self.dest, (*earlier, values))


def add_repeated(
    parser: argparse.ArgumentParser,
    flag: str,
    help_text: str,
    kind: Callable[[str], Any] = str,
) -> None:
    """A flag given once per value (a tuple of them, empty by default); its variable holds the
    values separated by spaces."""
    variable = env_name(parser, flag)
    raw = os.environ.get(variable)
    default: tuple[Any, ...] = ()
    if raw is not None:
        convert = _from_env(kind, variable)
        try:
            default = tuple(convert(part) for part in raw.split())
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    parser.add_argument(
        flag,
        action=_Repeated,
        type=kind,
        default=default,
        help=f"{help_text} (repeat for several; env {variable}, separated by spaces)",
    )


def add_switch(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A boolean flag; its variable turns it on with ``1``, ``true``, ``yes`` or ``on``."""
    variable = env_name(parser, flag)
    raw = os.environ.get(variable, "").strip().lower()
    if raw not in TRUE | FALSE:
        parser.error(f"{variable}={raw!r}: must be one of 1, true, yes, on, 0, false, no, off")
    parser.add_argument(
        flag, action="store_true", default=raw in TRUE, help=f"{help_text} (env {variable})"
    )


def setup_logging(level: str = "INFO") -> None:
    """Configure logging once, from a daemon's ``main``."""
    chosen = os.environ.get("SERVERTRACK_LOG_LEVEL", level).upper()
    if chosen not in logging.getLevelNamesMapping():
        chosen = level
    logging.basicConfig(level=chosen, format="%(asctime)s %(name)s %(levelname)s %(message)s")
