"""A command's typed settings: its options declared once, parsed, checked, and written back.

Each daemon declares its options as a tuple of :class:`Option` and its settings as a class mixing
in :class:`Settings` (a frozen dataclass; the agent's is a ``NamedTuple``, see
:mod:`servertrack.agent.settings`), one field per option. From that one declaration come the
daemon's parser (:meth:`Settings.add_options`), its settings and their checks
(:meth:`Settings.from_args`), and the command line that gives a child the very same settings
(:meth:`Settings.to_argv`), which is how ``servertrack run`` starts its daemons without knowing
their flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Self

from servertrack.common.config import add_option, add_repeated, add_switch, variable_name
from servertrack.common.lifecycle import fatal


class ConfigError(ValueError):
    """A setting the command cannot run with (a key file that cannot be read, two settings that
    do not go together); ``flag`` names the option at fault when there is one."""

    def __init__(self, reason: str, flag: str | None = None) -> None:
        super().__init__(f"{flag}: {reason}" if flag else reason)
        self.reason = reason
        self.flag = flag


def field_of(flag: str) -> str:
    """The settings field of an option, as argparse names its destination: ``--max-servers``,
    ``max_servers``."""
    return flag.removeprefix("--").replace("-", "_")


class Option(NamedTuple):
    """One option of a command: how its parser offers it, and how a value goes back on a command
    line. Its value lives in the settings field named after the flag (``--max-servers``:
    ``max_servers``)."""

    flag: str
    default: Any
    help: str
    kind: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    switch: bool = False
    """A flag without a value (``store_true``), on when its variable is ``1``, ``true``..."""
    repeated: bool = False
    """A flag given once per value: its value is a tuple (``()`` when it is not given)."""

    @property
    def field(self) -> str:
        return field_of(self.flag)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Offer the option on ``parser``, its default overridable by its variable."""
        if self.switch:
            add_switch(parser, self.flag, self.help)
        elif self.repeated:
            add_repeated(parser, self.flag, self.help, self.kind)
        elif self.choices is None:
            add_option(parser, self.flag, self.default, self.help, self.kind)
        else:
            add_option(
                parser, self.flag, self.default, self.help, self.kind, choices=list(self.choices)
            )

    def to_argv(self, value: Any) -> list[str]:
        """The arguments that give the option ``value``: none for None or a switch that is off;
        ``--flag=VALUE`` when the value would pass for a flag."""
        if self.switch:
            return [self.flag] if value else []
        if self.repeated:
            return [part for one in value for part in self._replace(repeated=False).to_argv(one)]
        if value is None:
            return []
        text = str(value)  # a float's str() reads back as the same float
        return [f"{self.flag}={text}"] if text.startswith("-") else [self.flag, text]


class Settings:
    """What every daemon's settings class has; it sets ``COMMAND`` and ``OPTIONS`` and may
    override :meth:`check`. Its fields are its options' fields, nothing else."""

    __slots__ = ()
    COMMAND = ""
    """The command (``servertrack COMMAND``; ``python -m servertrack.COMMAND``), which names its
    variables (``SERVERTRACK_COMMAND_FLAG``)."""
    OPTIONS: tuple[Option, ...] = ()

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        for option in cls.OPTIONS:
            option.add_to(parser)

    @classmethod
    def option(cls, field: str) -> Option:
        """The option whose value is in ``field``."""
        return next(option for option in cls.OPTIONS if option.field == field)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The settings parsed into ``args``, checked: :class:`ConfigError` if they cannot run."""
        settings = cls(**{option.field: getattr(args, option.field) for option in cls.OPTIONS})
        settings.check()
        return settings

    @classmethod
    def checked(cls, args: argparse.Namespace) -> Self:
        """:meth:`from_args` for the command's ``run``: a setting it cannot run with stops it
        with the reason and ``EXIT_CONFIG``."""
        try:
            return cls.from_args(args)
        except ConfigError as err:
            fatal(f"servertrack {cls.COMMAND}: {err}")

    def check(self) -> None:
        """Raise :class:`ConfigError` for a setting the command cannot run with (the type of each
        value was checked when it was parsed)."""

    def to_argv(self) -> list[str]:
        """The command line that gives the command these settings, whatever their defaults, in an
        environment without its variables (:meth:`variables`)."""
        return [
            part for option in self.OPTIONS for part in option.to_argv(getattr(self, option.field))
        ]

    @classmethod
    def variables(cls) -> frozenset[str]:
        """The environment variables that give the command's options their defaults."""
        return frozenset(variable_name(cls.COMMAND, option.flag) for option in cls.OPTIONS)

    @classmethod
    def defaults(cls, fields: Iterable[str]) -> dict[str, Any]:
        """The values of ``fields`` when no flag gives them: their variables', else their
        defaults. A bad variable stops the program with a usage message naming it, as the
        command itself would."""
        parser = argparse.ArgumentParser(prog=f"servertrack {cls.COMMAND}", add_help=False)
        for field in fields:
            cls.option(field).add_to(parser)
        return vars(parser.parse_args([]))
