"""The balance estimator: cut where a fitted model's false positives and negatives are equal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cartflow.gating.placement.decision import (
    GRID_POINTS,
    MIN_EVENTS,
    Bounds,
    ThresholdDecision,
    _clean,
    _fallback,
    density,
)


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
