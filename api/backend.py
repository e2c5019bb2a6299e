"""What the HTTP API needs from the monitoring host, and its ZeroMQ implementation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from servertrack.api.generation import GenerationWatch
from servertrack.api.group import GroupCommit
from servertrack.common import rpc
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample

__all__ = ["Backend", "Unavailable", "ZmqBackend"]


class Backend(Protocol):
    def record(self, samples: list[Sample]) -> dict[str, Any]: ...

    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """Ask the aggregator; ``deadline`` (wall clock) is when the answer stops being useful."""
        ...

    def ping(self) -> dict[str, Any]: ...


class ZmqBackend:
    """Talks to the receiver (records) and the aggregator (reads) with one socket per thread.

    A single record goes through :class:`GroupCommit` (one receiver trip for the records that
    arrive together); a batch (``POST /loads``) makes its own trip. ``generation`` follows the
    aggregator's state number for the read cache (:mod:`servertrack.api.cache`). Without an
    aggregator (an API in Redis mode that records through a receiver) queries answer
    :class:`Unavailable` and ``ping`` asks the receiver only.
    """

    def __init__(
        self,
        receiver_control: str,
        aggregator_query: str | None,
        timeout: float = 0.5,
        context: zmq.Context | None = None,
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
        self.generation = (
            GenerationWatch(self.context, aggregator_query) if aggregator_query else None
        )
        self._closing: list[Callable[[], None]] = []

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` first in :meth:`close` (to stop threads that use these sockets)."""
        self._closing.append(hook)

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if len(samples) == 1:
            return self.group.record(samples[0])
        rows = [[s.fqdn, s.ts, s.cpu, s.ram] for s in samples]
        return self.receiver.get().call({"op": "record", "samples": rows})

    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """The aggregator's answer. The request carries the wall-clock time after which the
        aggregator skips it (this side has given up by then: it waits at most the timeout)."""
        if self.aggregator is None:
            raise Unavailable("no aggregator is configured (--aggregator-query)")
        client = self.aggregator.get()
        give_up = time.time() + client.timeout_ms / 1000
        reply = client.call({**request, "deadline": min(give_up, deadline or give_up)})
        if isinstance(reply, dict) and reply.get("status") == 503:
            raise Unavailable(str(reply.get("message", "the aggregator's store does not answer")))
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

    def close(self) -> None:
        for hook in self._closing:
            hook()
        self.group.close()
        if self.generation is not None:
            self.generation.close()
        self.receiver.close()
        if self.aggregator is not None:
            self.aggregator.close()
