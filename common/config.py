"""Command-line helpers: every flag's default can come from a ``SERVERTRACK_*`` variable."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any


def env_name(parser: argparse.ArgumentParser, flag: str) -> str:
    """``servertrack run --api-port`` → ``SERVERTRACK_RUN_API_PORT``.

    The command is part of the name so that one environment can configure several daemons.
    """
    command = parser.prog.split()[-1]
    return "_".join(("SERVERTRACK", command, flag.lstrip("-"))).upper().replace("-", "_")


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: Any,
    help_text: str,
    kind: Callable[[str], Any] = str,
    **extra: Any,
) -> None:
    """Add ``flag`` whose default is read from its environment variable when set."""
    variable = env_name(parser, flag)
    raw = os.environ.get(variable)
    value = kind(raw) if raw is not None else default
    parser.add_argument(
        flag,
        type=kind,
        default=value,
        help=f"{help_text} (env {variable}, default {default})",
        **extra,
    )


def add_switch(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A boolean flag; its variable turns it on with ``1``, ``true`` or ``yes``."""
    variable = env_name(parser, flag)
    on = os.environ.get(variable, "").lower() in {"1", "true", "yes"}
    parser.add_argument(flag, action="store_true", default=on, help=f"{help_text} (env {variable})")


def setup_logging(level: str = "INFO") -> None:
    """Configure logging once, from a daemon's ``main``."""
    logging.basicConfig(
        level=os.environ.get("SERVERTRACK_LOG_LEVEL", level).upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
