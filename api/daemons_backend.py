"""The API's backend over the host's daemons: reads from the aggregator, records to the receiver.

One socket per thread for each (``rpc.ThreadLocalClients``). A single record goes through the
:class:`~servertrack.api.group.GroupCommit` (one receiver trip for the records that arrive
together); a batch (``POST /loads``) makes its own trip. The aggregator's generation comes from
a :class:`~servertrack.api.generation.GenerationWatch`. The group commit and the watch are
threads of their own: whoever builds this backend starts and closes them
(:class:`~servertrack.api.read_path.ReadPath`). Without an aggregator (an API in Redis mode
that records through a receiver) reads answer :class:`Unavailable` and ``ping`` asks the
receiver only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import zmq

from servertrack.api.backend import Kept, Threaded, Unavailable
from servertrack.api.generation import Current, GenerationWatch
from servertrack.api.group import GroupCommit
from servertrack.common import rpc
from servertrack.common.fleet_query import BadFleetQuery, FleetQuery
from servertrack.common.sample import Sample
from servertrack.readmodel.answers import Answer, decode_answer, decode_last_minute
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.history import decode_histories, joined
from servertrack.readmodel.values import Histories, LastMinute

HISTORIES_PER_QUERY = 500
"""Servers one ``histories`` query asks the aggregator for (a reply of about 2.7 MB)."""
HISTORY_TRIES = 3
"""Reads of a many-part ``histories`` when a minute turns between its parts."""


def _body(reply: dict[str, Any]) -> bytes:
    body = reply.get("body")
    if not isinstance(body, bytes):
        raise Unavailable(f"the aggregator answered something unreadable: {reply!r:.200}")
    return body


class AggregatorReplies:
    """The read calls of a :class:`~servertrack.api.backend.Backend`, made of the aggregator's
    replies to its queries (:meth:`servertrack.aggregator.state.AggregatorState.answer`);
    :meth:`_ask` is how a query reaches it."""

    def _ask(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _checked(reply: Any) -> dict[str, Any]:
        if not isinstance(reply, dict):
            raise Unavailable("the aggregator answered something unreadable")
        if "unavailable" in reply:
            raise Unavailable(str(reply["unavailable"]))
        return reply

    def view(self, name: str, deadline: float | None = None) -> Kept:
        reply = self._ask({"op": "view", "name": name}, deadline)
        gen = reply.get("gen")
        try:
            answer = decode_answer(reply.get("answer"))
        except (ValueError, TypeError) as err:
            raise Unavailable(f"the aggregator answered something unreadable: {err}") from err
        return (gen if isinstance(gen, int) else None), answer

    def views(self, names: Sequence[str]) -> tuple[int | None, list[Answer | CorruptKey | None]]:
        reply = self._ask({"op": "views", "names": list(names)})
        raw, gen = reply.get("answers"), reply.get("gen")
        if not isinstance(raw, list) or len(raw) != len(names):
            raise Unavailable("the aggregator did not answer every server asked for")
        try:
            answers = [decode_answer(item) for item in raw]
        except (ValueError, TypeError) as err:
            raise Unavailable(f"the aggregator answered something unreadable: {err}") from err
        return (gen if isinstance(gen, int) else None), answers

    def servers(self, after: str | None, limit: int, deadline: float | None = None) -> bytes:
        return _body(self._ask({"op": "servers", "after": after, "limit": limit}, deadline))

    def fleet(self, query: FleetQuery, deadline: float | None = None) -> bytes:
        reply = self._ask({"op": "fleet", **query.to_request()}, deadline)
        refusal = reply.get("refused")
        if refusal is not None:
            raise BadFleetQuery(str(refusal[0]), str(refusal[1]))
        return _body(reply)

    def grid(self, known: str | None, deadline: float | None = None) -> bytes:
        return _body(self._ask({"op": "grid", "names": known}, deadline))

    def last_minute(self, deadline: float | None = None) -> LastMinute:
        raw = self._ask({"op": "last_minute"}, deadline).get("last_minute")
        try:
            return decode_last_minute(raw)
        except ValueError as err:
            raise Unavailable(f"the aggregator answered something unreadable: {err}") from err

    def alerts(self, deadline: float | None = None) -> bytes:
        return _body(self._ask({"op": "alerts"}, deadline))

    def histories(self, names: Sequence[str], deadline: float | None = None) -> Histories:
        for _ in range(HISTORY_TRIES):
            parts = []
            for start in range(0, max(len(names), 1), HISTORIES_PER_QUERY):
                part = list(names[start : start + HISTORIES_PER_QUERY])
                raw = self._ask({"op": "histories", "names": part}, deadline).get("histories")
                try:
                    parts.append(decode_histories(raw))
                except ValueError as err:
                    raise Unavailable(
                        f"the aggregator answered something unreadable: {err}"
                    ) from err
            try:
                return joined(parts)
            except ValueError:  # a minute turned between two parts: read them all again
                continue
        raise Unavailable("the minute kept turning while the histories were read")

    def stats(self, deadline: float | None = None) -> dict[str, Any]:
        stats = self._ask({"op": "stats"}, deadline).get("stats")
        if not isinstance(stats, dict):
            raise Unavailable("the aggregator answered its counters unreadably")
        return stats


class DaemonsBackend(AggregatorReplies):
    """A :class:`~servertrack.api.backend.Backend` over the receiver and the aggregator."""

    def __init__(
        self,
        receiver_control: str,
        aggregator_query: str | None,
        timeout: float = 0.5,
        context: zmq.SyncContext | None = None,
        record_timeout: float = 5.0,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.receiver = rpc.ThreadLocalClients(
            self.context, receiver_control, timeout, record_timeout
        )
        self.aggregator = (
            rpc.ThreadLocalClients(self.context, aggregator_query, timeout)
            if aggregator_query
            else None
        )
        self.group = GroupCommit(
            rpc.RpcClient(self.context, receiver_control, timeout, record_timeout),
            wait=2 * max(timeout, record_timeout) + timeout,
        )
        """Single records' group commit (a thread: started by the read path)."""
        self.watch = GenerationWatch(self.context, aggregator_query) if aggregator_query else None
        """The aggregator's generation (a thread: started by the read path)."""

    # -- reads ----------------------------------------------------------------------------
    def _ask(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """The aggregator's reply. The request carries the wall-clock time after which the
        aggregator skips it (this side has given up by then: it waits at most the timeout)."""
        if self.aggregator is None:
            raise Unavailable("no aggregator is configured (--aggregator-query)")
        client = self.aggregator.get()
        give_up = time.time() + client.timeout_ms / 1000
        return self._checked(
            client.call({**request, "deadline": min(give_up, deadline or give_up)})
        )

    def generation(self) -> Current | None:
        return self.watch.current() if self.watch is not None else None

    # -- records and health ---------------------------------------------------------------------
    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if len(samples) == 1:
            return self.group.record(samples[0])
        rows = [[s.fqdn, s.ts, s.cpu, s.ram] for s in samples]
        reply: dict[str, Any] = self.receiver.get().call({"op": "record", "samples": rows})
        return reply

    def ping(self) -> dict[str, Any]:
        status: dict[str, Any] = {}
        for name, clients in (("receiver", self.receiver), ("aggregator", self.aggregator)):
            if clients is None:
                continue
            try:
                status[name] = clients.get().call({"op": "ping"})
            except Unavailable as err:
                status[name] = {"ok": False, "error": str(err)}
        return status

    def threads(self) -> list[Threaded]:
        return [self.group] if self.watch is None else [self.watch, self.group]

    def close(self) -> None:
        self.receiver.close()
        if self.aggregator is not None:
            self.aggregator.close()
