"""Anomaly scores on the dashboard, in headless Chromium, against a real host restored from a
warmed-up snapshot (:mod:`tests.anomaly_support`): the overview's anomaly columns and their
sort, and the anomalous minutes marked on a server's chart, each checked against the oracle's
scores and the product's one threshold."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.testing.hosts import HostUnderTest, launch_host
from tests.anomaly_support import SERVERS, Scores, oracle_scores, write_warm_snapshot
from tests.conftest import stop_all
from tests.test_dashboard_browser import (  # the module's browser and its console check
    COLOUR_PIXELS_JS,
    CPU_RGB,
    browser,  # noqa: F401 (a fixture)
    page,  # noqa: F401 (a fixture)
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
ANOMALY_RGB = (213, 0, 0)
ROWS_JS = """
return Array.from(document.querySelectorAll('#rows tr')).map(tr => ({
  server: tr.dataset.server, cpu: tr.querySelector('td.cpu-anomaly').innerText,
  ram: tr.querySelector('td.ram-anomaly').innerText,
  flagged: tr.querySelector('td.cpu-anomaly .anomalous') !== null}));
"""


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostUnderTest, Scores]]:
    workdir = tmp_path_factory.mktemp("anomaly-dashboard")
    samples = write_warm_snapshot(workdir / "warm-data" / "aggregator.npz", time.time())
    host = launch_host(workdir, "--no-agent", name="warm")
    yield host, oracle_scores(samples)
    stop_all([host])


def newest(oracle: Scores, name: str, metric: str) -> float:
    scores = oracle[(name, metric)]
    return scores[max(scores)] if scores else math.nan


def shown(text: str, score: float) -> bool:
    """The cell's text for ``score``: three decimals, flagged at or above the threshold."""
    if math.isnan(score):
        return text.strip() == "\u2013"
    flag = "\u26a0 " if score >= STANDARD_THRESHOLD else ""
    return text.strip() == f"{flag}{score:.3f}".strip()


def test_the_overview_shows_and_sorts_by_the_anomaly_scores(
    page: webdriver.Chrome,  # noqa: F811 (the fixture imported above)
    warm: tuple[HostUnderTest, Scores],
) -> None:
    """``/?sort=cpu_anomaly`` lists the server that just jumped first, each row's anomaly
    cells show the oracle's newest scores (flagged at the threshold the page was given), and
    the RAM anomaly header sorts by ram scores, the server without any last."""
    host, oracle = warm
    page.get(f"{host.api}/?sort=cpu_anomaly&refresh=0.25")
    rows = wait_for(page, "the rows", lambda d: len(r := d.execute_script(ROWS_JS)) == 4 and r)
    assert float(
        page.find_element(By.TAG_NAME, "body").get_attribute("data-anomaly-threshold")
    ) == (STANDARD_THRESHOLD)
    assert rows[0]["server"] == SERVERS[0]
    assert rows[0]["flagged"]
    for row in rows:
        for metric in ("cpu", "ram"):
            assert shown(row[metric], newest(oracle, row["server"], metric)), row
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="ram_anomaly"] button').click()
    sort = page.find_element(By.CSS_SELECTOR, 'th[data-sort="ram_anomaly"]')
    wait_for(  # set when the rows of the new order are drawn
        page, "the ram order", lambda d: sort.get_attribute("aria-sort") == "descending"
    )
    ordered = page.execute_script(ROWS_JS)
    assert ordered[-1]["server"] == SERVERS[3]  # no ram at all: last
    scores = [newest(oracle, row["server"], "ram") for row in ordered[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert "sort=ram_anomaly" in page.current_url


def test_a_server_chart_marks_its_anomalous_minutes(
    page: webdriver.Chrome,  # noqa: F811
    warm: tuple[HostUnderTest, Scores],
) -> None:
    """The minute chart draws a marker for each anomalous minute of the oracle (and the list
    beside it names them); the hour chart, whose buckets carry no score, draws none."""
    host, oracle = warm
    name = SERVERS[0]
    page.get(f"{host.api}/ui/servers/{name}")
    listed = wait_for(
        page,
        "the anomalous minutes",
        lambda d: (
            (n := d.find_element(By.ID, "anomalies-minutes")).get_attribute("data-count") and n
        ),
    )
    now_minute = int(time.time() // 60)
    want = sum(
        score >= STANDARD_THRESHOLD
        for metric in ("cpu", "ram")
        for minute, score in oracle[(name, metric)].items()
        if now_minute - 59 <= minute
    )
    assert want >= 1
    assert int(listed.get_attribute("data-count")) == want, listed.text
    minutes, hours = wait_for(
        page,
        "two charts",
        lambda d: len(c := d.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2 and c,
    )
    assert page.execute_script(COLOUR_PIXELS_JS, minutes, *ANOMALY_RGB) > 20 * want
    assert page.execute_script(COLOUR_PIXELS_JS, minutes, *CPU_RGB) > 20
    assert page.execute_script(COLOUR_PIXELS_JS, hours, *ANOMALY_RGB) == 0
