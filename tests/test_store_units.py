"""The Redis store's I/O-free parts: store URLs, folding samples into cells, health records and
the summary records, each against an independent restatement."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest

from servertrack.common.batch import ServerHealth
from servertrack.common.oracle import RawSample, iso_z, oracle_buckets
from servertrack.readmodel.cells import CELL_DTYPE, shown, unpack_cells
from servertrack.readmodel.health import Health, merge_health
from servertrack.readmodel.render import bucket_rows
from servertrack.store.cells import BatchColumns, concat, fold
from servertrack.store.health import HEAD, encode, records
from servertrack.store.redis_url import BadStoreUrl, parse_store_url
from servertrack.store.summary import RECORD_SIZE, SparkRing, decode_fleet

MINUTE, HOUR = 60, 3600
NOW = 1_700_000_000.0


# -- URLs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "cluster", "nodes", "db", "tls", "user", "password"),
    [
        ("redis://127.0.0.1:6380/2", False, [("127.0.0.1", 6380)], 2, False, None, None),
        ("redis://localhost", False, [("localhost", 6379)], 0, False, None, None),
        ("rediss://:s%40cret@h:1/0", False, [("h", 1)], 0, True, None, "s@cret"),
        ("redis://secret@h:2", False, [("h", 2)], 0, False, None, "secret"),
        ("redis://ops:pw@[::1]:7000", False, [("::1", 7000)], 0, False, "ops", "pw"),
        (
            "redis+cluster://a:7000,b:7001,[::1]:7002",
            True,
            [("a", 7000), ("b", 7001), ("::1", 7002)],
            0,
            False,
            None,
            None,
        ),
        ("rediss+cluster://a:1", True, [("a", 1)], 0, True, None, None),
    ],
)
def test_store_urls_are_parsed(
    url: str,
    cluster: bool,
    nodes: list[tuple[str, int]],
    db: int,
    tls: bool,
    user: str | None,
    password: str | None,
) -> None:
    """Each URL form gives its nodes, db, TLS and credentials; describe() never shows the
    password."""
    address = parse_store_url(url)
    assert (address.cluster, list(address.nodes), address.db, address.tls) == (
        cluster,
        nodes,
        db,
        tls,
    )
    assert (address.username, address.password) == (user, password)
    if password:
        assert password not in address.describe()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h:1", "not a store URL"),
        ("redis://h:99999", "bad port"),
        ("redis://h:x", "bad port"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis+cluster://a:1/3", "only db 0"),
        ("redis://h/zero", "db must be a number"),
        ("redis://h?color=red", "unknown option"),
        ("redis://h?ca_file=/x", "needs TLS"),
        ("redis://:pw@h?password_file=/nonexistent", "cannot read"),
    ],
)
def test_bad_store_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(BadStoreUrl, match=reason):
        parse_store_url(url)


def test_the_password_may_come_from_a_private_file(tmp_path: Path) -> None:
    """A file's first line is the password; a file others can read, an empty file, or a
    password also given elsewhere is refused."""
    secret = tmp_path / "pw"
    secret.write_text("hunter2\nignored\n")
    os.chmod(secret, 0o600)
    assert parse_store_url(f"redis://h?password_file={secret}").password == "hunter2"
    assert parse_store_url("redis://h", password="given").password == "given"
    with pytest.raises(BadStoreUrl, match="more than once"):
        parse_store_url(f"redis://:x@h?password_file={secret}")
    os.chmod(secret, 0o644)
    with pytest.raises(BadStoreUrl, match="readable by other users"):
        parse_store_url(f"redis://h?password_file={secret}")
    secret.write_text("\n")
    os.chmod(secret, 0o600)
    with pytest.raises(BadStoreUrl, match="empty"):
        parse_store_url(f"redis://h?password_file={secret}")


# -- folding --------------------------------------------------------------------------------------
def random_samples(rng: random.Random, names: list[str], count: int) -> list[RawSample]:
    out = []
    for _ in range(count):
        kind = rng.random()
        ts = NOW - (rng.uniform(0, 3 * HOUR) if kind < 0.9 else rng.uniform(-59, 26 * HOUR))
        cpu = None if rng.random() < 0.2 else rng.uniform(0, 100)
        ram = (
            None
            if rng.random() < 0.2 or (cpu is None and rng.random() < 0.5)
            else rng.uniform(0, 100)
        )
        out.append((rng.choice(names), ts, cpu, ram))
    return out


def as_batches(samples: list[RawSample], names: list[str], size: int) -> list[BatchColumns]:
    batches = []
    for number, start in enumerate(range(0, len(samples), size)):
        part = samples[start : start + size]
        batches.append(
            BatchColumns(
                number,
                np.array([names.index(s[0]) for s in part]),
                np.array([s[1] for s in part]),
                np.array([math.nan if s[2] is None else s[2] for s in part]),
                np.array([math.nan if s[3] is None else s[3] for s in part]),
                np.arange(start, start + len(part)),
            )
        )
    return batches


def test_folded_cells_equal_the_oracle_buckets() -> None:
    """Cells folded from random batches (given out of order) show the oracle's buckets; the
    per-server batch ranges, last-seen times, newest seq and the expired count are right."""
    rng = random.Random(5)
    names = [f"n{k}" for k in range(7)]
    samples = random_samples(rng, names, 3000)
    batches = as_batches(samples, names, 250)
    rng.shuffle(batches)
    folded = fold(concat(batches, len(names)), NOW)
    oldest_hour = (NOW - NOW % HOUR) - 23 * HOUR
    kept = [s for s in samples if s[1] - s[1] % HOUR >= oldest_hour]
    assert folded.expired == len(samples) - len(kept)
    assert folded.samples.sum() == len(kept)
    for k, row in enumerate(folded.servers.tolist()):
        name = names[row]
        mine = [i for i, s in enumerate(samples) if s[0] == name and s in kept]
        assert (folded.first[k], folded.last[k]) == (mine[0] // 250, mine[-1] // 250)
        assert folded.head[k]["last_seen"] == max(samples[i][1] for i in mine)
        assert folded.head[k]["seq"] == mine[-1]
        minutes = folded.minute_cells[folded.minute_bounds[k] : folded.minute_bounds[k + 1]]
        hours = folded.hour_cells[folded.hour_bounds[k] : folded.hour_bounds[k + 1]]
        cur_m, cur_h = int(NOW // MINUTE), int(NOW // HOUR)
        expected = oracle_buckets(samples, NOW, name)
        got_minutes = bucket_rows(shown(minutes, cur_m - 59, cur_m), MINUTE)
        got_hours = bucket_rows(shown(hours, cur_h - 23, cur_h), HOUR)
        for got, want in ((got_minutes, expected["minutes"]), (got_hours, expected["hours"])):
            assert [b["start"] for b in got] == [b["start"] for b in want]
            for have, should in zip(got, want, strict=True):
                for field, value in should.items():
                    if field in ("cpu", "ram", "cpu_sum", "ram_sum") and value is not None:
                        assert math.isclose(have[field], value, rel_tol=1e-12)
                    else:
                        assert have[field] == value


def test_cells_survive_packing_byte_for_byte() -> None:
    """Cells are 64 little-endian bytes and unpack to themselves; a trailing partial cell is
    ignored."""
    cells = np.zeros(3, CELL_DTYPE)
    cells["stamp"] = [1, 2, 3]
    cells["cpu_sum"] = [0.1, 0.2, 0.30000000000000004]
    cells["cpu_min"] = [np.inf, 0.0, -0.0]
    raw = cells.tobytes()
    assert len(raw) == 192
    assert unpack_cells(raw + b"\x01\x02").tobytes() == raw


# -- health -----------------------------------------------------------------------------------
def test_health_records_merge_over_writers() -> None:
    """Counters add up over writers, the newest writer's ip and skew win, a conflict of a
    writer heard within ten minutes of the newest shows (an older one's does not), and an
    unreadable record is skipped."""
    old = HEAD.pack(5, 1, 100.0) + encode(ServerHealth(("a",), 1, 2, 3, 0.5, 1, True))
    new = HEAD.pack(2, 1, 200.0) + encode(ServerHealth(("b", "c"), 10, 20, 30, 0.125, 0))
    stored = records([old, b"junk", HEAD.pack(0, 0, 300.0) + b"\xc1", new])
    assert [written for written, _ in stored] == [100.0, 200.0]
    assert merge_health(stored) == Health(("b", "c"), 11, 22, 33, 0.125, 1, True)
    much_later = HEAD.pack(9, 1, 800.0) + encode(ServerHealth(("d",), 0, 0, 0, 0.0, 0))
    merged = merge_health(records([old, new, much_later]))
    assert merged.ips == ("d",) and merged.lost == 11 and not merged.name_conflict
    assert merge_health([]) == Health()


# -- summary ----------------------------------------------------------------------------------
def test_summary_records_realign_to_the_readers_minute() -> None:
    """A record carries the 61 minutes ending with the last-seen minute; a reader one or two
    minutes later sees them shifted, the current values being the newest means it shows."""
    ring = SparkRing(4)
    minute = int(NOW // MINUTE)
    ring.advance(minute)
    cells = np.zeros(3, CELL_DTYPE)
    cells["stamp"] = [minute - 2, minute, minute + 1]
    cells["samples"] = 2
    cells["cpu_count"] = [2, 1, 2]
    cells["cpu_sum"] = [50.0, 12.3456, 80.0]
    cells["ram_count"] = [1, 0, 0]
    cells["ram_sum"] = [33.0, 0.0, 0.0]
    ring.note(np.array([1, 1, 1]), cells)
    record = ring.records(np.array([1]), np.array([(minute + 1) * MINUTE + 5.0]))
    assert record.itemsize == RECORD_SIZE == 380
    same = decode_fleet(["x"], [record.tobytes()], NOW)
    # the last complete minute at NOW is minute - 1: the record holds no sample of it
    assert same.complete["samples"].tolist() == [0]
    assert same.cpu_minutes[0, -3:].tolist()[0] == 25.0
    assert math.isnan(same.cpu_minutes[0, -2]) and same.cpu_minutes[0, -1] == 12.35
    assert (same.cpu[0], same.ram[0]) == (12.35, 33.0)
    later = decode_fleet(["x"], [record.tobytes()], NOW + MINUTE)
    assert later.cpu_minutes[0, -1] == 40.0 and later.cpu[0] == 40.0
    assert later.complete.tolist() == cells[1:2].tolist()  # ``minute``, exact, extremes too
    after = decode_fleet(["x"], [record.tobytes()], NOW + 2 * MINUTE)
    assert after.complete.tolist() == cells[2:3].tolist()
    assert later.cpu_minutes[0, -4] == 25.0
    gone = decode_fleet(["x"], [record.tobytes(), b"short"], NOW + 25 * HOUR)
    assert len(gone) == 0
    assert iso_z(float(same.last_seen[0])) == iso_z((minute + 1) * MINUTE + 5.0)
