"""Property-based fuzzing of the wire decoders and the receiver's intake (hypothesis).

Whatever arrives, the receiver never raises, never grows without bound, and counts every
message exactly once: accepted, duplicate or rejected by reason."""

from __future__ import annotations

import gzip
import pickle
import tracemalloc
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servertrack.common import wire
from servertrack.receiver.state import ReceiverState

T0 = 1_800_000_000.0
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=40) | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
sample_like = st.fixed_dictionaries(
    {},
    optional={
        "fqdn": st.text(max_size=300) | values,
        "ts": st.floats() | ints | values,
        "cpu": st.floats() | ints | values,
        "ram": st.floats() | ints | values,
        "seq": ints | values,
        "ip": st.lists(st.text(max_size=70), max_size=40) | values,
        "extra": values,
    },
)


def accounted(state: ReceiverState) -> bool:
    counters = state.counters()
    total = sum(counters["accepted"].values()) + sum(counters["rejected"]["zmq"].values())
    return total + counters["duplicates"] == sum(counters["received"].values())


def offer_all(messages: list[list[bytes]], accept_pickle: bool = True) -> ReceiverState:
    state = ReceiverState(accept_pickle=accept_pickle)
    for frames in messages:
        verdict = state.offer_frames(frames, T0)
        assert verdict is None or isinstance(verdict, str)
    assert accounted(state)
    return state


@FUZZ
@given(st.lists(st.lists(st.binary(max_size=300), min_size=0, max_size=9), max_size=20))
def test_random_frames_are_counted_and_never_raise(messages: list[list[bytes]]) -> None:
    """Random bytes in any number of frames, any format frame."""
    offer_all(messages)


@FUZZ
@given(st.lists(sample_like, max_size=20), st.booleans())
def test_random_maps_in_both_formats_are_counted(maps: list[dict[str, Any]], gz: bool) -> None:
    """Maps with any types in any field, as msgpack or pickle.gz, with or without extra keys."""
    messages = []
    for data in maps:
        if gz:
            messages.append([wire.PICKLE_GZ, gzip.compress(pickle.dumps(data))])
        else:
            messages.append([wire.MSGPACK, msgpack.packb(data, use_bin_type=True)])
    offer_all(messages)


@FUZZ
@given(values, st.integers(min_value=0, max_value=400))
def test_truncated_and_padded_msgpack_is_rejected_as_msgpack(data: Any, cut: int) -> None:
    """A valid msgpack value cut short (or with trailing bytes) is a msgpack rejection."""
    payload = msgpack.packb(data, use_bin_type=True)
    truncated = payload[: min(cut, len(payload) - 1)]
    state = offer_all([[wire.MSGPACK, truncated], [wire.MSGPACK, payload + b"\x00"]])
    assert state.counters()["rejected"]["zmq"].get("msgpack", 0) == 2


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=100, max_value=5000))
def test_deep_nesting_is_refused_without_recursion_errors(depth: int) -> None:
    """Arrays nested thousands deep are refused as msgpack, never a RecursionError."""
    payload = b"\x91" * depth + b"\xc0"
    state = offer_all([[wire.MSGPACK, payload]])
    assert sum(state.counters()["rejected"]["zmq"].values()) == 1


def test_gzip_bombs_and_oversized_payloads_stay_small() -> None:
    """A 200 MB gzip bomb and an oversized msgpack payload are refused using little memory."""
    bomb = gzip.compress(b"\x00" * (200 * 2**20), compresslevel=9)
    big = msgpack.packb({"fqdn": "a" * 100_000, "ts": T0, "cpu": 1.0})
    tracemalloc.start()
    try:
        state = offer_all([[wire.PICKLE_GZ, bomb], [wire.MSGPACK, big]])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    assert state.counters()["rejected"]["zmq"] == {"too_large": 2}


@FUZZ
@given(
    st.sampled_from(["os.system", "builtins.eval", "subprocess.Popen", "datetime.datetime"]),
    st.sampled_from([0, 2, 4, 5]),
)
def test_pickles_naming_any_global_are_refused(name: str, protocol: int) -> None:
    """Any global in a pickle is refused as a pickle rejection, in every protocol."""
    module, attribute = name.rsplit(".", 1)
    if protocol == 0:
        body = f"c{module}\n{attribute}\n(S'x'\ntR.".encode()
    else:
        body = (
            pickle.dumps(pickle.loads(f"c{module}\n{attribute}\n.".encode()), protocol=protocol)
            if module == "datetime"
            else bytes([0x80, protocol]) + f"c{module}\n{attribute}\n.".encode()
        )
    state = offer_all([[wire.PICKLE_GZ, gzip.compress(body)]])
    assert state.counters()["rejected"]["zmq"] == {"pickle": 1}
