"""The one renderer: typed read-model values to the JSON bytes the API answers with.

Whichever store a :class:`~servertrack.readmodel.values.ServerView` came from, its answer is made
here, so both modes answer alike byte for byte for the same data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from servertrack.common.buckets import HOUR, MINUTE, iso_utc
from servertrack.readmodel.values import ServersPage, ServerView


@lru_cache(maxsize=4096)
def _start(seconds: int) -> str:
    """PERF: formatting a bucket start took half of a view's CPU; every server shows the same
    86 starts at a time, so they are formatted once."""
    return iso_utc(seconds)


def _scores(scores: np.ndarray | None, count: int) -> list[float | None]:
    if scores is None:
        return [None] * count
    return [None if s != s else s for s in scores.tolist()]


def bucket_rows(
    cells: np.ndarray,
    width: int,
    anomaly: tuple[np.ndarray | None, np.ndarray | None] | None = None,
) -> list[dict[str, Any]]:
    """Each cell (already chosen and ordered) as a bucket of the answer: ``null`` for a metric
    without samples, never 0. With ``anomaly`` (the cpu and ram scores, one per cell), each
    bucket carries ``cpu_anomaly`` and ``ram_anomaly`` (``null`` where there is no score)."""
    stamps, samples = cells["stamp"].tolist(), cells["samples"].tolist()
    cpu_n, cpu_sum = cells["cpu_count"].tolist(), cells["cpu_sum"].tolist()
    cpu_min, cpu_max = cells["cpu_min"].tolist(), cells["cpu_max"].tolist()
    ram_n, ram_sum = cells["ram_count"].tolist(), cells["ram_sum"].tolist()
    ram_min, ram_max = cells["ram_min"].tolist(), cells["ram_max"].tolist()
    out = []
    for k, stamp in enumerate(stamps):
        c, r = cpu_n[k], ram_n[k]
        out.append(
            {
                "start": _start(stamp * width),
                "cpu": cpu_sum[k] / c if c else None,
                "cpu_sum": cpu_sum[k] if c else None,
                "cpu_min": cpu_min[k] if c else None,
                "cpu_max": cpu_max[k] if c else None,
                "cpu_samples": c,
                "ram": ram_sum[k] / r if r else None,
                "ram_sum": ram_sum[k] if r else None,
                "ram_min": ram_min[k] if r else None,
                "ram_max": ram_max[k] if r else None,
                "ram_samples": r,
                "samples": samples[k],
            }
        )
    if anomaly is not None:
        cpu_scores, ram_scores = (_scores(s, len(out)) for s in anomaly)
        for bucket, cpu_score, ram_score in zip(out, cpu_scores, ram_scores, strict=True):
            bucket["cpu_anomaly"] = cpu_score
            bucket["ram_anomaly"] = ram_score
    return out


def view_document(view: ServerView) -> dict[str, Any]:
    """The answer of ``GET /servers/{name}/loads`` as a JSON-ready mapping (the time it is as
    of travels beside it, so the body is a function of the state alone)."""
    return {
        "server": view.name,
        "minutes": bucket_rows(view.minutes, MINUTE, (view.cpu_anomaly, view.ram_anomaly)),
        "hours": bucket_rows(view.hours, HOUR),
        "last_seen": iso_utc(view.last_seen),
        "health": view.health.to_json(),
    }


def view_json(view: ServerView) -> bytes:
    return json.dumps(view_document(view)).encode()


def servers_json(page: ServersPage) -> bytes:
    """The answer of ``GET /servers``."""
    servers = [{"server": name, "last_seen": iso_utc(seen)} for name, seen in page.servers]
    return json.dumps(
        {"servers": servers, "total": page.total, "next_cursor": page.next_cursor}
    ).encode()
