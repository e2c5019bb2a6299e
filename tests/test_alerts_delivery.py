"""Delivery to Alertmanager (``alerts/delivery.py``): the client's queue, retries and counters
against a real HTTP server with scripted answers, then against a real ``prometheus-alertmanager``
started by the test, whose webhook notifications are what a person would receive."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from servertrack.alerts.delivery import (
    AlertmanagerClient,
    Alertmanagers,
    alertmanager_url,
    backoff_delay,
)
from servertrack.alerts.evaluate import AlertEvaluator, FleetColumns
from servertrack.alerts.rules import DEFAULT_RULES, Rule, When
from servertrack.common.counters import ALERT_COUNTERS, ALERT_DROP_REASONS
from servertrack.testing.hosts import free_port, wait_until
from tests.alertmanager_support import Alertmanager, Recorder, notified

DEADLINE = 20.0


def alert(server: str, state: str = "firing", alertname: str = "CpuHigh") -> dict[str, Any]:
    ends = "2099-01-01T00:00:00Z" if state == "firing" else "2020-01-01T00:01:00Z"
    return {
        "labels": {"alertname": alertname, "server": server},
        "annotations": {"summary": f"{server} {state}"},
        "startsAt": "2020-01-01T00:00:00Z",
        "endsAt": ends,
        "generatorURL": f"http://127.0.0.1:8080/ui/servers/{server}",
    }


@pytest.fixture
def clients() -> Iterator[Callable[..., AlertmanagerClient]]:
    """Make clients (started unless told otherwise); every one is closed afterwards."""
    made: list[AlertmanagerClient] = []

    def make(url: str, start: bool = True, **options: Any) -> AlertmanagerClient:
        client = AlertmanagerClient(url, **options)
        made.append(client)
        if start:
            client.start()
        return client

    yield make
    for client in made:
        client.close(timeout=15.0)


def until(predicate: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    try:
        return wait_until(predicate, deadline, what, step=0.02)
    except TimeoutError as err:
        pytest.fail(str(err))


# -- the client against scripted answers ----------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    delays = [backoff_delay(n, 0.5, 30.0, 1.0 - 1e-12) for n in range(1, 10)]
    assert [round(d, 6) for d in delays] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_delay(3, 0.5, 30.0, 0.0) == 1.0  # jitter takes at most half
    assert 1.0 <= backoff_delay(3, 0.5, 30.0, 0.37) < 2.0


def test_a_failed_batch_is_retried_after_a_growing_pause(
    clients: Callable[..., AlertmanagerClient],
) -> None:
    """503, 503, then 200: the same batch three times, in order, with pauses of first and twice
    first (jitter at its lowest: half), and one success."""
    endpoint = Recorder([503, 503]).start()
    pauses: list[float] = []
    try:
        client = clients(
            endpoint.url,
            backoff_first=1.0,
            sleep=lambda seconds: pauses.append(seconds) is not None,
            jitter=lambda: 0.0,
        )
        client.send([alert("web-1"), alert("web-2")])
        until(lambda: client.counts()["sent"] == 2, "the batch to be taken")
        servers = [[a["labels"]["server"] for a in body] for body in endpoint.received()]
        assert servers == [["web-1", "web-2"]] * 3
        assert pauses == [0.5, 1.0]
        assert client.counts() == {
            "sent": 2,
            "failed": 2,
            "dropped": dict.fromkeys(ALERT_DROP_REASONS, 0),
            "queued": 0,
        }
    finally:
        endpoint.close()


@pytest.mark.parametrize(("status", "retried"), [(400, False), (422, False), (429, True)])
def test_a_refused_batch_is_dropped_and_a_busy_answer_retried(
    clients: Callable[..., AlertmanagerClient], status: int, retried: bool
) -> None:
    """A 4xx says the alerts are malformed: counted as ``rejected``, never sent again; a 429 (or
    408) says "later"."""
    endpoint = Recorder([status]).start()
    try:
        client = clients(endpoint.url, sleep=lambda seconds: False)
        client.send([alert("web-1")])
        if retried:
            until(lambda: client.counts()["sent"] == 1, "the retry")
            assert client.counts()["failed"] == 1
        else:
            until(lambda: client.counts()["dropped"]["rejected"] == 1, "the drop")
            client.send([alert("web-2")])
            until(lambda: client.counts()["sent"] == 1, "the next batch")
            assert [body[0]["labels"]["server"] for body in endpoint.received()] == [
                "web-1",
                "web-2",
            ]
    finally:
        endpoint.close()


def test_sending_never_waits_for_a_slow_alertmanager(
    clients: Callable[..., AlertmanagerClient],
) -> None:
    """While a POST hangs, send() of a thousand alerts returns at once; close() ends within the
    request timeout and counts what was still queued."""
    endpoint = Recorder().start()
    endpoint.hold.clear()
    try:
        client = clients(endpoint.url, timeout=1.0, batch_limit=1)
        client.send([alert("first")])
        until(lambda: endpoint.received(), "the first POST to arrive")
        began = time.monotonic()
        client.send([alert(f"web-{i}") for i in range(1000)])
        assert time.monotonic() - began < 0.5
        began = time.monotonic()
        client.close(timeout=10.0)
        assert time.monotonic() - began < 5.0
        counts = client.counts()
        assert counts["dropped"]["closed"] >= 999 and counts["queued"] == 0
        assert counts["sent"] + counts["failed"] <= 2
    finally:
        endpoint.close()


def test_a_newer_state_of_a_waiting_alert_takes_its_place(
    clients: Callable[..., AlertmanagerClient],
) -> None:
    """Firing then resolved while waiting: only the resolved state is sent, where the firing one
    stood; a superseded state is not a drop."""
    endpoint = Recorder().start()
    try:
        client = clients(endpoint.url, start=False)
        client.send([alert("web-1"), alert("web-2")])
        client.send([alert("web-1", "resolved")])
        assert client.counts()["queued"] == 2
        client.start()
        until(lambda: client.counts()["sent"] == 2, "the batch")
        (body,) = endpoint.received()
        assert [(a["labels"]["server"], a["annotations"]["summary"]) for a in body] == [
            ("web-1", "web-1 resolved"),
            ("web-2", "web-2 firing"),
        ]
        assert sum(client.counts()["dropped"].values()) == 0
    finally:
        endpoint.close()


def test_a_full_queue_drops_the_oldest_and_counts_it(
    clients: Callable[..., AlertmanagerClient],
) -> None:
    client = clients("http://127.0.0.1:9", start=False, queue_limit=3)
    client.send([alert(f"web-{i}") for i in range(5)])
    assert client.counts()["dropped"]["queue_full"] == 2
    assert client.counts()["queued"] == 3
    client.close()
    assert client.counts()["dropped"] == {"queue_full": 2, "rejected": 0, "closed": 3}


def test_urls_are_checked() -> None:
    assert alertmanager_url("http://am.example:9093/") == "http://am.example:9093"
    assert (
        alertmanager_url("https://example.org/alertmanager") == "https://example.org/alertmanager"
    )
    for bad in ("am:9093", "ftp://am", "http://", "http://am:9093/?x=1"):
        with pytest.raises(ValueError, match="must"):
            alertmanager_url(bad)


def test_the_delivery_stats_are_the_declared_counters() -> None:
    """``Alertmanagers.stats`` and ``AlertEvaluator.stats`` together fill the ``alerts``
    section declared in ``common/counters.py``, by Alertmanager URL."""
    group = Alertmanagers(["http://127.0.0.1:9", "http://127.0.0.1:10"], queue_limit=1)
    group.send([alert("a"), alert("b")])
    group.close()
    stats = group.stats() | AlertEvaluator(DEFAULT_RULES).stats()
    assert set(stats) == {counter.key for counter in ALERT_COUNTERS}
    assert stats["alertmanager_dropped"]["http://127.0.0.1:10"] == {
        "queue_full": 1,
        "rejected": 0,
        "closed": 1,
    }
    assert stats["alertmanager_queued"] == {"http://127.0.0.1:9": 0, "http://127.0.0.1:10": 0}


# -- against a real Alertmanager ------------------------------------------------------------------
T0 = 1_800_000_000.0
HOT = Rule(
    "CpuHigh",
    When("cpu", ">", 90.0),
    labels=(("severity", "warning"),),
    annotations=DEFAULT_RULES[1].annotations,
)


def snapshot(now: float, cpu: float) -> FleetColumns:
    def one(value: float) -> np.ndarray:
        return np.array([value])

    nan = np.nan
    return FleetColumns(
        ["web-1"], one(now - 1), one(cpu), one(nan), one(nan), one(nan), now - now % 60 - 60
    )


def fresh_times() -> float:
    """A ``now`` near the real clock (Alertmanager takes endsAt in the past as resolved)."""
    return time.time() - time.time() % 60 + 1


def firing(now: float, evaluator: AlertEvaluator | None = None) -> list[dict[str, Any]]:
    """What an evaluator sends for web-1 hot since the last minute."""
    evaluator = evaluator or AlertEvaluator([HOT])
    evaluator.evaluate(snapshot(now, 97.0), now)
    return evaluator.due(now)


@pytest.mark.e2e
def test_a_firing_alert_reaches_the_webhook_once(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    """What the evaluator sends arrives at the webhook as one notification with its labels,
    annotations, startsAt and generatorURL; sent again (the minute's resend), it is not
    notified again."""
    client = clients(alertmanager.url)
    now = fresh_times()
    sent = firing(now)
    client.send(sent)
    bodies = webhook.wait_for(lambda b: b, "a notification", DEADLINE)
    (received,) = bodies[0]["alerts"]
    assert received["status"] == "firing"
    assert received["labels"] == sent[0]["labels"]
    assert received["annotations"] == sent[0]["annotations"]
    assert received["startsAt"] == sent[0]["startsAt"]
    assert received["generatorURL"] == "http://127.0.0.1:8080/ui/servers/web-1"
    client.send(sent)
    until(lambda: client.counts()["sent"] == 2, "the resend to be taken")
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "CpuHigh", "web-1")]


@pytest.mark.e2e
def test_a_resolved_alert_arrives_as_resolved(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    client = clients(alertmanager.url)
    evaluator = AlertEvaluator([HOT])
    now = fresh_times()
    client.send(firing(now, evaluator))
    webhook.wait_for(notified, "the firing notification", DEADLINE)
    evaluator.evaluate(snapshot(now + 60, 20.0), now + 60)  # the next minute is cool
    (resolved,) = evaluator.due(now + 60)
    client.send([resolved])
    bodies = webhook.wait_for(lambda b: len(b) >= 2 and b, "the resolved notification", DEADLINE)
    assert notified(bodies) == [("firing", "CpuHigh", "web-1"), ("resolved", "CpuHigh", "web-1")]
    assert bodies[1]["status"] == "resolved"
    assert bodies[1]["alerts"][0]["endsAt"] == resolved["endsAt"]


@pytest.mark.e2e
def test_two_hosts_sending_the_same_alert_make_one_notification(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    """Two evaluators on the same data, 7 s apart, each with its own client, as two hosts on
    one Redis: Alertmanager notifies once."""
    now = fresh_times()
    first, second = clients(alertmanager.url), clients(alertmanager.url)
    first.send(firing(now))
    webhook.wait_for(notified, "the first host's notification", DEADLINE)
    second.send(firing(now + 7))
    until(lambda: second.counts()["sent"] == 1, "the second host's alert to be taken")
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "CpuHigh", "web-1")]


def outage(
    alertmanager: Alertmanager,
    webhook: Recorder,
    client: AlertmanagerClient,
    hold: Callable[[], None],
) -> None:
    """Alertmanager stops, an alert is sent, ``hold()`` passes, Alertmanager comes back: the
    alert reaches the webhook."""
    alertmanager.stop()
    client.send(firing(fresh_times()))
    until(lambda: client.counts()["failed"] >= 2, "the POSTs to fail")
    hold()
    alertmanager.start()
    webhook.wait_for(notified, "the notification after the outage", DEADLINE)
    assert notified(webhook.received()) == [("firing", "CpuHigh", "web-1")]
    assert client.counts()["sent"] == 1 and sum(client.counts()["dropped"].values()) == 0


@pytest.mark.e2e
def test_an_alert_sent_while_alertmanager_is_down_arrives_when_it_returns(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    client = clients(alertmanager.url, backoff_first=0.05, backoff_cap=0.5)
    outage(alertmanager, webhook, client, lambda: None)


@pytest.mark.e2e
@pytest.mark.faults
def test_an_alert_sent_during_a_30_s_outage_arrives_after_it(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    """Retries keep going at the capped pace (2 s at most) through 30 s: neither hammering
    nor giving up."""
    client = clients(alertmanager.url, backoff_first=0.1, backoff_cap=2.0)
    outage(alertmanager, webhook, client, lambda: time.sleep(30.0))  # the outage itself
    assert 15 <= client.counts()["failed"] <= 40


@pytest.mark.e2e
def test_a_full_queue_counts_its_drops_and_sends_the_newest(
    alertmanager: Alertmanager, webhook: Recorder, clients: Callable[..., AlertmanagerClient]
) -> None:
    """Eight alerts for a queue of five while Alertmanager is down: three dropped and counted;
    the five newest are notified when it returns."""
    alertmanager.stop()
    client = clients(alertmanager.url, queue_limit=5, backoff_first=0.05, backoff_cap=0.5)
    now = fresh_times()
    evaluator = AlertEvaluator([HOT])
    names = [f"web-{i}" for i in range(8)]
    hot, seen, nan = np.full(8, 97.0), np.full(8, now), np.full(8, np.nan)
    evaluator.evaluate(FleetColumns(names, seen, hot, nan, nan, nan, now - now % 60 - 60), now)
    client.send(evaluator.due(now))
    until(lambda: client.counts()["failed"] >= 1, "a failed POST")
    assert client.counts()["dropped"]["queue_full"] == 3
    alertmanager.start()
    webhook.wait_for(lambda b: len(notified(b)) >= 5, "five notifications", DEADLINE)
    assert sorted(server for _, _, server in notified(webhook.received())) == names[3:]
    assert client.counts()["sent"] == 5 and client.counts()["dropped"]["queue_full"] == 3


@pytest.mark.e2e
def test_nothing_listens_at_a_free_port(clients: Callable[..., AlertmanagerClient]) -> None:
    """A refused connection is a failure to retry, counted; the caller never notices."""
    pause = lambda seconds: time.sleep(0.01)  # noqa: E731
    client = clients(f"http://127.0.0.1:{free_port()}", sleep=pause, timeout=1)
    client.send([alert("web-1")])
    until(lambda: client.counts()["failed"] >= 3, "refused POSTs to be counted")
    assert client.counts()["queued"] == 1
