"""Data-driven threshold placement on one transformed marker, with its evidence.

Three estimators, each bounded by the template and each returning what it saw:
- ``valley``: the deepest density minimum between the two highest modes;
- ``mixture``: a Gaussian mixture (scikit-learn) and the point between the two component
  means where their weighted densities cross;
- ``tail``: an upper quantile of an internal negative population plus a margin.
When the data give no clear answer the template default is used and ``fallback`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import numpy as np

Method = Literal["valley", "mixture", "tail", "fixed"]
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
    if bandwidth is None:  # Silverman's rule on a robust spread
        spread = min(np.std(values), np.subtract(*np.percentile(values, [75, 25])) / 1.349)
        bandwidth = 0.9 * max(spread, 1e-6) * len(values) ** -0.2
    sigma = max(bandwidth / step, 1.0)
    radius = min(int(4 * sigma), GRID_POINTS // 2 - 1)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    smooth = np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")
    return centres, smooth / (smooth.sum() * step)


def _clean(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def valley_threshold(
    values: np.ndarray, bounds: Bounds, max_depth_ratio: float = 0.6, bandwidth: float | None = None
) -> ThresholdDecision:
    """Density minimum between the two most prominent modes, inside the bounds."""
    values = _clean(values)
    if len(values) < MIN_EVENTS:
        return _fallback(bounds, "valley", len(values), f"only {len(values)} events")
    lo = min(values.min(), bounds.low)
    hi = max(values.max(), bounds.high)
    grid, dens = density(values, lo, hi, bandwidth)
    interior = (dens[1:-1] > dens[:-2]) & (dens[1:-1] >= dens[2:])
    peaks = np.flatnonzero(interior) + 1
    peaks = peaks[dens[peaks] > 0.02 * dens.max()]
    evidence = {"grid": grid, "density": dens, "peaks": grid[peaks].tolist()}
    if len(peaks) < 2:
        return _fallback(bounds, "valley", len(values), "one mode only", **evidence)
    in_bounds = (grid >= bounds.low) & (grid <= bounds.high)
    best = None
    for left, right in pairwise(peaks):
        window = np.arange(left, right + 1)
        window = window[in_bounds[window]]
        if len(window) == 0:
            continue
        valley = window[np.argmin(dens[window])]
        depth = dens[valley] / min(dens[left], dens[right])
        score = depth - 1e-3 * min(dens[left], dens[right]) / dens.max()
        if best is None or score < best[0]:
            best = (score, valley, depth)
    if best is None:
        return _fallback(bounds, "valley", len(values), "no valley inside bounds", **evidence)
    _, valley, depth = best
    evidence.update(valley=float(grid[valley]), depth_ratio=float(depth))
    if depth > max_depth_ratio:
        return _fallback(
            bounds, "valley", len(values), f"valley too shallow ({depth:.2f})", **evidence
        )
    return ThresholdDecision(float(grid[valley]), "valley", False, None, len(values), evidence)


def mixture_threshold(
    values: np.ndarray, bounds: Bounds, components: int = 2, seed: int = 0
) -> ThresholdDecision:
    """Crossing point of the two highest-weight Gaussian components between their means."""
    from sklearn.mixture import GaussianMixture

    values = _clean(values)
    if len(values) < MIN_EVENTS:
        return _fallback(bounds, "mixture", len(values), f"only {len(values)} events")
    rng = np.random.default_rng(seed)
    fit_on = values if len(values) <= MAX_FIT_EVENTS else rng.choice(values, MAX_FIT_EVENTS, False)
    model = GaussianMixture(components, random_state=seed).fit(fit_on[:, None])
    means = model.means_.ravel()
    sds = np.sqrt(model.covariances_.ravel())
    weights = model.weights_
    order = np.argsort(means)
    evidence = {
        "means": means[order].tolist(),
        "sds": sds[order].tolist(),
        "weights": weights[order].tolist(),
    }
    top_two = np.sort(np.argsort(weights)[-2:])
    a, b = sorted(top_two, key=lambda i: means[i])
    grid = np.linspace(means[a], means[b], GRID_POINTS)

    def weighted_pdf(i):
        return weights[i] / sds[i] * np.exp(-0.5 * ((grid - means[i]) / sds[i]) ** 2)

    diff = weighted_pdf(a) - weighted_pdf(b)
    crossing = np.flatnonzero(np.diff(np.sign(diff)) != 0)
    if len(crossing) == 0:
        return _fallback(bounds, "mixture", len(values), "components do not separate", **evidence)
    cut = float(grid[crossing[0]])
    separation = (means[b] - means[a]) / (sds[a] + sds[b])
    evidence.update(cut=cut, separation=float(separation))
    if separation < 1.0:
        reason = f"components overlap (separation {separation:.2f})"
        return _fallback(bounds, "mixture", len(values), reason, **evidence)
    if not bounds.low <= cut <= bounds.high:
        return _fallback(
            bounds, "mixture", len(values), f"cut {cut:.3f} outside bounds", **evidence
        )
    return ThresholdDecision(cut, "mixture", False, None, len(values), evidence)


def tail_threshold(
    negative_values: np.ndarray, bounds: Bounds, quantile: float = 0.995, margin: float = 0.0
) -> ThresholdDecision:
    """Upper quantile of an internal negative population, plus a margin."""
    values = _clean(negative_values)
    if len(values) < MIN_EVENTS:
        return _fallback(bounds, "tail", len(values), f"only {len(values)} negative events")
    cut = float(np.quantile(values, quantile) + margin)
    evidence = {
        "quantile": quantile,
        "margin": margin,
        "negative_median": float(np.median(values)),
        "cut": cut,
    }
    if not bounds.low <= cut <= bounds.high:
        return _fallback(bounds, "tail", len(values), f"cut {cut:.3f} outside bounds", **evidence)
    return ThresholdDecision(cut, "tail", False, None, len(values), evidence)
