"""Streaming anomaly scores for many series at once (see :mod:`servertrack.anomaly.detector`)."""

from servertrack.anomaly.detector import (
    DEFAULT_PARAMS,
    STANDARD_THRESHOLD,
    WARM_UP,
    DetectorBank,
    Params,
)

__all__ = ["DEFAULT_PARAMS", "STANDARD_THRESHOLD", "WARM_UP", "DetectorBank", "Params"]
