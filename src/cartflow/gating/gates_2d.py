"""Two-channel gates: drawn in the template (polygon, rectangle, ellipse, quadrant), in the
axes' transformed or data units, or placed from the data (``cluster``: a Gaussian mixture on
two channels and the ellipse of the largest, densest or nearest cluster, in the spirit of
flowDensity and openCyto's flowClust). Each is a placement method
(:mod:`cartflow.gating.method`)."""

from __future__ import annotations

import numpy as np

from cartflow.gating.method import Builder, Parent, Placement
from cartflow.gating.model import Bound, EllipsoidGate, PolygonGate, RectangleGate
from cartflow.gating.options import (
    ClusterOptions,
    EllipseOptions,
    PolygonOptions,
    QuadrantOptions,
    RectangleOptions,
)
from cartflow.gating.placement import MIN_EVENTS, ThresholdDecision

FIT_EVENTS = 20_000
"""At most this many (evenly spaced) parent events shape a cluster fit."""


def _axes(parent: Parent, channels: tuple[str, ...], units: str) -> tuple:
    missing = [c for c in channels if not parent.has(c)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in this sample")
    return tuple(parent.axis(c, units) for c in channels)


def _given(parent: Parent, gate) -> Placement:
    out = Builder()
    out.add(gate)
    return out.done()


def polygon(parent: Parent, options: PolygonOptions) -> Placement:
    """A polygon as the template draws it."""
    axes = _axes(parent, options.channels, options.units)
    return _given(parent, PolygonGate(parent.id, parent.population, axes, options.vertices))


def rectangle(parent: Parent, options: RectangleOptions) -> Placement:
    """A rectangle (``min``/``max`` per channel; an end left out is open)."""
    axes = _axes(parent, options.channels, options.units)
    lows = options.min or (None,) * len(axes)
    highs = options.max or (None,) * len(axes)
    bounds = tuple(Bound(a, min=lo, max=hi) for a, lo, hi in zip(axes, lows, highs, strict=True))
    return _given(parent, RectangleGate(parent.id, parent.population, bounds))


def ellipse(parent: Parent, options: EllipseOptions) -> Placement:
    """An ellipse: ``mean``, ``covariance`` and the squared Mahalanobis ``distance``."""
    axes = _axes(parent, options.channels, options.units)
    gate = EllipsoidGate(
        parent.id, parent.population, axes, options.mean, options.covariance, options.distance
    )
    return _given(parent, gate)


def quadrant(parent: Parent, options: QuadrantOptions) -> Placement:
    """One quarter of a cross at ``at`` (``+-``: above on x, below on y)."""
    axes = _axes(parent, options.channels, options.units)
    bounds = tuple(
        Bound(axis, min=at) if sign == "+" else Bound(axis, max=at)
        for axis, at, sign in zip(axes, options.at, options.quarter, strict=True)
    )
    return _given(parent, RectangleGate(parent.id, parent.population, bounds))


def cluster(parent: Parent, options: ClusterOptions) -> Placement:
    """The ellipse keeping ``level`` of one Gaussian of a mixture fitted on two channels.

    The mixture (``components`` full-covariance Gaussians, scikit-learn) is fitted on the
    parent's events inside the ``trim`` quantiles of each channel; the cluster kept is the
    one with the most events (``largest``), the highest peak (``densest``) or the nearest
    to the ``near`` quantiles of the parent (``nearest``). A gate keeping less than
    ``min_share`` or more than ``max_share`` of the parent is flagged ``implausible:``."""
    from scipy.stats import chi2
    from sklearn.mixture import GaussianMixture

    out = Builder()
    axes = _axes(parent, options.channels, "transformed")
    points = np.column_stack([parent.values(axis) for axis in axes])
    points = points[np.isfinite(points).all(axis=1)]
    k = int(options.components)
    if len(points) < MIN_EVENTS * k:
        out.flags.append(f"not_gated:{parent.id}")
        return out.done(skipped=f"only {len(points)} events for {k} clusters")
    low, high = np.quantile(points, options.trim, axis=0)
    inside = ((points >= low) & (points <= high)).all(axis=1)
    fit_on = points[inside][:: max(1, -(-int(inside.sum()) // FIT_EVENTS))]
    model = GaussianMixture(k, covariance_type="full", random_state=0).fit(fit_on)
    means, covs, weights = model.means_, model.covariances_, model.weights_
    if options.pick == "largest":
        chosen = int(np.argmax(weights))
    elif options.pick == "densest":
        chosen = int(np.argmax(weights / np.sqrt(np.linalg.det(covs))))
    else:
        anchor = np.quantile(points, options.near, axis=0).diagonal()
        spread = np.maximum(high - low, 1e-12)
        chosen = int(np.argmin((((means - anchor) / spread) ** 2).sum(axis=1)))
    distance = float(chi2.ppf(options.level, 2))
    mean, cov = means[chosen], covs[chosen]
    centred = points - mean
    kept = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred) <= distance
    share = float(kept.mean())
    evidence = {
        "means": means.tolist(), "weights": weights.tolist(), "chosen": chosen,
        "pick": options.pick, "share": share, "axes": [a.label for a in axes],
    }  # fmt: skip
    decision = ThresholdDecision(distance, "clusters", False, None, len(points), evidence)
    out.record(parent.id, decision)
    if not options.min_share <= share <= options.max_share:
        out.flags.append(f"implausible:{parent.id}")
    shape = tuple(tuple(float(v) for v in row) for row in cov)
    centre = tuple(float(v) for v in mean)
    out.add(EllipsoidGate(parent.id, parent.population, axes, centre, shape, distance))
    return out.done()
