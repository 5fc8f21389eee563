"""The lymphocyte gate: low SSC and bright CD45, on the lymphocyte side of the dead cells;
it reads the cells gate's cluster fit, a declared input."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np

from cartflow.gating.cuts import place_threshold
from cartflow.gating.method import PART, Builder, Parent, Placement
from cartflow.gating.model import (
    BooleanGate,
    Bound,
    Dimension,
    Gate,
    GateRef,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from cartflow.gating.options import LymphocytesOptions
from cartflow.gating.placement import (
    GRID_POINTS,
    MIN_EVENTS,
    Bounds,
    ThresholdDecision,
    density,
)
from cartflow.gating.scatter_gates.cells import MIN_CLUSTER, ScatterClusters
from cartflow.gating.template import CutSpec

NEAR_EMPTY = 0.002
"""A lymphocyte gate whose box keeps at most this share of its parent is implausible."""
BLAST_WEIGHT_RATIO = 5.0
"""Lymphocytes outweigh a cluster of their own large cells at least this many times."""
BRIGHT_KEEP = 0.995
"""Share of the brightest CD45 band a dead-cell line keeps at least."""


def lymphocytes(parent: Parent, options: LymphocytesOptions) -> Placement:
    """Low side scatter and bright CD45, on the lymphocyte side of the dead cells.

    A rectangle on log SSC-A × CD45: the SSC cut is the density minimum between the
    lymphocyte and the next scatter cluster (monocytes); the CD45 floor sits ``cd45_sd``
    sds below the lymphocytes' CD45 mode. Dead cells straddle both cuts, so when the
    scatter fit has a ``dead`` cluster the gate also keeps to the lymphocyte side of a
    line across the lymphocyte → dead direction on FSC-A × log SSC-A, where the dead
    cells' weighted density overtakes the lymphocytes' (kept within ``dead_sd`` lymphocyte
    sds), one line per CD45 band with ``dead_cd45_sd`` (``_dead_line``). Above the SSC cut
    a step keeps events brighter in CD45 than the next cluster (``_brighter_band``).
    """
    out = Builder()
    scatter: ScatterClusters | None = parent.inputs.get("scatter")
    _, axis = parent.scatter_axes()
    shift = 0.0 if scatter is None else scatter.ssc_shift  # anchors moved onto the data
    bounds = Bounds(*(v + shift for v in (*options.bounds, options.default)))
    ssc = parent.values(axis)
    decision = out.record(parent.id, parent.decide(
        parent.id, lambda: _lymphocyte_ssc(scatter, options, ssc, bounds)
    ))  # fmt: skip
    cd45 = options.bright
    bright = None
    posterior = _lymphocyte_posterior(parent, options, scatter)
    if cd45 in parent.channels.markers and cd45 not in parent.degenerate:
        marker_axis = parent.axis(cd45)
        values = parent.values(marker_axis)
        low_ssc = ssc < decision.value
        others = None if posterior is None else 1.0 - posterior[low_ssc, 0]
        floor = out.record(f"{parent.id}.{cd45}", parent.decide(
            f"{parent.id}.{cd45}",
            lambda: _bright_floor(values[low_ssc], options.cd45_sd, others=others),
        ))  # fmt: skip
        if not floor.fallback:  # without a floor the gate is the SSC cut alone
            bright = values >= floor.value
    cd45_floor = None if bright is None else (marker_axis, values, floor)
    plane = _dead_line(parent, options, scatter, cd45_floor, posterior, out)
    band = None
    if bright is not None and not decision.fallback:
        band = _brighter_band(parent, options, decision, ssc, values, floor.value, out)
    inside = np.isfinite(ssc) & (ssc < decision.value)
    if bright is not None:
        inside &= bright
    if ssc.size >= MIN_EVENTS and inside.mean() <= NEAR_EMPTY:
        out.flags.append(f"implausible:{parent.id}")  # the SSC cut keeps (nearly) nothing
    box_id = parent.id if plane is None and band is None else f"{parent.id}{PART}box"
    if bright is not None:
        box = (Bound(axis, max=decision.value), Bound(marker_axis, min=floor.value))
        out.add(RectangleGate(box_id, parent.population, box))
    else:
        out.add(RangeGate(box_id, parent.population, Bound(axis, max=decision.value)))
    if band is not None:
        top, band_floor = band
        shape = (Bound(axis, max=top), Bound(marker_axis, min=band_floor))
        band_id = f"{parent.id}{PART}band"
        union_id = parent.id if plane is None else f"{parent.id}{PART}stepped"
        out.add(
            RectangleGate(band_id, parent.population, shape),
            BooleanGate(union_id, parent.population, "or", (GateRef(box_id), GateRef(band_id))),
        )
        box_id = union_id
    if plane is not None:
        refs = (GateRef(box_id), GateRef(plane.id))
        out.add(plane, BooleanGate(parent.id, parent.population, "and", refs))
    return out.done()


def _brighter_band(
    parent: Parent,
    options: LymphocytesOptions,
    decision: ThresholdDecision,
    ssc: np.ndarray,
    cd45: np.ndarray,
    floor: float,
    out: Builder,
) -> tuple[float, float] | None:
    """A step above the SSC cut for events brighter in CD45 than the next cluster.

    Large lymphocytes (NK cells, activated T cells) reach past the SSC cut, which must
    stay clear of the monocytes; above it, up to ``band_sd`` lymphocyte sds (never past
    the next cluster's centre), the gate keeps events whose CD45 lies
    ``band_cd45_sd`` robust sds above that cluster's CD45 median. Returns (SSC top, CD45
    floor), or None when the clusters leave no room or do not differ in CD45.
    """
    evidence = decision.evidence
    if "between" not in evidence:
        return None
    (a, b), (lymph_sd, next_sd) = evidence["means"], evidence["sds"]
    width = options.band_sd
    top = min(decision.value + width * lymph_sd, b)
    if width <= 0 or top <= decision.value:
        return None
    # the next cluster's upper half: lymphocytes do not reach past its centre
    near = np.isfinite(cd45) & (ssc >= b) & (ssc <= b + next_sd)
    lymph = np.isfinite(cd45) & (np.abs(ssc - a) < lymph_sd)
    if near.sum() < MIN_EVENTS or lymph.sum() < MIN_EVENTS:
        return None
    centre = float(np.median(cd45[near]))
    spread = float(1.4826 * np.median(np.abs(cd45[near] - centre)))
    band_floor = max(floor, centre + options.band_cd45_sd * spread)
    if band_floor >= float(np.median(cd45[lymph])):
        return None
    out.record(f"{parent.id}.band", ThresholdDecision(
        band_floor,
        "tail",
        False,
        None,
        int(near.sum()),
        {"ssc_range": (decision.value, top), "next_cd45_median": centre,
         "next_cd45_sd": spread, "cd45_floor": band_floor},
    ))  # fmt: skip
    return top, band_floor


def _lymphocyte_posterior(
    parent: Parent, options: LymphocytesOptions, scatter: ScatterClusters | None
) -> np.ndarray | None:
    """P(lymphocyte | scatter) and, when fitted, P(dead cell | scatter) for the parent's
    estimation events, one column each (None without a scatter fit)."""
    fit = None if scatter is None else scatter.fit
    low = options.cluster
    if fit is None or low not in fit.clusters or len(fit.clusters) < 2:
        return None
    dead = options.dead
    names = (low, dead) if dead in fit.clusters else (low,)
    fsc, ssc = parent.scatter_axes()
    points = np.column_stack([parent.values(fsc), parent.values(ssc)])
    return fit.posterior(points, names)


def _dead_line(
    parent: Parent,
    options: LymphocytesOptions,
    scatter: ScatterClusters | None,
    cd45_floor: tuple[Dimension, np.ndarray, ThresholdDecision] | None,
    posterior: np.ndarray | None,
    out: Builder,
) -> Gate | None:
    """The lymphocyte side of a line across the lymphocyte → dead-cell direction.

    The line sits where the dead cells the CD45 floor lets through become denser than
    the lymphocytes (their weights from the parent's scatter ``posterior``). Dead cells
    are CD45-dim, so with ``dead_cd45_sd`` the CD45 range above the floor is split that
    many lymphocyte CD45 sds below the lymphocytes' mode, and each band gets its own line:
    nearer the lymphocytes where the dim dead cells crowd, further out in the bright band.
    The brightest band's line keeps at least ``BRIGHT_KEEP`` of that band's events.
    """
    fit, low = (None if scatter is None else scatter.fit), options.cluster
    dead = options.dead
    if fit is None or low not in fit.clusters or dead not in fit.clusters:
        return None
    lymph, other = fit.clusters[low], fit.clusters[dead]
    if other.events < MIN_CLUSTER:
        return None
    cov = np.asarray(lymph.covariance)
    mean = np.asarray(lymph.mean)
    direction = np.linalg.solve(cov, np.asarray(other.mean) - mean)
    scale = float(np.sqrt(direction @ cov @ direction))
    if not np.isfinite(scale) or scale <= 0:
        return None
    reach = scale  # Mahalanobis distance of the dead cells from the lymphocytes
    spread = float(np.sqrt(direction @ np.asarray(other.covariance) @ direction)) / scale
    edges, cd45 = [-np.inf, np.inf], None
    if cd45_floor is not None:
        _, cd45, floor = cd45_floor
        edges[0] = floor.value
        mode, sd = floor.evidence.get("mode"), floor.evidence.get("upper_sd")
        splits = options.dead_cd45_sd
        if mode is not None and sd:
            inner = sorted(mode - float(k) * sd for k in splits)
            edges[1:1] = [edge for edge in inner if edge > floor.value]
    fsc, ssc = parent.scatter_axes()
    banded = len(edges) > 2
    if banded:  # each event's distance along the direction, in lymphocyte sds
        points = np.column_stack([parent.values(fsc), parent.values(ssc)])
        along = (points @ direction - float(direction @ mean)) / scale
    lines: list[tuple[float, float, PolygonGate]] = []
    for number, (lo, hi) in enumerate(pairwise(edges)):
        weights = [lymph.weight, other.weight]
        inside = None if cd45 is None else (cd45 >= lo) & (cd45 < hi)
        if inside is not None and posterior is not None and posterior.size:
            weights = [float(np.mean(posterior[:, i] * inside)) for i in range(2)]
        sds = _dead_crossing(options, reach, spread, weights)
        extra = {}
        brightest = along[inside & np.isfinite(along)] if banded and np.isinf(hi) else ()
        if len(brightest):
            # the brightest band is the live lymphocytes' own (dead cells are CD45-dim):
            # its line keeps their upper tail even when the dead-cell cluster was fitted
            # onto it (NK cells, with more side scatter than T cells, lie in that tail)
            tail = float(np.quantile(brightest, BRIGHT_KEEP))
            extra = {"crossing_sds": sds, "bright_keep": BRIGHT_KEEP, "bright_tail_sds": tail}
            sds = max(sds, min(options.dead_sd[1], tail))
        limit = float(direction @ mean) + sds * scale
        suffix = f"{number + 1}" if banded else ""
        out.record(".".join(filter(None, (parent.id, "dead", suffix))), ThresholdDecision(
            sds,
            "clusters",
            False,
            None,
            fit.events,
            {"direction": direction.tolist(), "limit": limit, "lymphocyte_sds": sds,
             "dead_distance_sds": reach, "dead_spread_sds": spread, "weights": weights,
             "lymphocyte_mean": list(lymph.mean), "dead_mean": list(other.mean),
             "cd45_range": [float(lo), float(hi)], **extra},
        ))  # fmt: skip
        vertices = _half_plane(direction, limit, ((-1e7, 1e7), (-10.0, 10.0)))
        gate_id = PART.join(filter(None, (parent.id, "dead", suffix)))
        lines.append((lo, hi, PolygonGate(gate_id, parent.population, (fsc, ssc), vertices)))
    if not banded:
        return lines[0][2]
    return _banded(parent, cd45_floor[0], lines, out)


def _banded(
    parent: Parent,
    axis: Dimension,
    lines: list[tuple[float, float, PolygonGate]],
    out: Builder,
) -> BooleanGate:
    """OR over the CD45 bands of each band's dead-cell line, the line evaluated on its
    band's events only; adds the parts."""
    parts = []
    for lo, hi, line in lines:
        band = RangeGate(
            f"{line.id}{PART}cd45",
            parent.population,
            Bound(axis, min=None if np.isinf(lo) else lo, max=None if np.isinf(hi) else hi),
        )
        out.add(band, replace(line, parent=band.id))
        parts.append(GateRef(line.id))
    return BooleanGate(f"{parent.id}{PART}dead", parent.population, "or", tuple(parts))


def _dead_crossing(
    options: LymphocytesOptions, reach: float, spread: float, weights: list[float]
) -> float:
    """Lymphocyte sds along the dead-cell direction where the weighted dead-cell density
    overtakes the lymphocytes' (within ``dead_sd``)."""
    low_sd, high_sd = options.dead_sd
    grid = np.linspace(low_sd, high_sd, 256)
    lymph_density = weights[0] * np.exp(-0.5 * grid**2)
    dead_density = weights[1] / spread * np.exp(-0.5 * ((grid - reach) / spread) ** 2)
    dead_side = np.flatnonzero(dead_density > lymph_density)
    return float(grid[dead_side[0]]) if dead_side.size else high_sd


def _lymphocyte_ssc(
    scatter: ScatterClusters | None, options: LymphocytesOptions, ssc: np.ndarray, bounds: Bounds
) -> ThresholdDecision:
    """The SSC density minimum between the lymphocyte and the next scatter cluster."""
    fit = None if scatter is None else scatter.fit
    low = options.cluster
    above = [
        c for c in (fit.clusters.values() if fit else ())
        if c.name in scatter.kept and c.name != low
    ]  # fmt: skip
    if fit is None or low not in fit.clusters or not above:
        return place_threshold(CutSpec(("valley",), bounds), ssc, None)
    lymph, nearest = fit.clusters[low], min(above, key=lambda c: c.mean[1])
    a, b = lymph.mean[1], nearest.mean[1]
    evidence = {
        "between": [low, nearest.name],
        "means": [a, b],
        "sds": [lymph.sd(1), nearest.sd(1)],
        "weights": [lymph.weight, nearest.weight],
    }
    if b <= a:
        return ThresholdDecision(
            bounds.default, "clusters", True, "clusters do not separate", ssc.size, evidence
        )
    # the weighted Gaussian crossing, refined to the data's density minimum near it
    grid = np.linspace(a, b, GRID_POINTS)
    diff = fit.density(low, 1, grid) - fit.density(nearest.name, 1, grid)
    crossing = np.flatnonzero(np.diff(np.sign(diff)) != 0)
    cut = float(grid[crossing[0]]) if crossing.size else (a + b) / 2
    evidence["crossing"] = cut
    values = ssc[np.isfinite(ssc)]
    if values.size >= MIN_EVENTS:
        half = 1.5 * min(lymph.sd(1), nearest.sd(1))
        grid, dens = density(values, float(values.min()), float(values.max()))
        near = np.flatnonzero(np.abs(grid - cut) <= half)
        if near.size > 2:
            lowest = near[np.argmin(dens[near])]
            if lowest not in (near[0], near[-1]):  # an interior minimum: a real valley
                cut = float(grid[lowest])
                evidence["valley"] = cut
    # keep clear of each cluster's own spread, unless the two overlap (then the density
    # decides) or the upper cluster is too broad to be a cluster (then only the lower);
    # a much smaller "next cluster" centred inside the lymphocytes' own spread is their
    # large cells (activated blasts at expansion), not another population: keep clear of
    # the spread
    sds = options.lymphocyte_sd
    broad = 2.0 * float(fit.evidence.get("spread", (0.0, 0.03))[1])
    lower = a + sds * lymph.sd(1)
    upper = b - sds * nearest.sd(1) if nearest.sd(1) <= broad else np.inf
    guarded = cut
    if lower <= upper:
        guarded = float(np.clip(cut, lower, upper))
    elif b < lower and lymph.weight >= BLAST_WEIGHT_RATIO * nearest.weight:
        guarded = max(cut, lower)
    if guarded != cut:
        evidence["guard"] = [lower, upper]
        cut = guarded
    evidence["cut"] = cut
    if not bounds.low <= cut <= bounds.high:
        reason = f"cut {cut:.3f} outside bounds"
        return ThresholdDecision(bounds.default, "clusters", True, reason, ssc.size, evidence)
    return ThresholdDecision(cut, "clusters", False, None, int(ssc.size), evidence)


def _bright_floor(
    values: np.ndarray,
    sds: float,
    inner_sds: float = 2.5,
    others: np.ndarray | None = None,
) -> ThresholdDecision:
    """A floor under a bright population: the density minimum between ``inner_sds`` and
    ``sds`` sds below its mode (where dimmer events that share the gate, such as dead cells,
    begin), the sd read off its upper side (those events widen only the lower side). With
    ``others`` (each event's scatter probability of belonging to another population: dead
    cells, monocytes) the floor rises to where their density falls below the population's
    own, if that lies higher."""
    finite = np.isfinite(values)
    values = values[finite]
    if values.size < MIN_EVENTS:
        reason = f"only {values.size} events; no floor applied"
        return ThresholdDecision(0.0, "tail", True, reason, int(values.size))
    grid, dens = density(values, float(values.min()), float(values.max()))
    mode = float(grid[np.argmax(dens)])
    upper = values[values > mode] - mode
    spread = float(np.median(upper) / 0.6745) if upper.size >= 10 else 0.0
    if not spread > 0:
        spread = float(1.4826 * np.median(np.abs(values - mode)))
    outer, inner = mode - sds * spread, mode - inner_sds * spread
    between = (grid >= outer) & (grid <= inner)
    cut = float(grid[between][np.argmin(dens[between])]) if between.any() else outer
    evidence = {"mode": mode, "upper_sd": spread, "sds": sds, "outer": outer, "valley": cut}
    if others is not None and between.any():
        weights = others[finite]
        step = grid[1] - grid[0]
        edges = (grid[0] - step / 2, grid[-1] + step / 2)
        dead, _ = np.histogram(values, GRID_POINTS, edges, weights=weights)
        live, _ = np.histogram(values, GRID_POINTS, edges, weights=1.0 - weights)
        kernel = np.exp(-0.5 * np.arange(-8, 9) ** 2 / 9.0)
        dead = np.convolve(dead, kernel, mode="same")
        live = np.convolve(live, kernel, mode="same")
        dominated = between & (dead > live)
        if dominated.any():
            crossing = float(grid[np.flatnonzero(dominated)[-1]] + step)
            evidence["others_crossing"] = crossing
            cut = max(cut, min(crossing, inner))
    evidence["cut"] = cut
    return ThresholdDecision(cut, "tail", False, None, int(values.size), evidence)


def _half_plane(
    normal: np.ndarray, limit: float, box: tuple[tuple[float, float], tuple[float, float]]
) -> tuple[tuple[float, float], ...]:
    """Polygon of the part of a box where normal · x <= limit (one Sutherland-Hodgman step)."""
    (x0, x1), (y0, y1) = box
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    kept: list[tuple[float, float]] = []
    for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
        fa, fb = normal @ np.array(a) - limit, normal @ np.array(b) - limit
        if fa <= 0:
            kept.append(a)
        if (fa < 0 < fb) or (fb < 0 < fa):
            share = fa / (fa - fb)
            kept.append((a[0] + share * (b[0] - a[0]), a[1] + share * (b[1] - a[1])))
    return tuple((float(x), float(y)) for x, y in kept)
