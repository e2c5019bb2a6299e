"""``servertrack agent``'s options, declared once, and the settings they make.

PERF: the settings are a ``NamedTuple``, not a dataclass, as :class:`AgentConfig` is: importing
``dataclasses`` (and ``inspect``) would cost every node's agent about a megabyte.
"""

from __future__ import annotations

from typing import NamedTuple

from servertrack.agent import curve
from servertrack.agent.publisher import AgentConfig
from servertrack.common import endpoints, wire
from servertrack.common.config import endpoint, path, positive_float
from servertrack.common.curve_keys import KeyFileError, load_pair, load_public
from servertrack.common.settings import ConfigError, Option, Settings

OPTIONS = (
    Option("--connect", endpoints.INGEST, "receiver endpoint to connect to", endpoint),
    Option("--interval", 1.0, "seconds between samples", positive_float),
    Option(
        "--name",
        None,
        "server name to report (default: this host's FQDN, or its host name if that is localhost)",
    ),
    Option("--format", "msgpack", "wire format", choices=tuple(sorted(wire.FORMATS))),
    Option(
        "--curve-secret",
        None,
        "this agent's CURVE secret key file (from servertrack keys); needs --server-key",
        path,
    ),
    Option("--server-key", None, "the receiver's CURVE public key file", path),
)


class _Fields(NamedTuple):
    connect: str
    interval: float
    name: str | None
    format: str
    curve_secret: str | None
    server_key: str | None


class AgentSettings(_Fields, Settings):
    """The agent's settings; :meth:`daemon_config` makes the agent's config of them."""

    __slots__ = ()
    COMMAND = "agent"
    OPTIONS = OPTIONS

    def check(self) -> None:
        try:
            if not curve.check_flags(self.curve_secret, self.server_key):
                return
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for flag, load, file in (
            ("--curve-secret", load_pair, self.curve_secret),
            ("--server-key", load_public, self.server_key),
        ):
            try:
                load(str(file))
            except KeyFileError as err:
                raise ConfigError(str(err), flag) from None

    def daemon_config(self) -> AgentConfig:
        return AgentConfig(
            self.connect,
            self.interval,
            self.name,
            self.format,
            curve_secret=self.curve_secret,
            server_key=self.server_key,
        )
