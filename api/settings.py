"""``servertrack api``'s options, declared once, and the settings they make."""

from __future__ import annotations

from dataclasses import dataclass

from servertrack.api.app import REQUEST_DEADLINE
from servertrack.api.exposure import FLAG as BEHIND_PROXY
from servertrack.api.exposure import granian_exposure_error
from servertrack.api.server import CONNECTION_LIMIT, IDLE_TIMEOUT, REQUEST_TIMEOUT
from servertrack.common import endpoints
from servertrack.common.config import endpoint, path, port, positive_float, positive_int
from servertrack.common.settings import ConfigError, Option, Settings
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.store.options import STORE_OPTIONS, check_password_file

SERVERS = ("waitress", "granian")
OPTIONS = (
    Option("--host", "127.0.0.1", "address to listen on"),
    Option("--port", 8080, "HTTP port", port),
    Option(
        "--http",
        "waitress",
        "HTTP server: waitress (pure Python, every connection limit) or granian (Rust, the "
        "faster; pip install servertrack[fast])",
        choices=SERVERS,
    ),
    Option(
        BEHIND_PROXY,
        False,
        "granian: a proxy that buffers request bodies is in front, so it may listen beyond "
        "loopback (granian gives a slowly sent body no deadline)",
        switch=True,
    ),
    Option(
        "--workers",
        1,
        "granian: worker processes, each with its own app, caches and counters",
        positive_int,
    ),
    Option("--threads", 64, "waitress worker threads (keep >= concurrent clients)", positive_int),
    Option(
        "--idle-timeout",
        IDLE_TIMEOUT,
        "seconds a connection may stay open with no request before it is closed",
        positive_float,
    ),
    Option(
        "--request-timeout",
        REQUEST_TIMEOUT,
        "seconds a request may take to arrive whole (slow-loris clients are cut after it)",
        positive_float,
    ),
    Option(
        "--connection-limit",
        CONNECTION_LIMIT,
        "open connections at most; beyond it the longest-idle one is closed for the newcomer",
        positive_int,
    ),
    Option(
        "--request-deadline",
        REQUEST_DEADLINE,
        "seconds a request may wait for a worker thread before it is answered 503 unworked",
        positive_float,
    ),
    Option(
        "--receiver-control",
        None,
        f"receiver control endpoint, for records (default {endpoints.RECEIVER_CONTROL}; with a "
        "Redis --store: none, records answer 503; given alone, records go to that receiver)",
        endpoint,
    ),
    Option(
        "--aggregator-query",
        None,
        f"aggregator query endpoint (default {endpoints.AGGREGATOR_QUERY}; with a Redis --store "
        "reads go to Redis and this gives /stats and the daemons' health)",
        endpoint,
    ),
    Option(
        "--backend-timeout",
        0.5,
        "seconds to wait for the receiver/aggregator to take a request (503 after that)",
        positive_float,
    ),
    Option(
        "--record-timeout",
        5.0,
        "seconds the receiver may take to confirm a record it has taken (large batches)",
        positive_float,
    ),
    Option(
        "--token-file",
        None,
        "file whose first line is the bearer token POST requests need (default: none needed)",
        path,
    ),
    Option(
        "--read-token-file",
        None,
        "file whose first line is the bearer token GET requests need (/health and "
        "/openapi.json stay open; default: none needed)",
        path,
    ),
    *STORE_OPTIONS,
)


@dataclass(frozen=True, slots=True)
class ApiSettings(Settings):
    """The API's settings. Token files, not tokens: ``ps`` never shows a token."""

    COMMAND = "api"
    OPTIONS = OPTIONS

    host: str
    port: int
    http: str
    behind_buffering_proxy: bool
    workers: int
    threads: int
    idle_timeout: float
    request_timeout: float
    connection_limit: int
    request_deadline: float
    receiver_control: str | None
    aggregator_query: str | None
    backend_timeout: float
    record_timeout: float
    token_file: str | None
    read_token_file: str | None
    store: str
    store_password_file: str | None
    store_timeout: float

    def check(self) -> None:
        exposure = granian_exposure_error(self.http, self.host, self.behind_buffering_proxy)
        if exposure:
            raise ConfigError(exposure)
        for flag, file in (
            ("--token-file", self.token_file),
            ("--read-token-file", self.read_token_file),
        ):
            if file:
                try:
                    read_token_file(file)
                except TokenFileError as err:
                    raise ConfigError(str(err), flag) from None
        check_password_file(self.store_password_file)
