"""``servertrack aggregator``'s options, declared once, and the settings they make."""

from __future__ import annotations

from dataclasses import dataclass

from servertrack.aggregator.daemon import AggregatorConfig
from servertrack.alerts.delivery import base_url_argument
from servertrack.alerts.evaluate import DEFAULT_EXTERNAL_URL, DEFAULT_INTERVAL
from servertrack.alerts.rules import DEFAULT_RULES, Rule, load_rules, rules_path_argument
from servertrack.common import endpoints
from servertrack.common.config import endpoint, path, positive_float, positive_int
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.common.settings import Option, Settings
from servertrack.store.options import STORE_OPTIONS, WRITER_OPTIONS, check_password_file

DAEMON_OPTIONS = (
    Option(
        "--batches",
        endpoints.AGGREGATOR_BATCHES,
        "endpoint to bind for the receiver's batches",
        endpoint,
    ),
    Option("--query", endpoints.AGGREGATOR_QUERY, "endpoint to bind for API queries", endpoint),
    Option(
        "--receiver-control",
        endpoints.RECEIVER_CONTROL,
        "receiver control endpoint (to look up server names)",
        endpoint,
    ),
    Option(
        "--snapshot",
        None,
        "file to snapshot the rollups to and restore from (none: memory only)",
        path,
    ),
    Option("--snapshot-interval", 30.0, "seconds between snapshots", positive_float),
    Option(
        "--max-servers",
        DEFAULT_MAX_SERVERS,
        "servers tracked at most in memory; samples of new ones beyond it are dropped "
        "(server_limit). With --store redis the receivers' limits apply instead (a record is "
        "refused before it is answered, never dropped after)",
        positive_int,
    ),
    *STORE_OPTIONS,
    *WRITER_OPTIONS,
)
ALERT_OPTIONS = (
    Option(
        "--rules",
        None,
        "alert rules file (YAML; see deploy/servertrack-rules.yml); a bad file is refused with "
        "every mistake's line and field. None: the default rules",
        rules_path_argument,
    ),
    Option("--no-rules", False, "evaluate no alert rules at all (even with --rules)", switch=True),
    Option(
        "--rules-interval",
        DEFAULT_INTERVAL,
        "seconds between two evaluations of every alert rule over every server",
        positive_float,
    ),
    Option(
        "--alertmanager",
        (),
        "an Alertmanager's base URL (http://host:9093) to send alerts to",
        base_url_argument,
        repeated=True,
    ),
    Option(
        "--external-url",
        DEFAULT_EXTERNAL_URL,
        "where people reach this host's dashboard: each alert links to its server's page there",
        base_url_argument,
    ),
    Option(
        "--alerts-state",
        None,
        "file keeping pending and firing alerts across restarts when there is no --snapshot "
        "(a Redis --store); with a snapshot they are kept in it",
        path,
    ),
)
OPTIONS = (*DAEMON_OPTIONS, *ALERT_OPTIONS)


@dataclass(frozen=True, slots=True)
class AggregatorSettings(Settings):
    """The aggregator's settings; :meth:`daemon_config` makes the daemon's config of them."""

    COMMAND = "aggregator"
    OPTIONS = OPTIONS

    batches: str
    query: str
    receiver_control: str
    snapshot: str | None
    snapshot_interval: float
    max_servers: int
    store: str
    store_password_file: str | None
    store_timeout: float
    store_flush: float
    store_wait_replicas: int
    store_hold: float
    rules: str | None
    no_rules: bool
    rules_interval: float
    alertmanager: tuple[str, ...]
    external_url: str
    alerts_state: str | None

    def alert_rules(self) -> tuple[Rule, ...]:
        """The rules to evaluate: none with ``--no-rules``, the file's, or the default rules
        (raises :class:`~servertrack.alerts.rules.RulesError` for a file that went bad since
        it was checked)."""
        if self.no_rules:
            return ()
        return load_rules(self.rules) if self.rules else DEFAULT_RULES

    def check(self) -> None:
        check_password_file(self.store_password_file)

    def daemon_config(self) -> AggregatorConfig:
        return AggregatorConfig(
            self.batches,
            self.query,
            self.receiver_control,
            snapshot=self.snapshot,
            snapshot_interval=self.snapshot_interval,
            max_servers=self.max_servers,
            store_flush=self.store_flush,
            rules=self.alert_rules(),
            rules_interval=self.rules_interval,
            alertmanagers=self.alertmanager,
            external_url=self.external_url,
            alerts_state=self.alerts_state,
        )
