"""The dashboard in a real browser: Debian's headless Chromium driven through chromedriver by
Selenium, against a real ``servertrack run --no-agent`` fed through ``POST /loads``.

Assertions are on what a person sees (text in the DOM after the scripts ran, pixels of the chart
colours on the canvas); every test reads the browser console and fails on errors, apart from the
failed requests a test provokes on purpose (a 401 without token, a 404 for an unknown server, the
503s of a stopped aggregator). Screenshots are written under the test's temporary directory.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.testing.fleet_load import FleetSchedule, run_fleet
from servertrack.testing.hosts import HostUnderTest, free_port, launch_host, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0
MINUTE = 60
CPU_RGB = (21, 101, 192)
RAM_RGB = (142, 36, 170)
Sample = tuple[str, float, float | None, float | None]


# -- the browser -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Debian's chromium and chromium-driver are needed (make .venv/.test-installed)"
    )
    with tempfile.TemporaryDirectory(prefix="servertrack-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1200,800",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(WAIT)
            driver.set_script_timeout(WAIT)
            yield driver
        finally:
            driver.quit()


def console_errors(driver: webdriver.Chrome, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE console entries since the last call, except those containing an allowed text."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]


@pytest.fixture
def page(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    """The browser, with the console checked for errors after the test."""
    browser.get_log("browser")  # drop what earlier tests left
    yield browser
    errors = console_errors(browser, getattr(browser, "allowed_console", ()))
    browser.allowed_console = ()
    browser.get("about:blank")  # no page keeps polling a host the next test no longer has
    browser.get_log("browser")
    assert errors == [], errors


def wait_for(driver: webdriver.Chrome, what: str, predicate: Callable[[Any], Any]) -> Any:
    def checked(d: Any) -> Any:
        try:
            return predicate(d)
        except (StaleElementReferenceException, JavascriptException):
            return False

    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(checked, f"waiting for {what}")


TABLE_JS = """
return Array.from(document.querySelectorAll('#rows tr')).map(tr => ({
  server: tr.querySelector('td.name').innerText, cpu: tr.querySelector('td.cpu').innerText,
  ram: tr.querySelector('td.ram').innerText, status: tr.querySelector('td.status').innerText,
  seen: tr.querySelector('td.seen').innerText}));
"""
COLOUR_PIXELS_JS = """
const [canvas, r, g, b] = arguments;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let hits = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 200 && Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30
      && Math.abs(data[i + 2] - b) < 30) hits += 1;
}
return hits;
"""


def table(driver: webdriver.Chrome) -> list[dict[str, str]]:
    return driver.execute_script(TABLE_JS)


# -- the host and what was posted to it ------------------------------------------------------------
@dataclass
class Fleet:
    """A running host and every sample posted to it, for the independent expectations."""

    host: HostUnderTest
    samples: list[Sample] = field(default_factory=list)

    def post(self, samples: list[Sample]) -> None:
        for start in range(0, len(samples), 10_000):
            chunk = samples[start : start + 10_000]
            body = [{"server": s, "ts": ts, "cpu": c, "ram": r} for s, ts, c, r in chunk]
            status, answer = self.host.post("/loads", body)
            assert status == 202, answer
        self.samples += samples
        names = {s[0] for s in samples}
        wait_until(
            lambda: self.host.get("/fleet?limit=1")[1]["total"] >= len(self.names()),
            WAIT,
            f"{len(names)} posted servers to be applied",
        )

    def names(self) -> set[str]:
        return {s[0] for s in self.samples}

    def current(self, name: str, index: int) -> float | None:
        """Mean of the newest minute bucket holding the metric (index 2 cpu, 3 ram)."""
        minutes: dict[int, list[float]] = {}
        for sample in self.samples:
            if sample[0] == name and sample[index] is not None:
                minutes.setdefault(int(sample[1] // MINUTE), []).append(sample[index])
        if not minutes:
            return None
        newest = minutes[max(minutes)]
        return math.fsum(newest) / len(newest)

    def minute_means(self, name: str) -> set[float]:
        minutes: dict[int, list[float]] = {}
        for sample in self.samples:
            if sample[0] == name and sample[2] is not None:
                minutes.setdefault(int(sample[1] // MINUTE), []).append(sample[2])
        return {math.fsum(v) / len(v) for v in minutes.values()}


def history(rng: random.Random, name: str, base: float, now: float) -> list[Sample]:
    """Three samples a minute over the last 12 minutes around ``base`` percent, and three an
    hour over the 5 hours before."""
    out = []
    for hour in range(1, 6):
        for j in range(3):
            ts = now - hour * 3600 - j * 600
            out.append((name, ts, round(rng.uniform(0, 100), 3), round(rng.uniform(20, 80), 3)))
    for minute in range(12):
        for j in range(3):
            ts = now - minute * MINUTE - j * 13 - 1
            cpu = round(min(100.0, max(0.0, base + rng.uniform(-4, 4))), 3)
            out.append((name, ts, cpu, round(rng.uniform(20, 80), 3)))
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    host = launch_host(tmp_path_factory.mktemp("dashboard"), "--no-agent", name="host")
    try:
        rng = random.Random(42)
        fleet = Fleet(host)
        now = time.time()
        samples: list[Sample] = []
        for index in range(8):
            samples += history(rng, f"web-{index}.example.com", 10 + index * 11, now)
        for index in range(4):
            samples += history(rng, f"db-{index}.example.com", 30 + index * 17, now)
        fleet.post(samples)
        yield fleet
    finally:
        host.process.stop()


def close(text: str, value: float | None) -> bool:
    if value is None:
        return text.strip() == "\u2013"  # the dash shown for no value
    return abs(float(text) - value) <= 0.05 + 1e-9


REFRESH = 0.25
"""Seconds between the page's refreshes (``?refresh=``) where a test waits on one."""


def open_overview(driver: webdriver.Chrome, fleet: Fleet, query: str = "") -> None:
    driver.get(f"{fleet.host.api}/{query}")
    wait_for(driver, "the first refresh", lambda d: d.find_element(By.ID, "rows").text)


# -- overview --------------------------------------------------------------------------------------
def test_the_overview_lists_posted_servers_with_their_current_values(
    page: webdriver.Chrome, fleet: Fleet, tmp_path: Path
) -> None:
    open_overview(page, fleet)
    rows = wait_for(
        page, "every server", lambda d: len(table(d)) >= len(fleet.names()) and table(d)
    )
    assert {row["server"] for row in rows} == fleet.names()
    for row in rows:
        name = row["server"]
        assert close(row["cpu"], fleet.current(name, 2)), (row, fleet.current(name, 2))
        assert close(row["ram"], fleet.current(name, 3)), (row, fleet.current(name, 3))
        assert row["status"] == "live" and row["seen"].endswith("s ago")
    live = page.find_element(By.ID, "count-live").text
    assert int(live) == len(fleet.names())
    assert page.find_elements(By.CSS_SELECTOR, "#rows svg.spark path")
    page.save_screenshot(str(tmp_path / "overview.png"))
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_the_heat_grid_names_each_cell_on_hover_and_in_its_text_alternative(
    page: webdriver.Chrome, fleet: Fleet
) -> None:
    open_overview(page, fleet)

    def listed(d: Any) -> list[str]:
        items = d.find_elements(By.CSS_SELECTOR, "#grid-list li")
        return [li.get_attribute("textContent") for li in items]

    items = wait_for(
        page, "the grid's text alternative", lambda d: len(listed(d)) == len(fleet.names())
    )
    items = listed(page)
    first = sorted(fleet.names())[0]  # the grid is in name order
    name, rest = items[0].split(": cpu ")
    assert name == first and rest.endswith(" %, live")
    assert close(rest.split(" ")[0], fleet.current(first, 2))
    canvas = page.find_element(By.ID, "grid")
    box = page.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    ActionChains(page).move_to_element_with_offset(
        canvas, -box["width"] / 2 + 5, -box["height"] / 2 + 5
    ).perform()
    tip = wait_for(page, "the tooltip", lambda d: d.find_element(By.ID, "grid-tip").text)
    assert tip == items[0]


def test_sorting_by_cpu_puts_the_hottest_first(page: webdriver.Chrome, fleet: Fleet) -> None:
    open_overview(page, fleet)
    by_cpu = sorted(fleet.names(), key=lambda name: -(fleet.current(name, 2) or -1.0))
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="cpu"] button').click()
    wait_for(
        page,
        "a descending cpu sort",
        lambda d: d.find_element(By.CSS_SELECTOR, 'th[data-sort="cpu"]').get_attribute("aria-sort")
        == "descending" and table(d)[0]["server"] == by_cpu[0],
    )  # fmt: skip
    shown = [float(row["cpu"]) for row in table(page)]
    assert shown == sorted(shown, reverse=True)
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="cpu"] button').click()
    wait_for(page, "an ascending cpu sort", lambda d: table(d)[0]["server"] == by_cpu[-1])
    assert "sort=cpu" in page.current_url and "order=asc" in page.current_url


def test_the_filter_narrows_the_rows(page: webdriver.Chrome, fleet: Fleet) -> None:
    open_overview(page, fleet)
    page.find_element(By.ID, "filter").send_keys("DB-")
    expected = sorted(name for name in fleet.names() if "db-" in name.lower())
    assert expected
    wait_for(page, "the filtered rows", lambda d: sorted(r["server"] for r in table(d)) == expected)
    assert page.find_element(By.ID, "range").text == f"1\u2013{len(expected)} of {len(expected)}"


def test_paging_walks_through_every_row(page: webdriver.Chrome, fleet: Fleet) -> None:
    open_overview(page, fleet, "?sort=name&limit=5")
    seen: list[str] = []
    wait_for(page, "a page of 5", lambda d: len(table(d)) == 5)
    while True:
        rows = [row["server"] for row in table(page)]
        seen += rows
        button = page.find_element(By.ID, "next")
        if not button.is_enabled():
            break
        button.click()
        wait_for(
            page, "the next page", lambda d, rows=rows: [r["server"] for r in table(d)] != rows
        )
    assert seen == sorted(fleet.names())


def test_a_server_that_stops_reporting_turns_stale(page: webdriver.Chrome, fleet: Fleet) -> None:
    """Its row turns from live to stale by itself, with no reload of the page."""
    now = time.time()
    fleet.post(
        [("quiet.example.com", now - 112, 3.0, 3.0), ("silent.example.com", now - 150, 2.0, 2.0)]
    )
    open_overview(page, fleet, f"?q=.example.com&sort=name&refresh={REFRESH}")

    def status(name: str) -> Callable[[Any], str]:
        return lambda d: next((r["status"] for r in table(d) if r["server"] == name), "")

    assert wait_for(page, "silent to show", status("silent.example.com")) == "stale"
    assert wait_for(page, "quiet to show", status("quiet.example.com")) == "live"
    page.execute_script("window.stillTheSamePage = true")
    wait_for(page, "quiet to turn stale", lambda d: status("quiet.example.com")(d) == "stale")
    assert page.execute_script("return window.stillTheSamePage") is True
    assert int(page.find_element(By.ID, "count-stale").text) >= 2


HIDE_AFTER_NEXT_REFRESH_JS = """
const observer = new MutationObserver(() => {
  observer.disconnect();
  Object.defineProperty(document, 'hidden', {value: true, configurable: true});
  document.dispatchEvent(new Event('visibilitychange'));
  window.hiddenAt = Number(document.body.dataset.refreshed);
});
observer.observe(document.body, {attributes: true, attributeFilter: ['data-refreshed']});
"""
"""Hides the tab the moment a refresh ends (before its next one is scheduled), so that no
refresh is in flight while it is hidden; ``window.hiddenAt`` is the refresh count then."""


def test_refreshing_pauses_while_the_tab_is_hidden(page: webdriver.Chrome, fleet: Fleet) -> None:
    """Refreshes come by themselves at the interval the address asks for (5 s without it); none
    while the tab is hidden; one at once when it shows again."""
    open_overview(page, fleet, f"?refresh={REFRESH}")
    assert f"refresh={REFRESH}" in page.current_url  # kept when the page rewrites its address
    refreshed = "return Number(document.body.dataset.refreshed || 0)"
    start = page.execute_script(refreshed)
    wait_for(
        page, "three refreshes by themselves", lambda d: d.execute_script(refreshed) >= start + 3
    )
    page.execute_script(HIDE_AFTER_NEXT_REFRESH_JS)
    hidden_at = wait_for(
        page, "the tab hidden", lambda d: d.execute_script("return window.hiddenAt")
    )
    # Eight intervals on the page's own clock (its timers fire in order of their due times).
    page.execute_script(
        "window.quiet = false; setTimeout(() => { window.quiet = true; }, arguments[0]);",
        8 * REFRESH * 1000,
    )
    wait_for(page, "eight refresh intervals", lambda d: d.execute_script("return window.quiet"))
    assert page.execute_script(refreshed) == hidden_at
    page.execute_script(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    wait_for(page, "a refresh on showing", lambda d: d.execute_script(refreshed) > hidden_at)


# -- one server ------------------------------------------------------------------------------------
def test_a_server_page_draws_both_charts_and_shows_a_bucket_on_hover(
    page: webdriver.Chrome, fleet: Fleet, tmp_path: Path
) -> None:
    name = "web-5.example.com"
    page.get(f"{fleet.host.api}/ui/servers/{name}")
    canvases = wait_for(
        page,
        "two charts",
        lambda d: len(c := d.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2 and c,
    )
    for canvas in canvases:
        for rgb in (CPU_RGB, RAM_RGB):
            assert page.execute_script(COLOUR_PIXELS_JS, canvas, *rgb) > 20, rgb
    assert page.find_element(By.TAG_NAME, "h1").text.startswith(name)
    assert page.find_element(By.ID, "h-lost").text == "0"
    assert close(page.find_element(By.ID, "h-cpu").text, fleet.current(name, 2))
    over = page.find_element(By.CSS_SELECTOR, "#chart-minutes .u-over")
    width = over.size["width"]
    readouts = set()
    for minutes_ago in (3, 7):
        offset = width * (59 - minutes_ago) / 59 - width / 2
        ActionChains(page).move_to_element_with_offset(over, offset, 0).perform()
        text = wait_for(
            page,
            "the hovered bucket",
            lambda d: (t := d.find_element(By.ID, "readout-minutes").text) not in readouts and t,
        )
        readouts.add(text)
        assert "3 samples" in text, text
        cpu = float(text.split("CPU ")[1].split(" %")[0])
        assert any(abs(cpu - mean) <= 0.05 + 1e-9 for mean in fleet.minute_means(name)), text
    links = [a.get_attribute("href") for a in page.find_elements(By.CSS_SELECTOR, "a")]
    assert f"{fleet.host.api}/" in links
    page.save_screenshot(str(tmp_path / "server.png"))
    assert (tmp_path / "server.png").stat().st_size > 10_000


def test_a_server_without_data_shows_an_empty_state(page: webdriver.Chrome, fleet: Fleet) -> None:
    page.allowed_console = ("/servers/never-seen.example.com/loads",)  # the 404 it asks for
    page.get(f"{fleet.host.api}/ui/servers/never-seen.example.com")
    text = wait_for(page, "the empty state", lambda d: d.find_element(By.ID, "empty").text)
    assert "No data for never-seen.example.com in the last 24 hours" in text
    assert not page.find_element(By.ID, "details").is_displayed()
    assert page.find_element(By.ID, "banner").is_displayed() is False


def test_an_unanswering_backend_shows_a_banner_and_recovers(
    page: webdriver.Chrome, fleet: Fleet
) -> None:
    page.allowed_console = ("503 (Service Unavailable)",)
    open_overview(page, fleet, f"?refresh={REFRESH}")
    aggregator = fleet.host.child("aggregator")
    aggregator.suspend()
    try:
        banner = wait_for(page, "the banner", lambda d: d.find_element(By.ID, "banner").text)
        assert "not answering" in banner
        assert table(page), "the last rows stay on screen"
    finally:
        aggregator.resume()
    wait_for(page, "the banner to go", lambda d: not d.find_element(By.ID, "banner").is_displayed())


# -- tokens ----------------------------------------------------------------------------------------
def test_the_read_token_is_asked_once_and_sent_as_a_bearer_token(
    page: webdriver.Chrome, tmp_path: Path
) -> None:
    page.allowed_console = ("401 (Unauthorized)",)
    token = "dashboard-read-0123456789"
    (tmp_path / "read-token").write_text(token + "\n")
    (tmp_path / "read-token").chmod(0o600)
    host = launch_host(tmp_path, "--no-agent", "--read-token-file", str(tmp_path / "read-token"))
    try:
        status, _ = host.post("/loads", [{"server": "secret-1.example.com", "cpu": 42.0}])
        assert status == 202
        page.get(f"{host.api}/")
        form = wait_for(page, "the token form", lambda d: d.find_element(By.ID, "token-form"))
        wait_for(page, "the form to show", lambda d: form.is_displayed())
        assert not page.find_element(By.ID, "banner").is_displayed()
        page.find_element(By.ID, "token-input").send_keys("wrong-token")
        page.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_for(
            page, "the refusal", lambda d: "refused" in d.find_element(By.ID, "token-message").text
        )
        page.find_element(By.ID, "token-input").send_keys(token)
        page.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_for(
            page, "the rows", lambda d: [r["server"] for r in table(d)] == ["secret-1.example.com"]
        )
        assert not form.is_displayed()
        page.get(f"{host.api}/ui/servers/secret-1.example.com")
        wait_for(
            page,
            "the charts",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2,
        )
        assert not page.find_element(By.ID, "token-form").is_displayed()
        stored = page.execute_script("return sessionStorage.getItem('servertrack.readToken')")
        assert stored == token
    finally:
        host.process.stop()


# -- a large fleet ---------------------------------------------------------------------------------
def fleet_total(host: HostUnderTest) -> int | None:
    """Servers the overview counts, or None while the host is busy (a 503)."""
    status, body = host.get("/fleet?limit=1")
    return body["total"] if status == 200 else None


@pytest.mark.alone  # 1.5 s of the page's own work, not of five other workers' too
def test_ten_thousand_servers_are_interactive_within_1_5_s(
    page: webdriver.Chrome, tmp_path: Path
) -> None:
    """Rows and the grid drawn and a sort click answered, within 1.5 s of navigation start."""
    host = launch_host(tmp_path, "--no-agent", name="big")
    try:
        rng = random.Random(7)
        now = time.time()
        servers = [f"node-{i:05d}.example.com" for i in range(10_000)]
        cpu = {name: round(rng.uniform(0, 100), 2) for name in servers}
        for start in range(0, 10_000, 5_000):
            body = [
                {"server": name, "ts": now - minute * MINUTE - 1, "cpu": cpu[name], "ram": 50.0}
                for name in servers[start : start + 5_000]
                for minute in range(2)
            ]
            assert host.post("/loads", body)[0] == 202
        wait_until(lambda: fleet_total(host) == 10_000, WAIT, "10,000 servers")
        hottest = max(servers, key=lambda name: (cpu[name], name))
        page.get(f"{host.api}/")
        wait_for(
            page,
            "rows and grid",
            lambda d: d.execute_script(
                "return document.querySelectorAll('#rows tr').length === 100"
                " && document.getElementById('grid').width > 100"
                " && document.querySelectorAll('#grid-list li').length === 10000"
            ),
        )
        drawn = page.execute_script("return performance.now()")
        page.find_element(By.CSS_SELECTOR, 'th[data-sort="cpu"] button').click()
        wait_for(
            page,
            "the sort",
            lambda d: d.execute_script(
                "return document.querySelector('#rows tr').dataset.server === arguments[0]",
                hottest,
            ),
        )
        interactive = page.execute_script("return performance.now()")
        page.save_screenshot(str(tmp_path / "overview-10000.png"))
        print(f"10,000 servers: drawn at {drawn:.0f} ms, sorted at {interactive:.0f} ms")
        assert interactive <= 1500, f"interactive after {interactive:.0f} ms"
    finally:
        host.process.stop()


@pytest.mark.faults
def test_the_overview_of_the_server_cap_draws_every_cell_and_sorts(
    page: webdriver.Chrome, tmp_path: Path
) -> None:
    """250,000 servers, named through a Graphite connection: the rows, the grid and its text
    list of every cell are drawn, a refresh follows (the grid without the names), and a sort
    click is answered."""
    port = free_port()
    host = launch_host(tmp_path, "--no-agent", "--graphite-port", str(port), name="cap")
    try:
        run_fleet(
            host, port, FleetSchedule(DEFAULT_MAX_SERVERS, create_seconds=5, report_seconds=1)
        )
        page.get(f"{host.api}/")
        wait_for(
            page,
            "rows, grid and the grid's text list",
            lambda d: d.execute_script(
                "return document.querySelectorAll('#rows tr').length === 100"
                " && document.getElementById('grid').width > 100"
                " && document.querySelectorAll('#grid-list li').length === arguments[0]",
                DEFAULT_MAX_SERVERS,
            ),
        )
        drawn = page.execute_script("return performance.now()")
        refreshed = "return Number(document.body.dataset.refreshed || 0)"
        first = page.execute_script(refreshed)
        wait_for(page, "a refresh", lambda d: d.execute_script(refreshed) > first)
        assert len(page.find_elements(By.CSS_SELECTOR, "#grid-list li")) == DEFAULT_MAX_SERVERS
        status, hottest = host.get("/fleet?sort=cpu&order=desc&limit=1")
        assert status == 200
        page.find_element(By.CSS_SELECTOR, 'th[data-sort="cpu"] button').click()
        wait_for(
            page,
            "the sort",
            lambda d: (
                float(table(d)[0]["cpu"]) == pytest.approx(hottest["rows"][0]["cpu"], abs=0.05)
            ),
        )
        page.save_screenshot(str(tmp_path / "overview-cap.png"))
        print(f"{DEFAULT_MAX_SERVERS:,} servers: drawn at {drawn:.0f} ms")
    finally:
        page.get("about:blank")  # no refresh in flight when the host stops
        host.process.stop()


# -- alerts ----------------------------------------------------------------------------------------
ALERT_RULES = """\
rules:
  - alert: DashSilent
    when: silent
    for: 3s
    servers: "^dash-silent"
    labels: {severity: critical}
    annotations: {summary: "{{ server }} went quiet"}
"""
ALERTS_JS = """
return Array.from(document.querySelectorAll('#alerts-list li')).map(li => li.innerText);
"""


def test_firing_alerts_show_on_the_overview_and_on_their_servers_page(
    page: webdriver.Chrome, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(ALERT_RULES)
    host = launch_host(tmp_path, "--no-agent", "--rules", str(rules), "--rules-interval", "1")
    try:
        silent, fine = "dash-silent-1.example.com", "dash-fine-1.example.com"
        status, _ = host.post("/loads", [{"server": silent, "cpu": 12.0, "ram": 30.0}])
        assert status == 202
        page.get(f"{host.api}/?refresh={REFRESH}")
        wait_for(page, "the alert on the overview", lambda d: d.execute_script(ALERTS_JS))
        (shown,) = page.execute_script(ALERTS_JS)
        assert "DashSilent" in shown and silent in shown and "critical" in shown
        assert f"{silent} went quiet" in shown
        assert page.find_element(By.ID, "alerts-count").text == "1"
        # read in one step: the list is redrawn at each refresh, so a held element goes stale
        href = page.execute_script("return document.querySelector('#alerts-list a').href")
        assert href == f"{host.api}/ui/servers/{silent}"
        page.save_screenshot(str(tmp_path / "overview-alerts.png"))

        page.get(href)
        wait_for(page, "the alert on its page", lambda d: d.execute_script(ALERTS_JS))
        (own,) = page.execute_script(ALERTS_JS)
        assert "DashSilent" in own and f"{silent} went quiet" in own
        assert page.find_element(By.ID, "alerts").is_displayed()

        host.post("/loads", [{"server": fine, "cpu": 12.0, "ram": 30.0}])
        wait_until(lambda: host.get(f"/servers/{fine}/loads")[0] == 200, WAIT, "the sample")
        page.get(f"{host.api}/ui/servers/{fine}")
        wait_for(
            page,
            "the charts",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2,
        )
        refreshed = "return Number(document.body.dataset.alertsRefreshed || 0)"
        wait_for(page, "two alert refreshes", lambda d: d.execute_script(refreshed) >= 2)
        assert page.execute_script(ALERTS_JS) == []
        assert not page.find_element(By.ID, "alerts").is_displayed()
    finally:
        page.get("about:blank")  # no page polls the host while it stops
        host.process.stop()
