"""Gaussian clusters in two or more dimensions, fitted by EM from named template anchors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cartflow.gating.placement.decision import MIN_EVENTS


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
