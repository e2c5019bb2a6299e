"""``servertrack receiver``'s options, declared once, and the settings they make."""

from __future__ import annotations

from dataclasses import dataclass

from servertrack.common import endpoints
from servertrack.common.config import (
    endpoint,
    non_negative_float,
    non_negative_int,
    optional_endpoint,
    optional_tcp_endpoint,
    path,
    positive_float,
    positive_int,
)
from servertrack.common.limits import DEFAULT_DEDUP_LIMIT, DEFAULT_MAX_SERVERS
from servertrack.common.settings import ConfigError, Option, Settings
from servertrack.receiver import curve, graphite
from servertrack.receiver.daemon import ReceiverConfig
from servertrack.receiver.graphite import Rule
from servertrack.receiver.graphite_listener import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MIN_RATE,
)

OPTIONS = (
    Option("--bind", endpoints.INGEST, "endpoint the agents' PUB sockets connect to", endpoint),
    Option(
        "--control",
        endpoints.RECEIVER_CONTROL,
        "endpoint for records from the API and requests from the aggregator",
        endpoint,
    ),
    Option(
        "--aggregator",
        endpoints.AGGREGATOR_BATCHES,
        "aggregator batch endpoint to push to",
        endpoint,
    ),
    Option(
        "--aggregator-query",
        endpoints.AGGREGATOR_QUERY,
        "aggregator query endpoint, asked at start for each server's newest seq ('' for none)",
        optional_endpoint,
    ),
    Option(
        "--ingest-max-connections",
        0,
        "connections the --bind port holds at most (agents, one each); a newcomer beyond it is "
        "cut at once (ingest_connections_refused); 0 for what the open-files limit leaves",
        non_negative_int,
    ),
    Option("--accept-pickle", False, "also accept the legacy pickle.gz wire format", switch=True),
    Option("--flush-interval", 1.0, "seconds between batches", positive_float),
    Option("--retention", 300.0, "seconds of batches kept in the time index", positive_float),
    Option(
        "--max-servers",
        DEFAULT_MAX_SERVERS,
        "server names tracked at most; samples of a new name beyond it are refused (server_limit)",
        positive_int,
    ),
    Option(
        "--dedup-limit",
        DEFAULT_DEDUP_LIMIT,
        "(server, ts) keys of seq-less samples remembered for de-duplication at most",
        positive_int,
    ),
    Option(
        "--curve-secret",
        None,
        "this receiver's CURVE secret key file (from servertrack keys); needs --authorized-keys",
        path,
    ),
    Option(
        "--authorized-keys",
        None,
        "directory of agents' public key files (*.key); only those agents are accepted, and a "
        "file added later admits its agent without a restart",
        path,
    ),
    Option(
        "--graphite",
        "",
        "tcp://HOST:PORT to take Graphite plaintext on, e.g. tcp://127.0.0.1:2003 ('' for off)",
        optional_tcp_endpoint,
    ),
    Option(
        "--graphite-map",
        None,
        "file of rules mapping Graphite paths to a server's cpu or ram, tried before the "
        "built-in ones (see the README)",
        path,
    ),
    Option(
        "--graphite-max-line",
        graphite.MAX_LINE,
        "bytes a Graphite line may hold; longer ones are discarded (line_too_long)",
        positive_int,
    ),
    Option(
        "--graphite-rate",
        graphite.DEFAULT_RATE,
        "Graphite lines per second one connection may send; one over it is closed (rate_limited)",
        positive_float,
    ),
    Option(
        "--graphite-max-connections",
        DEFAULT_MAX_CONNECTIONS,
        "Graphite connections open at most; newcomers beyond are closed at once",
        positive_int,
    ),
    Option(
        "--graphite-idle-timeout",
        DEFAULT_IDLE_TIMEOUT,
        "seconds a Graphite connection may stay silent before it is closed",
        positive_float,
    ),
    Option(
        "--graphite-line-timeout",
        DEFAULT_LINE_TIMEOUT,
        "seconds a Graphite line may take from its first byte to its newline; a connection "
        "slower than that is closed (slow_line)",
        positive_float,
    ),
    Option(
        "--graphite-min-rate",
        DEFAULT_MIN_RATE,
        "bytes a second a Graphite connection must send on average over each "
        "--graphite-idle-timeout window, or be closed (slow_rate); 0 for no minimum",
        non_negative_float,
    ),
)


@dataclass(frozen=True, slots=True)
class ReceiverSettings(Settings):
    """The receiver's settings; :meth:`daemon_config` makes the daemon's config of them."""

    COMMAND = "receiver"
    OPTIONS = OPTIONS

    bind: str
    control: str
    aggregator: str
    aggregator_query: str
    ingest_max_connections: int
    accept_pickle: bool
    flush_interval: float
    retention: float
    max_servers: int
    dedup_limit: int
    curve_secret: str | None
    authorized_keys: str | None
    graphite: str
    graphite_map: str | None
    graphite_max_line: int
    graphite_rate: float
    graphite_max_connections: int
    graphite_idle_timeout: float
    graphite_line_timeout: float
    graphite_min_rate: float

    def check(self) -> None:
        try:
            curve.check_config(self.curve_secret, self.authorized_keys)
        except curve.CurveConfigError as err:
            raise ConfigError(str(err)) from None
        self.graphite_rules()

    def graphite_rules(self) -> tuple[Rule, ...]:
        """The rules of ``--graphite-map`` (none without it)."""
        if not self.graphite_map:
            return ()
        try:
            return tuple(graphite.load_rules(self.graphite_map))
        except graphite.RuleError as err:
            raise ConfigError(str(err), "--graphite-map") from None

    def daemon_config(self) -> ReceiverConfig:
        return ReceiverConfig(
            bind=self.bind,
            control=self.control,
            aggregator=self.aggregator,
            aggregator_query=self.aggregator_query or None,
            accept_pickle=self.accept_pickle,
            flush_interval=self.flush_interval,
            retention=self.retention,
            max_servers=self.max_servers,
            dedup_limit=self.dedup_limit,
            curve_secret=self.curve_secret,
            authorized_keys=self.authorized_keys,
            graphite=self.graphite or None,
            graphite_rules=self.graphite_rules(),
            graphite_max_line=self.graphite_max_line,
            graphite_rate=self.graphite_rate,
            graphite_max_connections=self.graphite_max_connections,
            graphite_idle_timeout=self.graphite_idle_timeout,
            graphite_line_timeout=self.graphite_line_timeout,
            graphite_min_rate=self.graphite_min_rate,
            ingest_max_connections=self.ingest_max_connections or None,
        )
