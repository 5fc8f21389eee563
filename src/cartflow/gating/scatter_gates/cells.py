"""The intact-cells scatter gate: ellipses of scatter clusters fitted from the template's
anchors (moved onto the data when they do not fit), or an FSC-A cut without clusters."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cartflow.gating.cuts import place_threshold
from cartflow.gating.method import PART, SSC_LOG, Builder, Parent, Placement
from cartflow.gating.model import (
    BooleanGate,
    Bound,
    Dimension,
    EllipsoidGate,
    Gate,
    GateRef,
    RangeGate,
    RectangleGate,
)
from cartflow.gating.options import CellsOptions
from cartflow.gating.placement import (
    MIN_EVENTS,
    Bounds,
    ClusterFit,
    ThresholdDecision,
    gaussian_clusters,
)
from cartflow.gating.template import CutSpec

MIN_CLUSTER = 20
"""Fewer fitted events than this and a scatter cluster counts as absent."""
POPULATED = 0.01
"""A kept scatter cluster holding less than this share of the events is not found there."""


@dataclass(frozen=True)
class ScatterClusters:
    """What the cells gate fitted, for the gates that declare it as their input."""

    fit: ClusterFit
    kept: tuple[str, ...]
    ssc_shift: float = 0.0
    """How far (log SSC) the anchors were moved onto this sample's scatter: gates reading
    the fit move their SSC bounds with it."""


def cells(parent: Parent, options: CellsOptions) -> Placement:
    """Intact leukocytes by scatter: the union of the kept clusters' ellipses.

    Named clusters (debris, dead cells, lymphocytes, monocytes, granulocytes …) are fitted
    by EM on FSC-A × log SSC-A from the template's anchors; the gate is the union of
    ``radius``-sd ellipses of the clusters in ``keep``, so debris and dead cells, which
    lie beside the leukocytes rather than below a single FSC cut, stay out. With
    ``keep_large`` (default) it also keeps everything larger than the first kept cluster's
    centre within the kept clusters' SSC span: blasts and activated cells.
    """
    anchors = options.clusters
    if not anchors:
        return _cells_by_size(parent, options)
    keep, radius = options.keep, options.radius
    fsc, ssc = parent.scatter_axes()
    ssc_scale = parent.transform(SSC_LOG)
    named = {
        str(name): (float(a), float(ssc_scale.apply(np.array([float(b)]))[0]))
        for name, (a, b) in anchors.items()
    }
    points = np.column_stack([parent.values(fsc), parent.values(ssc)])
    anchored, shift = None, 0.0
    if options.start == "data":
        fit, kept, share = ClusterFit({}, True, "no start on the data fits", 0), [], 0.0
    else:
        fit, kept = _scatter_fit(points, named, options.spread, keep)
        share = _kept_share(points, fit, kept, options)
    if share < options.min_share or options.start == "data":
        # started from the data, or the anchors do not fit this instrument's scatter: the
        # anchors moved so that one kept cluster's sits on the densest scatter (lymphocytes
        # in PBMC, granulocytes in lysed blood): the move whose fit explains the data best
        best = _best_data_start(points, named, [n for n in keep if n in named], options)
        if best is not None:
            refit, rekept, reshare, anchored = best
            if reshare > share:
                fit, kept, share = refit, rekept, reshare
                shift = anchored["ssc_shift"]
    if fit.fallback or not kept:
        reason = fit.reason or "no kept cluster has events"
        return _cells_by_size(parent, options, reason)
    first = fit.clusters[kept[0]]
    edge = first.mean[0] - radius * first.sd(0)
    evidence = dict(fit.evidence, keep=kept, radius=radius, kept_share=share)
    evidence["absent"] = [n for n in keep if n not in kept]
    if anchored is not None:
        evidence["anchored_on_data"] = anchored
    shapes: list[Gate] = [
        EllipsoidGate(
            f"{parent.id}{PART}{name}",
            parent.population,
            (fsc, ssc),
            fit.clusters[name].mean,
            fit.clusters[name].covariance,
            radius * radius,
        )
        for name in kept
    ]
    if options.keep_large:
        # large cells (activated lymphocytes, blasts) lie beyond the first cluster's
        # ellipse on the FSC side, where nothing needs excluding: keep everything larger
        # than its centre across the kept clusters' side-scatter span
        low = first.mean[1] - radius * first.sd(1)
        high = max(fit.clusters[n].mean[1] + radius * fit.clusters[n].sd(1) for n in kept)
        span = (Bound(fsc, min=first.mean[0]), Bound(ssc, min=low, max=high))
        shapes.append(RectangleGate(f"{parent.id}{PART}large", parent.population, span))
        evidence["large"] = {"fsc_min": first.mean[0], "ssc_range": (low, high)}
    if len(shapes) == 1:
        shapes[0] = replace(shapes[0], id=parent.id)
    out = Builder()
    if share < options.min_share:
        out.flags.append(f"implausible:{parent.id}")
    edge_decision = ThresholdDecision(float(edge), "clusters", False, None, fit.events, evidence)
    out.record(parent.id, edge_decision)
    out.add(*shapes)
    if len(shapes) > 1:
        refs = tuple(GateRef(g.id) for g in shapes)
        out.add(BooleanGate(parent.id, parent.population, "or", refs))
    return out.done(fit=ScatterClusters(fit, tuple(kept), shift))


def _scatter_fit(
    points: np.ndarray,
    anchors: dict[str, tuple[float, float]],
    spread: tuple[float, ...],
    keep: tuple[str, ...],
) -> tuple[ClusterFit, list[str]]:
    """The named clusters fitted from their anchors, and the kept ones that hold events and
    stayed near their anchor."""
    fit = gaussian_clusters(points, anchors, spread)
    wandered = set(fit.evidence.get("wandered", ()))
    kept = [
        n
        for n in keep
        if n in fit.clusters and fit.clusters[n].events >= MIN_CLUSTER and n not in wandered
    ]
    return fit, kept


def _best_data_start(
    points: np.ndarray,
    anchors: dict[str, tuple[float, float]],
    references: list[str],
    options: CellsOptions,
) -> tuple[ClusterFit, list[str], float, dict] | None:
    """The refit from anchors moved onto the data (:func:`_anchors_from_data`) with each
    kept cluster in turn as the reference: the one that finds the most of the kept clusters
    (each holding at least ``POPULATED`` of the events), then of highest likelihood in data
    units. A layout moved one cluster off (monocytes' anchor on the granulocytes) fits
    about as well, but leaves a kept cluster beyond the data empty."""
    best = None
    for reference in references:
        start = _anchors_from_data(points, anchors, reference, options.spread)
        if start is None:
            continue
        moved, spread, evidence = start
        fit, kept = _scatter_fit(points, moved, spread, options.keep)
        if fit.fallback or not kept:
            continue
        # the fit's mean log density is in spread units: back to data units
        loglik = fit.evidence["loglik"] - float(np.log(spread[0] * spread[1]))
        share = _kept_share(points, fit, kept, options)
        found = sum(fit.clusters[n].events >= POPULATED * fit.events for n in kept)
        evidence.update(reference=reference, share=share, loglik=loglik, found=found)
        if best is None or (found, loglik) > (best[3]["found"], best[3]["loglik"]):
            best = (fit, kept, share, evidence)
    return best


def _kept_share(
    points: np.ndarray, fit: ClusterFit, kept: list[str], options: CellsOptions
) -> float:
    """Share of the (finite) estimation events the cells gate of this fit would keep."""
    points = points[np.isfinite(points).all(axis=1)]
    if fit.fallback or not kept or not len(points):
        return 0.0
    inside = np.zeros(len(points), dtype=bool)
    limit = options.radius**2
    for name in kept:
        cluster = fit.clusters[name]
        centred = points - np.asarray(cluster.mean)
        inverse = np.linalg.inv(np.asarray(cluster.covariance))
        inside |= np.einsum("ij,jk,ik->i", centred, inverse, centred) <= limit
    if options.keep_large:
        first = fit.clusters[kept[0]]
        low = first.mean[1] - options.radius * first.sd(1)
        high = max(fit.clusters[n].mean[1] + options.radius * fit.clusters[n].sd(1) for n in kept)
        inside |= (points[:, 0] >= first.mean[0]) & (points[:, 1] >= low) & (points[:, 1] < high)
    return float(inside.mean())


def _anchors_from_data(
    points: np.ndarray,
    anchors: dict[str, tuple[float, float]],
    reference: str,
    spread: tuple[float, ...],
) -> tuple[dict[str, tuple[float, float]], tuple[float, ...], dict] | None:
    """Anchors moved onto this sample's scatter: FSC scaled and log SSC shifted so that the
    ``reference`` anchor lands on the densest point of the events above the lowest FSC
    tenth (debris); the FSC spread scales with them. None without enough such events."""
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < MIN_EVENTS:
        return None
    points = points[points[:, 0] > np.quantile(points[:, 0], 0.1)]
    if len(points) < MIN_EVENTS or np.ptp(points[:, 0]) == 0 or np.ptp(points[:, 1]) == 0:
        return None
    counts, x_edges, y_edges = np.histogram2d(points[:, 0], points[:, 1], bins=64)
    kernel = np.exp(-0.5 * np.arange(-3, 4) ** 2 / 2.0)
    smooth = np.apply_along_axis(np.convolve, 0, counts, kernel, mode="same")
    smooth = np.apply_along_axis(np.convolve, 1, smooth, kernel, mode="same")
    i, j = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    mode = ((x_edges[i] + x_edges[i + 1]) / 2, (y_edges[j] + y_edges[j + 1]) / 2)
    if not mode[0] > 0:
        return None
    fsc_factor = mode[0] / anchors[reference][0]
    ssc_shift = mode[1] - anchors[reference][1]
    moved = {n: (a * fsc_factor, b + ssc_shift) for n, (a, b) in anchors.items()}
    evidence = {"mode": [float(v) for v in mode], "fsc_factor": float(fsc_factor),
                "ssc_shift": float(ssc_shift)}  # fmt: skip
    return moved, (spread[0] * fsc_factor, spread[1]), evidence


def _cells_by_size(parent: Parent, options: CellsOptions, why: str | None = None) -> Placement:
    """FSC-A above a valley (or the template default): the gate without scatter clusters."""
    out = Builder()
    axis = Dimension(parent.channels.fsc_area)
    bounds = Bounds(*options.bounds, options.default)

    def estimate() -> ThresholdDecision:
        decision = place_threshold(CutSpec(("valley",), bounds), parent.values(axis), None)
        if why is not None and decision.reason:
            reason = f"scatter clusters: {why}; {decision.reason}"
            return ThresholdDecision(
                decision.value, decision.method, True, reason, decision.events,
                decision.evidence,
            )  # fmt: skip
        return decision

    cut = out.record(parent.id, parent.decide(parent.id, estimate)).value
    out.add(RangeGate(parent.id, parent.population, Bound(axis, min=cut)))
    return out.done()
