"""Test doubles shared by the API's unit tests: backends over the real receiver and aggregator.

:class:`InProcessBackend` does in one call what the daemons do over ZeroMQ, with their own code:
a record goes through :meth:`ReceiverState.record`, is flushed at once into a batch that crosses
its wire encoding, and is applied by :class:`AggregatorState`; a query is answered by
:meth:`AggregatorState.answer`, the very code the aggregator daemon runs. So the API's tests see
the answers production gives, shape for shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import AggregatorState
from servertrack.api.admission import Admission
from servertrack.api.app import REQUEST_DEADLINE
from servertrack.api.assembly import assemble
from servertrack.api.backend import Backend, Threaded, Unavailable
from servertrack.api.daemons_backend import AggregatorReplies
from servertrack.api.generation import Current
from servertrack.api.stats import ApiStats
from servertrack.common.batch import Batch
from servertrack.common.lifecycle import EXIT_CONFIG
from servertrack.common.oracle import bucket_differences
from servertrack.common.sample import Sample
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.render import view_document
from servertrack.readmodel.values import ServerView
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import wait_until


class Clock:
    """A settable clock, shared by the app and the backend."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


class InProcessBackend(AggregatorReplies):
    """Receiver and aggregator state wired directly, with every record flushed and applied: a
    :class:`~servertrack.api.backend.Backend` whose queries reach the real aggregator state
    without a socket (its replies decoded as the daemons backend decodes them)."""

    def __init__(self, clock: Clock, receiver_clock: Clock | None = None) -> None:
        self.clock = clock
        self.state = ReceiverState(clock=receiver_clock or clock)
        self.aggregator = AggregatorState(Rollups(clock), clock)
        self.calls: list[list[Sample]] = []

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        self.calls.append(list(samples))
        rows = [[s.fqdn, s.ts, s.cpu, s.ram] for s in samples]
        reply = self.state.record(rows, self.state.clock())
        if "error" not in reply:
            self.flush()
        return reply

    def flush(self) -> None:
        """Cut the receiver's batch and apply it, as the daemons do once a second."""
        batch = self.state.flush(self.state.clock())
        self.aggregator.apply(Batch.decode(batch.encode()), self.clock())

    def _ask(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        reply = self.aggregator.answer({**request, "deadline": deadline}, self.clock(), time.time())
        if reply is None:
            raise Unavailable("the aggregator skipped a query past its deadline")
        return self._checked(msgpack.unpackb(reply))

    def generation(self) -> Current | None:
        return None  # nothing is kept: every read asks the aggregator

    def ping(self) -> dict[str, Any]:
        return {"receiver": {"ok": True}, "aggregator": self.aggregator.ping(self.clock())}

    def threads(self) -> list[Threaded]:
        return []

    def close(self) -> None:
        pass


class DownBackend(InProcessBackend):
    """A backend whose receiver and/or aggregator does not answer, as the daemons backend then."""

    def __init__(self, receiver_up: bool = False, aggregator_up: bool = False) -> None:
        super().__init__(Clock(time.time()))
        self.receiver_up = receiver_up
        self.aggregator_up = aggregator_up

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if not self.receiver_up:
            raise Unavailable("receiver did not answer within 500 ms")
        return {"accepted": len(samples), "duplicates": 0}

    def _ask(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        if not self.aggregator_up:
            raise Unavailable("aggregator did not answer within 500 ms")
        return super()._ask(request, deadline)

    def ping(self) -> dict[str, Any]:
        def part(up: bool) -> dict[str, Any]:
            return {"ok": True} if up else {"ok": False, "error": "did not answer within 500 ms"}

        return {"receiver": part(self.receiver_up), "aggregator": part(self.aggregator_up)}


class PingRaises(DownBackend):
    """A backend whose ``ping`` itself raises ``Unavailable``."""

    def ping(self) -> dict[str, Any]:
        raise Unavailable("nobody answered the ping")


def api_app(
    backend: Backend,
    clock: Callable[[], float] = time.time,
    *,
    record_token: str | None = None,
    read_token: str | None = None,
    request_deadline: float = REQUEST_DEADLINE,
    stats: ApiStats | None = None,
) -> Any:
    """The API's WSGI app over ``backend``, assembled as ``servertrack api`` assembles it."""
    admission = Admission(record_token, read_token, request_deadline)
    return assemble(backend, admission, clock, stats)[0]


def document(view: ServerView | CorruptKey | None) -> Any:
    """A read-model view as its JSON document (for the oracle's comparisons); None and a
    ``CorruptKey`` as they are."""
    if view is None or isinstance(view, CorruptKey):
        return view
    return view_document(view)


def wait_for(predicate: Callable[[], Any], deadline: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing the test after ``deadline``."""
    try:
        return wait_until(predicate, deadline, what, step)
    except TimeoutError as err:
        pytest.fail(str(err))


def assert_matches_oracle(view: Any, expected: dict[str, list[dict[str, Any]]]) -> None:
    """``view`` (an answer's JSON, or a read-model view) holds the oracle's buckets."""
    if isinstance(view, ServerView):
        view = view_document(view)
    assert bucket_differences(view, expected) == []


def assert_fatal(capsys: pytest.CaptureFixture[str], call: Callable[[], Any], message: str) -> None:
    """``call`` stops with ``EXIT_CONFIG`` and a message (no traceback) containing ``message``."""
    with pytest.raises(SystemExit) as stopped:
        call()
    assert stopped.value.code == EXIT_CONFIG
    assert message in capsys.readouterr().err
