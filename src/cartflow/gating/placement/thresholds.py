"""Threshold estimators on one marker: valley, mixture and tail."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from cartflow.gating.placement.decision import (
    GRID_POINTS,
    MAX_FIT_EVENTS,
    MIN_EVENTS,
    Bounds,
    ThresholdDecision,
    _clean,
    _fallback,
    density,
)


def _significant_peaks(dens: np.ndarray, peaks: np.ndarray, max_depth_ratio: float) -> np.ndarray:
    """Drop the lower peak of any neighbouring pair whose valley is too shallow to separate
    them (noise on the shoulder of a broad mode), until every valley is deep enough."""
    peaks = np.asarray(peaks)
    while len(peaks) > 1:
        lows = np.array([dens[a : b + 1].min() for a, b in pairwise(peaks)])
        depth = lows / np.minimum(dens[peaks[:-1]], dens[peaks[1:]])
        worst = int(np.argmax(depth))
        if depth[worst] <= max_depth_ratio:
            break
        left, right = peaks[worst], peaks[worst + 1]
        peaks = np.delete(peaks, worst if dens[left] < dens[right] else worst + 1)
    return peaks


FLOOR_RISE = 0.25
"""How far above its minimum the valley floor reaches (share of the minimum density)."""
MIN_PEAK = 0.001
"""A mode counts when its density reaches this share of the highest one (small populations
such as CD3- lymphocytes among expanding T cells)."""


def valley_threshold(
    values: np.ndarray,
    bounds: Bounds,
    max_depth_ratio: float = 0.6,
    bandwidth: float | None = None,
    side: str = "middle",
) -> ThresholdDecision:
    """Density minimum between the two most prominent modes, inside the bounds, moved to the
    ``side`` (lower, middle, upper) of its floor. A minimum that lies outside the bounds is no
    valley for this cut."""
    values = _clean(values)
    if len(values) < MIN_EVENTS:
        return _fallback(bounds, "valley", len(values), f"only {len(values)} events")
    lo = min(values.min(), bounds.low)
    hi = max(values.max(), bounds.high)
    grid, dens = density(values, lo, hi, bandwidth)
    interior = (dens[1:-1] > dens[:-2]) & (dens[1:-1] >= dens[2:])
    peaks = np.flatnonzero(interior) + 1
    peaks = peaks[dens[peaks] > MIN_PEAK * dens.max()]
    evidence = {"grid": grid, "density": dens, "peaks": grid[peaks].tolist()}
    peaks = _significant_peaks(dens, peaks, max_depth_ratio)
    evidence["modes"] = grid[peaks].tolist()
    if len(peaks) < 2:
        return _fallback(bounds, "valley", len(values), "one mode only", **evidence)
    in_bounds = (grid >= bounds.low) & (grid <= bounds.high)
    best = None
    for left, right in pairwise(peaks):
        window = np.arange(left, right + 1)
        valley = window[np.argmin(dens[window])]
        if not in_bounds[valley]:
            # the minimum lies outside the bounds: a valley for this cut only if its floor
            # (a wide, nearly empty gap) reaches into them
            level = dens[valley] * (1.0 + FLOOR_RISE)
            floor = window[_run_around(dens[window] <= level, valley - left)]
            inside = floor[in_bounds[floor]]
            if not inside.size:
                continue
            valley = inside[np.argmin(np.abs(inside - valley))]
        depth = dens[valley] / min(dens[left], dens[right])
        score = depth - 1e-3 * min(dens[left], dens[right]) / dens.max()
        if best is None or score < best[0]:
            best = (score, valley, depth)
    if best is None:
        return _fallback(bounds, "valley", len(values), "no valley inside bounds", **evidence)
    _, valley, depth = best
    # a point of the valley floor (where the density stays within FLOOR_RISE of its minimum):
    # in a wide, nearly empty gap the minimum itself lands anywhere, so the middle; the lower
    # edge where a large negative population's tail falls steeply beside a small positive one
    # (keeps more positives than it lets in negatives)
    level = dens[valley] * (1.0 + FLOOR_RISE)
    run = _run_around(in_bounds & (dens <= level), valley)
    low, high = int(run[0]), int(run[-1])
    floor = {"lower": low, "middle": (low + high) // 2, "upper": high}[side]
    evidence.update(valley=float(grid[valley]), depth_ratio=float(depth), floor=float(grid[floor]))
    valley = floor
    if depth > max_depth_ratio:
        return _fallback(
            bounds, "valley", len(values), f"valley too shallow ({depth:.2f})", **evidence
        )
    return ThresholdDecision(float(grid[valley]), "valley", False, None, len(values), evidence)


def _run_around(flags: np.ndarray, index: int) -> np.ndarray:
    """Indices of the run of True in ``flags`` that contains ``index``."""
    low = high = index
    while low > 0 and flags[low - 1]:
        low -= 1
    while high < flags.size - 1 and flags[high + 1]:
        high += 1
    return np.arange(low, high + 1)


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
