"""The fleet overview while a whole fleet appears and reports, through a real host: ``servertrack
run --graphite-port`` and one TCP client that names every server within 5 s (a cpu line each),
then has each report a cpu and a ram line every 5 s, while ``/fleet`` is read four times a
second and ``/fleet/grid`` every 5 s, as dashboards do.

Every /fleet page answers 200 within 1 s, while the names appear and while they report; every
batch reaches the aggregator within 2 s of being cut (the receiver's flush rule); a refresh of
the grid costs a few bytes a server (the names travel only when they change). At the server cap
(250,000, ``--max-servers``' default) it is a slow test; 20,000 servers check the same in the
default run.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import pytest

from servertrack.common.fleet_testing import FleetSchedule, run_fleet
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.common.testing import HostUnderTest, free_port

pytestmark = pytest.mark.e2e
PAGE_WITHIN_S = 1.0
LAG_LIMIT_S = 2.0
GRID_BYTES_PER_SERVER = 4
"""A grid refresh: two bytes of cpu (in base64) and a status letter a server, and no name."""


def check_fleet(start_host: Callable[..., HostUnderTest], servers: int) -> None:
    port = free_port()
    host = start_host("--no-agent", "--graphite-port", str(port))
    schedule = FleetSchedule(servers, create_seconds=5, report_seconds=10)
    run = run_fleet(host, port, schedule)

    assert run.sender["error"] is None, run.sender
    assert run.totals["accepted"] == schedule.lines, run.totals
    assert run.totals["applied"] == schedule.lines, run.totals
    status, page = host.get("/fleet?limit=1")
    assert status == 200 and page["total"] == servers, page
    for phase, reads in (("appear", run.creating()), ("report", run.reporting())):
        assert len(reads) >= 10, (phase, len(reads))
        late = [(r.status, round(r.seconds, 3)) for r in reads if r.status != 200]
        late += [(r.status, round(r.seconds, 3)) for r in reads if r.seconds > PAGE_WITHIN_S]
        assert late == [], f"/fleet pages while the servers {phase}: {late}"
    lags = run.lags_creating() + run.lags_reporting()
    assert len(lags) >= schedule.ticks, sorted(run.lags)
    assert max(lags) < LAG_LIMIT_S, (run.lags_creating(), run.lags_reporting())

    status, named = host.get("/fleet/grid")
    assert status == 200 and named["count"] == servers == len(named["servers"])
    status, refresh = host.get(f"/fleet/grid?names={named['names_version']}")
    assert status == 200 and "servers" not in refresh and refresh["count"] == servers
    status, body = host.get_bytes(f"/fleet/grid?names={named['names_version']}")
    assert status == 200 and len(body) <= GRID_BYTES_PER_SERVER * servers + 512, len(body)
    codes = np.frombuffer(base64.b64decode(refresh["cpu"]), "<u2")
    assert codes.size == servers and int(codes.max()) <= 1000  # every server has a cpu
    assert refresh["status"] == "l" * servers


def test_20_000_names_appear_and_report_while_the_overview_answers(
    start_host: Callable[..., HostUnderTest],
) -> None:
    check_fleet(start_host, 20_000)


@pytest.mark.faults
def test_the_server_cap_appears_and_reports_while_the_overview_answers(
    start_host: Callable[..., HostUnderTest],
) -> None:
    check_fleet(start_host, DEFAULT_MAX_SERVERS)
