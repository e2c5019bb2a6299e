"""``servertrack aggregator``'s options, declared once, and the settings they make."""

from __future__ import annotations

from dataclasses import dataclass

from servertrack.aggregator.daemon import AggregatorConfig
from servertrack.common import endpoints
from servertrack.common.config import endpoint, path, positive_float, positive_int
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.common.settings import Option, Settings
from servertrack.store.options import STORE_OPTIONS, WRITER_OPTIONS, check_password_file

OPTIONS = (
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
        )
