"""Coverage-guided fuzzing of the receiver's intake with atheris (run by test_atheris.py).

Each input is cut into 1-4 frames (the first often a real format name) and offered to a
ReceiverState that accepts pickles; any exception, or a message not counted exactly once,
is a crash that atheris reports with the input that caused it."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from servertrack.common import wire
    from servertrack.receiver.state import ReceiverState

T0 = 1_800_000_000.0
STATE = ReceiverState(accept_pickle=True)
FORMATS = [wire.MSGPACK, wire.PICKLE_GZ, b"", b"json"]


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    count = provider.ConsumeIntInRange(1, 4)
    frames = [FORMATS[provider.ConsumeIntInRange(0, len(FORMATS) - 1)]]
    for _ in range(count - 1):
        frames.append(provider.ConsumeBytes(provider.ConsumeIntInRange(0, 512)))
    before = sum(STATE.counters()["received"].values())
    STATE.offer_frames(frames, T0)
    counters = STATE.counters()
    handled = (
        sum(counters["accepted"].values())
        + sum(counters["rejected"]["zmq"].values())
        + counters["duplicates"]
    )
    if sum(counters["received"].values()) != before + 1 or handled != before + 1:
        raise AssertionError(f"message not counted once: {counters}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
