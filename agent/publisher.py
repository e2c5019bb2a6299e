"""The agent loop: one sample per interval on a monotonic schedule, published over PUB."""

from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple, Protocol

import zmq

from servertrack.agent import curve
from servertrack.agent.probe import node_addresses, node_name
from servertrack.common import endpoints, wire
from servertrack.common.buckets import Clock
from servertrack.common.lifecycle import Ticker
from servertrack.common.sample import Sample

log = logging.getLogger(__name__)
FIRST_SAMPLE_WAIT = 0.25
"""Seconds the first sample waits for the receiver's subscription (then it goes anyway)."""
ADDRESS_REFRESH = 60.0
"""Seconds between two look-ups of the node's addresses (they rarely change)."""


class Probe(Protocol):
    def cpu(self) -> float: ...

    def ram(self) -> float: ...


class AgentConfig(NamedTuple):
    """The agent's settings. PERF: a NamedTuple, not a dataclass: ``dataclasses`` imports
    ``inspect``, about a megabyte of an agent's resident memory."""

    connect: str = endpoints.INGEST
    interval: float = 1.0
    name: str | None = None
    format: str = "msgpack"
    sndhwm: int = 1000
    curve_secret: str | None = None
    server_key: str | None = None
    auth_retry: float = curve.AUTH_RETRY


class Agent:
    """Publishes samples until ``stop`` is set. The PUB socket connects and reconnects by itself,
    so the agent keeps its schedule while the receiver is down: ZeroMQ queues up to ``sndhwm``
    samples and delivers them late; beyond that it drops the newest, and the receiver counts
    them as lost from the seq gap. With CURVE, a handshake the receiver refused is tried again
    every ``auth_retry`` seconds (see :mod:`servertrack.agent.curve`)."""

    def __init__(
        self,
        config: AgentConfig,
        probe: Probe,
        context: zmq.SyncContext | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.probe = probe
        self.context = context or zmq.Context.instance()
        self.clock = clock
        self.name = config.name or node_name()
        self.stop = threading.Event()
        self.seq = 0
        self._ips: tuple[str, ...] = ()
        self._ips_at = float("-inf")

    def sample(self) -> Sample:
        now = time.monotonic()
        if now - self._ips_at >= ADDRESS_REFRESH:
            self._ips = tuple(node_addresses())
            self._ips_at = now
        sample = Sample(
            self.name, self.clock(), self.probe.cpu(), self.probe.ram(), self.seq, self._ips
        )
        self.seq += 1
        return sample

    def run(self) -> None:
        """Publish until ``stop``. The first sample leaves as soon as the receiver has
        subscribed (at most ``FIRST_SAMPLE_WAIT`` after start), the next ones every interval.

        The socket is an XPUB: a PUB that also hands over the receiver's subscription, so the
        first sample is not sent into a connection still being set up (where a PUB drops it).
        """
        pub = self.context.socket(zmq.XPUB)
        retry = None
        try:
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            if curve.check_flags(self.config.curve_secret, self.config.server_key):
                curve.apply_keys(pub, str(self.config.curve_secret), str(self.config.server_key))
                retry = curve.HandshakeRetry(pub, self.config.connect, self.config.auth_retry)
            pub.connect(self.config.connect)
            log.info(
                "agent %s publishing to %s every %.3g s",
                self.name,
                self.config.connect,
                self.config.interval,
            )
            if pub.poll(int(FIRST_SAMPLE_WAIT * 1000), zmq.POLLIN):
                self._read_subscriptions(pub)
            ticker = Ticker(self.config.interval)
            if not self.stop.is_set():
                pub.send_multipart(wire.encode(self.sample(), self.config.format))
            while not self.stop.wait(self._wait(ticker, retry)):
                if retry is not None:
                    retry.poll()
                self._read_subscriptions(pub)
                if ticker.due():
                    # A PUB socket never blocks: at the high-water mark it drops the message.
                    pub.send_multipart(wire.encode(self.sample(), self.config.format))
        finally:
            if retry is not None:
                retry.close()
            pub.close(linger=0)
            log.info("agent stopped after %d samples", self.seq)

    @staticmethod
    def _read_subscriptions(pub: zmq.SyncSocket) -> None:
        """Consume the (re)subscriptions an XPUB hands over, so they never pile up."""
        while pub.poll(0, zmq.POLLIN):
            pub.recv(zmq.NOBLOCK)

    @staticmethod
    def _wait(ticker: Ticker, retry: curve.HandshakeRetry | None) -> float:
        """Until the next sample, or shorter with CURVE so that a refused handshake is retried."""
        if retry is None:
            return ticker.remaining()
        return min(ticker.remaining(), retry.retry / 2)
