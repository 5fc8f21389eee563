"""What every estimator shares: bounds, the placed decision and the smoothed density."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Method = Literal["valley", "mixture", "tail", "balance", "clusters", "fixed"]
GRID_POINTS = 512
MIN_EVENTS = 50
MAX_FIT_EVENTS = 20_000


@dataclass(frozen=True)
class Bounds:
    """Where a threshold may land (transformed units) and where it goes when unsure."""

    low: float
    high: float
    default: float

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} outside bounds [{self.low}, {self.high}]")


@dataclass(frozen=True)
class ThresholdDecision:
    """A placed threshold and the evidence for it (FlowCal style: mask-free diagnostics)."""

    value: float
    method: Method
    fallback: bool
    reason: str | None
    events: int
    evidence: dict = field(default_factory=dict, compare=False)


def _fallback(
    bounds: Bounds, method: Method, events: int, reason: str, **evidence
) -> ThresholdDecision:
    return ThresholdDecision(bounds.default, method, True, reason, events, evidence)


def density(values: np.ndarray, lo: float, hi: float, bandwidth: float | None = None):
    """Gaussian-smoothed histogram density on a regular grid (vectorised, O(n))."""
    counts, edges = np.histogram(values, bins=GRID_POINTS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    step = edges[1] - edges[0]
    if bandwidth is None:
        bandwidth = silverman_bandwidth(values)
    sigma = max(bandwidth / step, 1.0)
    radius = min(int(4 * sigma), GRID_POINTS // 2 - 1)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    smooth = np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")
    return centres, smooth / (smooth.sum() * step)


def silverman_bandwidth(values: np.ndarray) -> float:
    """Silverman's rule on a robust spread."""
    spread = min(np.std(values), _interquartile(values) / 1.349)
    return 0.9 * max(spread, 1e-6) * len(values) ** -0.2


def _interquartile(values: np.ndarray) -> float:
    """np.subtract(*np.percentile(values, [75, 25])) (numpy's default 'linear' method, the
    same arithmetic), from one partition at the four order statistics it interpolates."""
    n = values.size
    if n < 2 or values.dtype != np.float64 or values.ndim != 1:
        return np.subtract(*np.percentile(values, [75, 25]))
    spots = []
    for q in (0.75, 0.25):
        virtual = (n - 1) * q
        below = math.floor(virtual)
        spots.append((below, min(below + 1, n - 1), virtual - below))
    ordered = np.partition(values, sorted({i for a, b, _ in spots for i in (a, b)}))
    quartiles = []
    for below, above, gamma in spots:
        a, b = ordered[below], ordered[above]
        diff = b - a
        quartiles.append(a + diff * gamma if gamma < 0.5 else b - diff * (1 - gamma))
    return quartiles[0] - quartiles[1]


def _clean(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]
