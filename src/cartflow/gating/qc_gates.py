"""Quality gates: stable flow (time bins), singlets (height against area, or width) and
counting beads (bright in every detector that carries signal). Each is a placement method
(:mod:`cartflow.gating.method`): it reads its parent's events and returns its gate and decision."""

from __future__ import annotations

import numpy as np

from cartflow.gating.cuts import place_threshold
from cartflow.gating.errors import GatingError
from cartflow.gating.method import ESTIMATE_LIMIT, FLUOR, PART, Builder, Parent, Placement
from cartflow.gating.model import (
    FCS_SPILL,
    BooleanGate,
    Bound,
    Dimension,
    GateRef,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from cartflow.gating.options import BeadsOptions, SingletsOptions, StableFlowOptions
from cartflow.gating.placement import Bounds, ThresholdDecision
from cartflow.gating.template import CutSpec

BEAD_LIMIT = 4_000
"""Events the bead cut is placed on (every detector of each is transformed)."""


def stable_flow(parent: Parent, options: StableFlowOptions) -> Placement:
    """Time bins whose event rate or mean scatter stray from the rest are left out."""
    out = Builder()
    time = Dimension(parent.channels.time)
    try:
        t = parent.raw(parent.channels.time)
    except GatingError:  # a file without a time channel
        return _skip_stable_flow(parent)
    ssc = parent.raw(parent.channels.ssc_area)
    fsc = parent.raw(parent.channels.fsc_area)
    finite = np.isfinite(t) & np.isfinite(ssc) & np.isfinite(fsc)
    if not finite.all():
        t, ssc, fsc = t[finite], ssc[finite], fsc[finite]
    ssc = np.log10(np.clip(ssc, 1.0, None), dtype=np.float64)
    z_limit = options.max_deviation
    bins = int(np.clip(t.size // 100, 8, 200))
    edges = np.linspace(float(np.min(t)), float(np.max(t)), bins + 1) if t.size else None
    if t.size == 0 or edges[0] == edges[-1]:
        reason = "no events with a finite time" if t.size == 0 else "no time spread"
        out.record(parent.id, ThresholdDecision(0.0, "fixed", True, reason, int(t.size)))
        out.add(RangeGate(parent.id, parent.population, Bound(time, min=_before(t))))
        return out.done()
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    occupied = counts > 0
    metrics = [counts]
    for signal in (fsc, ssc):
        means = np.bincount(which, weights=signal, minlength=bins)
        metrics.append(np.divide(means, counts, out=np.zeros(bins), where=occupied))
    bad = np.zeros(bins, dtype=bool)
    for metric in metrics:
        centre = np.median(metric[occupied])
        spread = 1.4826 * np.median(np.abs(metric[occupied] - centre))
        spread = max(spread, 0.05 * abs(centre), 1e-9)
        bad |= occupied & (np.abs(metric - centre) / spread > z_limit)
    runs = _good_runs(~bad)
    ranges = [
        (None if a == 0 else float(edges[a]), None if b == bins else float(edges[b]))
        for a, b in runs
    ]
    out.record(parent.id, ThresholdDecision(
        float(bad.sum()),
        "fixed",
        False,
        None,
        int(t.size),
        {"edges": edges, "bad_bins": np.flatnonzero(bad).tolist(), "ranges": ranges},
    ))
    if bad.any():
        out.flags.append(f"unstable_flow:{int(bad.sum())} of {bins} time bins")
    if not ranges:
        ranges = [(None, None)]
    gates = [
        RangeGate(
            parent.id if len(ranges) == 1 else f"{parent.id}{PART}{i}",
            parent.population,
            Bound(time, min=_before(t) if lo is None else lo, max=hi),
        )
        for i, (lo, hi) in enumerate(ranges, start=1)
    ]
    if len(gates) > 1:
        refs = tuple(GateRef(g.id) for g in gates)
        gates.append(BooleanGate(parent.id, parent.population, "or", refs))
    out.add(*gates)
    return out.done()


def _skip_stable_flow(parent: Parent) -> Placement:
    """No time channel: the check is skipped (flagged) and every event with a finite
    FSC-A passes, so that the populations below are gated."""
    out = Builder()
    fsc = parent.raw(parent.channels.fsc_area)
    reason = "no time channel: stable-flow check skipped"
    out.record(parent.id, ThresholdDecision(0.0, "skipped", False, reason, int(fsc.size)))
    out.flags.append(f"stable_flow_skipped:{parent.id}")
    fsc_axis = Dimension(parent.channels.fsc_area)
    out.add(RangeGate(parent.id, parent.population, Bound(fsc_axis, min=_before(fsc))))
    return out.done()


def singlets(parent: Parent, options: SingletsOptions) -> Placement:
    """Single cells: a band of height against area through the origin (FSC-A × FSC-H by
    default), or, on a height × width pair (FSC-H × FSC-W, SSC-H × SSC-W), the band of
    widths around the singlets' median."""
    first, second = options.channels or (parent.channels.fsc_area, parent.channels.fsc_height)
    if second.upper().endswith("-W"):
        return _singlets_by_width(parent, options, first, second)
    out = Builder()
    area = parent.values(Dimension(first))
    height = parent.values(Dimension(second))
    finite = np.isfinite(area) & np.isfinite(height)
    area, height = area[finite], height[finite]
    usable = area > np.quantile(area, 0.05) if area.size else area.astype(bool)
    ratio = height[usable] / area[usable]
    # beads form a much narrower band than cells; where they outnumber the cells (a
    # lymphopenic sample) the band must not narrow below what cells spread over
    centre, spread, fallback = _band(ratio, options, 1.0, 0.1)
    low, high = centre - options.width * spread, centre + options.width * spread
    everything = parent.raw(first)
    finite = everything[np.isfinite(everything)]
    top = max(float(finite.max()) * 1.05 if finite.size else 0.0, 262_144.0 * 1.2)
    out.record(parent.id, ThresholdDecision(
        low,
        "fixed",
        fallback,
        "too few events" if fallback else None,
        int(ratio.size),
        {"ratio_median": centre, "ratio_spread": spread, "ratio_range": (low, high)},
    ))  # fmt: skip
    axes = (Dimension(first), Dimension(second))
    vertices = ((0.0, 0.0), (top, low * top), (top, high * top))
    out.add(PolygonGate(parent.id, parent.population, axes, vertices))
    return out.done()


def _band(
    values: np.ndarray, options: SingletsOptions, centre: float, spread: float
) -> tuple[float, float, bool]:
    """Median and robust spread (at least ``min_spread``), or the given ones, flagged as a
    fallback, with fewer than 20 events."""
    if values.size < 20:
        return centre, spread, True
    centre = float(np.median(values))
    spread = max(float(1.4826 * np.median(np.abs(values - centre))), options.min_spread)
    return centre, spread, False


def _singlets_by_width(
    parent: Parent, options: SingletsOptions, height_channel: str, width_channel: str
) -> Placement:
    """Doublets are wider than single cells at the same height: keep the widths up to
    ``width`` robust spreads above the median (at least ``min_spread`` of it, so any scale
    works)."""
    out = Builder()
    height = parent.values(Dimension(height_channel))
    width = parent.values(Dimension(width_channel))
    finite = np.isfinite(height) & np.isfinite(width) & (width > 0)
    height, width = height[finite], width[finite]
    usable = height > np.quantile(height, 0.05) if height.size else height.astype(bool)
    centre, spread, fallback = _band(width[usable], options, 1.0, 0.1)
    if not fallback:  # the spread option is relative to the median width
        spread = max(float(1.4826 * np.median(np.abs(width[usable] - centre))),
                     options.min_spread * centre)  # fmt: skip
    low, high = centre - options.width * spread, centre + options.width * spread
    out.record(parent.id, ThresholdDecision(
        high, "fixed", fallback, "too few events" if fallback else None, int(usable.sum()),
        {"width_median": centre, "width_spread": spread, "width_range": (low, high)},
    ))  # fmt: skip
    bound = Bound(Dimension(width_channel), max=high)  # doublets are wider, not narrower
    out.add(RangeGate(parent.id, parent.population, bound))
    return out.done()


def beads(parent: Parent, options: BeadsOptions) -> Placement:
    """Counting beads: bright in every fluorescence detector that carries signal."""
    out = Builder()
    bounds = Bounds(*options.bounds, options.default)
    dead_channels = {parent.channels.markers.get(n, n) for n in parent.degenerate}
    detectors = [d for d in parent.channels.fluorescence if d not in dead_channels]
    detectors = [d for d in detectors if not _flat(parent, d)]
    if not detectors:
        out.flags.append(f"not_gated:{parent.id}")
        return out.done(skipped="no fluorescence detector carries signal")

    def estimate() -> ThresholdDecision:
        # the transform is monotone and the same for every detector: the dimmest
        # transformed value is the transformed dimmest value (one column transformed)
        columns = [parent.values(Dimension(d, FCS_SPILL), BEAD_LIMIT) for d in detectors]
        scale = parent.transform(FLUOR)
        dimmest = scale.apply(np.min(np.column_stack(columns), axis=1))
        return place_threshold(CutSpec(("valley", "mixture"), bounds), dimmest, None)

    cut = out.record(parent.id, parent.decide(parent.id, estimate)).value
    limits = tuple(Bound(Dimension(d, FCS_SPILL, FLUOR), min=cut) for d in detectors)
    if len(limits) == 1:
        out.add(RangeGate(parent.id, parent.population, limits[0]))
    else:
        out.add(RectangleGate(parent.id, parent.population, limits))
    return out.done()


def _flat(parent: Parent, channel: str) -> bool:
    """A channel without spread on the estimation subsample (e.g. a detector left off)."""
    values = parent.values_in(Dimension(channel), None, ESTIMATE_LIMIT)
    finite = values[np.isfinite(values)]
    return finite.size == 0 or bool(np.ptp(finite) == 0)


def _before(t: np.ndarray) -> float:
    """A time before every event (Gating-ML ranges need a finite end)."""
    t = t[np.isfinite(t)]
    return min(float(np.min(t)) if t.size else 0.0, 0.0) - 1.0


def _good_runs(good: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the runs of True."""
    padded = np.concatenate(([False], good, [False])).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2].tolist(), changes[1::2].tolist(), strict=True))
