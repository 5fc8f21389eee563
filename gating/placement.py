"""Data-driven threshold placement on one transformed marker, with its evidence.

Estimators, each bounded by the template and each returning what it saw:
- ``valley``: the deepest density minimum between the two highest modes;
- ``mixture``: a Gaussian mixture (scikit-learn) and the point between the two component
  means where their weighted densities cross;
- ``tail``: an upper quantile of an internal negative population plus a margin;
- ``balance``: a smear of positives running into the negatives (CAR-T), cut where the expected
  false positives and false negatives of a fitted negative + positive model are equal, so
  that the count of the gate is unbiased;
- ``gaussian_clusters``: an EM fit of named clusters started from template anchors (scatter).
When the data give no clear answer the template default is used and ``fallback`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
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


# ---------------------------------------------------------------------------------- balance


def _normal_sf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(-z)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


@dataclass(frozen=True)
class _Model:
    """Negatives: two Gaussians sharing a mean in linear space (detector noise and spread).
    Positives: Gaussians on the transformed scale (log-normal staining)."""

    weight: float
    mean: float
    sds: tuple[float, float]
    share: float
    pos_weights: np.ndarray
    pos_means: np.ndarray
    pos_sds: np.ndarray

    def negative_sf(self, y: np.ndarray) -> np.ndarray:
        a, b = self.sds
        return self.share * _normal_sf((y - self.mean) / a) + (1 - self.share) * _normal_sf(
            (y - self.mean) / b
        )

    def negative_pdf(self, y: np.ndarray) -> np.ndarray:
        a, b = self.sds
        return (
            self.share * _normal_pdf((y - self.mean) / a) / a
            + (1 - self.share) * _normal_pdf((y - self.mean) / b) / b
        )

    def positive_cdf(self, t: np.ndarray) -> np.ndarray:
        z = (t[None, :] - self.pos_means[:, None]) / self.pos_sds[:, None]
        return (self.pos_weights[:, None] * _normal_cdf(z)).sum(axis=0)


def _fit_balance(
    t: np.ndarray,
    y: np.ndarray,
    jacobian: np.ndarray,
    to_scale,
    split: float,
    split_linear: float,
    components: int,
    floor_sd: float,
    iterations: int,
    min_sd: float,
    max_ratio: float = 2.0,
    tol: float = 1e-6,
) -> tuple[_Model, int, float]:
    """EM for the negative + positive model (see :class:`_Model`)."""
    low = t < split
    if low.sum() >= 10:
        mean = float(np.median(y[low]))
        sd = max(float(1.4826 * np.median(np.abs(y[low] - mean))), 1e-6)
    else:  # (nearly) no negatives: start them below the split, where they would be
        mean = 0.0
        sd = max(abs(split_linear) / 3, 1e-6)
    sds = np.array([0.9 * sd, 1.5 * sd])
    share, weight = 0.7, float(np.clip(low.mean(), 0.01, 0.95))
    order = np.argsort(y)
    ladder_y, ladder_t = y[order], t[order]

    def scale_of(value: float) -> float:  # to_scale by the data's own (monotone) pairs
        if ladder_y[0] <= value <= ladder_y[-1]:
            return float(np.interp(value, ladder_y, ladder_t))
        return float(to_scale(np.array([value]))[0])

    floor = scale_of(mean + floor_sd * sd)
    high = t[t > floor]
    if components and high.size >= 2 * components:
        pos_means = np.quantile(high, np.linspace(0.25, 0.75, components))
    else:
        pos_means = floor + 0.05 * np.arange(1, components + 1)
    pos_sds = np.full(components, 0.05)
    pos_weights = np.full(components, (1 - weight) / max(components, 1))
    if components == 0:
        pos_weights = np.zeros(0)
        pos_means = np.zeros(0)
        pos_sds = np.zeros(0)
        weight = 1.0
    previous, done, loglik = -np.inf, 0, -np.inf
    for step in range(1, iterations + 1):
        done = step
        centred = y - mean
        za, zb = centred / sds[0], centred / sds[1]
        neg_a = weight * share * _normal_pdf(za) / sds[0] * jacobian
        neg_b = weight * (1 - share) * _normal_pdf(zb) / sds[1] * jacobian
        if components:
            zp = (t[None, :] - pos_means[:, None]) / pos_sds[:, None]
            pos = pos_weights[:, None] * _normal_pdf(zp) / pos_sds[:, None]
            total = neg_a + neg_b + pos.sum(axis=0) + 1e-300
        else:  # no positive components: their sum would add zeros
            total = neg_a + neg_b + 1e-300
        loglik = float(np.mean(np.log(total)))
        ra, rb = neg_a / total, neg_b / total
        na, nb = ra.sum(), rb.sum()
        weight = (na + nb) / len(t) if components else 1.0
        share = na / max(na + nb, 1e-12)
        wa, wb = ra / sds[0] ** 2, rb / sds[1] ** 2
        w = wa + wb
        mean = float(np.sum(w * y) / max(np.sum(w), 1e-300))
        squares = (y - mean) ** 2
        sa = np.sqrt(np.sum(ra * squares) / max(na, 1e-12))
        sb = np.sqrt(np.sum(rb * squares) / max(nb, 1e-12))
        sds = np.array([max(sa, 1e-6), np.clip(sb, 1.05 * sa, max_ratio * sa) + 1e-6])
        if components:
            rp = pos / total
            npos = rp.sum(axis=1)
            pos_weights = npos / len(t)
            spread = float(np.sqrt(share * sds[0] ** 2 + (1 - share) * sds[1] ** 2))
            floor = scale_of(mean + floor_sd * spread)
            alive = npos > 1e-9
            pos_means = np.where(alive, (rp @ t) / np.maximum(npos, 1e-300), pos_means)
            pos_means = np.maximum(pos_means, floor)
            var = (rp * (t[None, :] - pos_means[:, None]) ** 2).sum(axis=1)
            var /= np.maximum(npos, 1e-300)
            pos_sds = np.where(alive, np.maximum(np.sqrt(var), min_sd), pos_sds)
        if abs(loglik - previous) < tol:
            break
        previous = loglik
    model = _Model(
        float(weight), mean, (float(sds[0]), float(sds[1])), float(share),
        pos_weights, pos_means, pos_sds,
    )  # fmt: skip
    return model, done, loglik * len(t)


def balance_threshold(
    values: np.ndarray,
    bounds: Bounds,
    to_linear,
    to_scale,
    components: int = 2,
    floor_sd: float = 2.5,
    slack: float = 0.5,
    iterations: int = 150,
    min_sd: float = 0.03,
    min_positives: float = 100.0,
    max_events: int = 8_000,
    hidden_share: float | None = 0.4,
) -> ThresholdDecision:
    """Cut where the fitted model expects as many false positives as false negatives.

    For a positive population that runs into the negatives (no valley to speak of) the
    count above any cut is biased; this cut makes it unbiased under the model: negatives are
    Gaussian in linear space (``to_linear`` maps transformed values back), positives are
    Gaussians on the transformed scale kept above ``floor_sd`` negative sds (a BIC test
    decides whether there are positives at all). Positives hidden under the negatives are
    read from the positives' density at the cut, taken to fall to nothing at the negatives'
    centre (``hidden_share`` of that triangle; None: the fitted components' tails). With
    fewer than ``min_positives`` expected positives, or none, the cut lands where ``slack``
    false positives are expected. ``values`` are transformed; the cut is clipped to the
    bounds (evidence says so).
    """
    t = _clean(values)
    if len(t) < MIN_EVENTS:
        return _fallback(bounds, "balance", len(t), f"only {len(t)} events")
    if len(t) > max_events:
        t = t[:: int(np.ceil(len(t) / max_events))]
    y = to_linear(t)
    step = 1e-4
    jacobian = np.maximum((to_linear(t + step) - to_linear(t - step)) / (2 * step), 1e-12)
    args = (t, y, jacobian, to_scale, bounds.low, float(to_linear(np.array([bounds.low]))[0]))
    model, done, loglik = _fit_balance(*args, components, floor_sd, iterations, min_sd)
    alone, _, loglik_alone = _fit_balance(*args, 0, floor_sd, iterations, min_sd)
    gain = loglik - loglik_alone
    penalty = 1.5 * components * np.log(len(t))  # BIC: three parameters per component
    if gain < penalty:
        model = alone
    n = len(values[np.isfinite(values)])
    grid = np.linspace(bounds.low, bounds.high, GRID_POINTS)
    false_pos = n * model.weight * model.negative_sf(to_linear(grid))
    positives = float(n * model.pos_weights.sum())
    balanced = positives >= min_positives
    false_neg = n * model.positive_cdf(grid) if balanced else np.zeros_like(grid)
    if balanced and hidden_share is not None:
        # positives hidden under the negatives: the positives' density at the cut (what the
        # data hold beyond the negative model) decaying to nothing at the negatives' centre
        found_grid, found = density(t, float(t.min()), float(t.max()))
        observed = n * np.interp(grid, found_grid, found)
        slope = (to_linear(grid + step) - to_linear(grid - step)) / (2 * step)
        negative = n * model.weight * model.negative_pdf(to_linear(grid)) * slope
        centre = float(to_scale(np.array([model.mean]))[0])
        reach = np.maximum(grid - centre, 0.0)
        false_neg = np.maximum(observed - negative, 0.0) * reach * hidden_share
    excess = false_pos - false_neg - slack
    below = np.flatnonzero(excess <= 0)
    clipped = None
    if below.size == 0:
        i, clipped = len(grid) - 1, "high"
    else:
        i = int(below[0])
        clipped = "low" if i == 0 and excess[0] < 0 else None
    evidence = {
        "negative": {"weight": model.weight, "mean": model.mean, "sds": list(model.sds),
                     "share": model.share},
        "positive": {"weights": model.pos_weights.tolist(), "means": model.pos_means.tolist(),
                     "sds": model.pos_sds.tolist()},
        "expected_positives": positives,
        "balanced": balanced,
        "hidden_share": hidden_share,
        "expected_false_positives": float(false_pos[i]),
        "expected_false_negatives": float(false_neg[i]),
        "iterations": done,
        "likelihood_gain": float(gain),
        "bic_penalty": float(penalty),
        "positives_kept": bool(gain >= penalty),
        "clipped": clipped,
        "grid": grid,
        "excess": excess,
    }  # fmt: skip
    return ThresholdDecision(float(grid[i]), "balance", False, None, n, evidence)


# ---------------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class Cluster:
    """One fitted Gaussian cluster (in the axes' units)."""

    name: str
    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    weight: float
    events: float

    def sd(self, axis: int) -> float:
        return float(np.sqrt(self.covariance[axis][axis]))


@dataclass(frozen=True)
class ClusterFit:
    """Named Gaussian clusters fitted by EM from template anchors, with the fit's evidence."""

    clusters: dict[str, Cluster]
    fallback: bool
    reason: str | None
    events: int
    evidence: dict = field(default_factory=dict, compare=False)

    def posterior(self, points: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """P(cluster | point) for every point and named cluster, among all clusters."""
        points = np.asarray(points, dtype=np.float64)
        axes = list(np.ascontiguousarray(points.T))  # one array per axis
        share = np.empty((len(self.clusters), points.shape[0]))  # log p, then p, in place
        for i, cluster in enumerate(self.clusters.values()):
            cov = np.asarray(cluster.covariance)
            diffs = [x - m for x, m in zip(axes, cluster.mean, strict=True)]
            inverse = np.linalg.inv(cov)
            _, logdet = np.linalg.slogdet(cov)
            distance = share[i]
            distance[:] = 0.0
            for j, right in enumerate(diffs):
                rotated = diffs[0] * inverse[0, j]
                for k in range(1, len(diffs)):
                    rotated += diffs[k] * inverse[k, j]
                rotated *= right
                distance += rotated
            distance *= -0.5
            distance += np.log(max(cluster.weight, 1e-300)) - 0.5 * logdet
        share[~np.isfinite(share)] = -np.inf
        top = share.max(axis=0)
        top[~np.isfinite(top)] = 0.0
        np.subtract(share, top, out=share)
        np.exp(share, out=share)
        share /= np.maximum(share.sum(axis=0), 1e-300)
        order = list(self.clusters)
        return share[[order.index(n) for n in names]].T

    def density(self, name: str, axis: int, grid: np.ndarray) -> np.ndarray:
        """Weighted marginal density of one cluster along one axis."""
        cluster = self.clusters[name]
        sd = max(cluster.sd(axis), 1e-12)
        z = (grid - cluster.mean[axis]) / sd
        return cluster.weight * np.exp(-0.5 * z * z) / (sd * np.sqrt(2 * np.pi))


def _inverses(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse and log-determinant of each matrix of a stack (positive definite).

    2 x 2 matrices in closed form; larger ones by np.linalg.inv one at a time (for a few
    small matrices much faster than one stacked call)."""
    if matrices.shape[1:] == (2, 2):
        a, b = matrices[:, 0, 0], matrices[:, 0, 1]
        c, d = matrices[:, 1, 0], matrices[:, 1, 1]
        det = a * d - b * c
        inverse = np.stack([np.stack([d, -b], axis=1), np.stack([-c, a], axis=1)], axis=1)
        return inverse / det[:, None, None], np.log(det)
    inverse = np.stack([np.linalg.inv(m) for m in matrices])
    return inverse, np.linalg.slogdet(matrices)[1]


def _clip_spread(covs: np.ndarray, low: float, high: float) -> np.ndarray:
    """Covariances with their eigenvalues clipped to [low, high] (unchanged when inside)."""
    if covs.shape[1:] == (2, 2):  # eigenvalues of symmetric 2 x 2 matrices in closed form
        half_trace = (covs[:, 0, 0] + covs[:, 1, 1]) / 2
        radius = np.hypot((covs[:, 0, 0] - covs[:, 1, 1]) / 2, covs[:, 0, 1])
        if np.all(half_trace - radius >= low) and np.all(half_trace + radius <= high):
            return covs
    values, vectors = np.linalg.eigh(covs)
    values = np.clip(values, low, high)
    return (vectors * values[:, None, :]) @ vectors.transpose(0, 2, 1)


def gaussian_clusters(
    points: np.ndarray,
    anchors: dict[str, tuple[float, ...]],
    spread: tuple[float, ...],
    iterations: int = 80,
    tol: float = 1e-5,
    max_events: int = 4_000,
    prior: float = 10.0,
    max_sd: float = 3.0,
    max_shift: float = 5.0,
) -> ClusterFit:
    """EM for a Gaussian mixture with one component per named anchor (full covariances).

    ``spread`` is a typical cluster sd per axis: it scales the axes and starts every
    component. Components keep their names, so callers can keep or drop clusters by meaning.
    Each component is held near where it started: ``prior`` pseudo-events at its anchor
    (MAP estimates), sds at most ``max_sd`` spreads, so a nearly empty cluster cannot grow
    over its neighbours; one that still moved more than ``max_shift`` spreads from its anchor
    is listed as ``wandered`` in the evidence.
    """
    names = list(anchors)
    points = np.asarray(points, dtype=np.float64)
    points = points[np.all(np.isfinite(points), axis=1)]
    n_all = len(points)
    k, d = len(names), points.shape[1] if points.ndim == 2 else 0
    if n_all < MIN_EVENTS * max(k, 1):
        return ClusterFit({}, True, f"only {n_all} events for {k} clusters", n_all)
    if n_all > max_events:
        points = points[:: int(np.ceil(n_all / max_events))]
    scale = np.asarray(spread, dtype=np.float64)
    z = points / scale
    n = len(z)
    start = np.array([anchors[name] for name in names], dtype=np.float64) / scale
    means = start.copy()
    covs = np.repeat(np.eye(d)[None], k, axis=0)
    weights = np.full(k, 1.0 / k)
    ridge = 1e-4 * np.eye(d)
    previous = -np.inf
    loglik = -np.inf
    done = 0
    rows = list(np.ascontiguousarray(z.T))  # one array per axis: each step runs along events
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    products = np.stack([rows[i] * rows[j] for i, j in pairs])  # second moments, per event
    eye = np.eye(d)
    for step in range(1, iterations + 1):
        done = step
        inverse, logdet = _inverses(covs)
        # (k x n) per axis and cluster; small d, so the d x d products are spelled out
        diffs = [rows[i][None, :] - means[:, i, None] for i in range(d)]
        log_p = np.zeros((k, n))
        for j in range(d):
            rotated = diffs[0] * inverse[:, 0, j, None]
            for i in range(1, d):
                rotated += diffs[i] * inverse[:, i, j, None]
            rotated *= diffs[j]
            log_p += rotated
        log_p *= -0.5
        with np.errstate(divide="ignore"):
            log_p += (np.log(weights) - 0.5 * logdet)[:, None]
        top = log_p.max(axis=0)
        log_p -= top
        resp = np.exp(log_p, out=log_p)
        norm = resp.sum(axis=0)
        resp /= norm
        loglik = float(np.mean(top + np.log(norm)))
        counts = resp.sum(axis=1)
        weights = np.maximum(counts / n, 1e-12)
        sums = resp @ z
        means = (sums + prior * start) / (counts + prior)[:, None]
        # sum of resp (z - mean)(z - mean)' from the weighted moments (z is in spread units,
        # so the cancellation costs a few digits of 16)
        moments = resp @ products.T
        scatter = np.empty((k, d, d))
        for column, (i, j) in enumerate(pairs):
            scatter[:, i, j] = scatter[:, j, i] = (
                moments[:, column]
                - means[:, i] * sums[:, j]
                - sums[:, i] * means[:, j]
                + counts * means[:, i] * means[:, j]
            )
        covs = (scatter + prior * eye) / (counts + prior)[:, None, None] + ridge
        covs = _clip_spread(covs, 1e-4, max_sd**2)
        if abs(loglik - previous) < tol:
            break
        previous = loglik
    outer = np.outer(scale, scale)
    shift = np.sqrt(((means - start) ** 2).sum(axis=1))
    wandered = [name for name, moved in zip(names, shift, strict=True) if moved > max_shift]
    clusters = {
        name: Cluster(
            name,
            tuple((means[i] * scale).tolist()),
            tuple(map(tuple, (covs[i] * outer).tolist())),
            float(weights[i]),
            float(weights[i] * n_all),
        )
        for i, name in enumerate(names)
    }
    evidence = {
        "iterations": done,
        "loglik": loglik,
        "fitted_on": n,
        "anchors": {name: list(anchors[name]) for name in names},
        "means": {name: list(c.mean) for name, c in clusters.items()},
        "weights": {name: c.weight for name, c in clusters.items()},
        "spread": list(spread),
        "shift_spreads": dict(zip(names, shift.round(3).tolist(), strict=True)),
        "wandered": wandered,
    }
    return ClusterFit(clusters, False, None, n_all, evidence)
