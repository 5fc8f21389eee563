"""Quality gates: stable flow (time bins), singlets (FSC-H/FSC-A) and counting beads (bright in
every detector that carries signal). Each places its gate on the sample through a
:class:`~gating.placer.Placer` and records its decision with the evidence."""

from __future__ import annotations

import numpy as np

from gating.errors import GatingError
from gating.model import (
    FCS_SPILL,
    BooleanGate,
    Bound,
    Dimension,
    GateRef,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from gating.placement import Bounds, ThresholdDecision
from gating.placer import ESTIMATE_LIMIT, FLUOR, PART, Placer, place_threshold
from gating.template import CutSpec, PopulationSpec

BEAD_LIMIT = 4_000
"""Events the bead cut is placed on (every detector of each is transformed)."""


def stable_flow(placer: Placer, spec: PopulationSpec) -> None:
    time = Dimension(placer.channels.time)
    try:
        t = placer.raw(placer.channels.time, spec.parent)
    except GatingError:  # a file without a time channel
        _skip_stable_flow(placer, spec)
        return
    ssc = placer.raw(placer.channels.ssc_area, spec.parent)
    fsc = placer.raw(placer.channels.fsc_area, spec.parent)
    finite = np.isfinite(t) & np.isfinite(ssc) & np.isfinite(fsc)
    if not finite.all():
        t, ssc, fsc = t[finite], ssc[finite], fsc[finite]
    ssc = np.log10(np.clip(ssc, 1.0, None))
    z_limit = float(spec.options.get("max_deviation", 5.0))
    bins = int(np.clip(t.size // 100, 8, 200))
    edges = np.linspace(float(np.min(t)), float(np.max(t)), bins + 1) if t.size else None
    if t.size == 0 or edges[0] == edges[-1]:
        reason = "no events with a finite time" if t.size == 0 else "no time spread"
        placer.decisions[spec.id] = ThresholdDecision(0.0, "fixed", True, reason, int(t.size))
        placer.flags.append(f"threshold_fallback:{spec.id}")
        placer.add(RangeGate(spec.id, spec.parent, Bound(time, min=_before(t))))
        return
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
    placer.decisions[spec.id] = ThresholdDecision(
        float(bad.sum()),
        "fixed",
        False,
        None,
        int(t.size),
        {"edges": edges, "bad_bins": np.flatnonzero(bad).tolist(), "ranges": ranges},
    )
    if bad.any():
        placer.flags.append(f"unstable_flow:{int(bad.sum())} of {bins} time bins")
    if not ranges:
        ranges = [(None, None)]
    gates = [
        RangeGate(
            spec.id if len(ranges) == 1 else f"{spec.id}{PART}{i}",
            spec.parent,
            Bound(time, min=_before(t) if lo is None else lo, max=hi),
        )
        for i, (lo, hi) in enumerate(ranges, start=1)
    ]
    if len(gates) > 1:
        refs = tuple(GateRef(g.id) for g in gates)
        gates.append(BooleanGate(spec.id, spec.parent, "or", refs))
    placer.add(*gates)


def _skip_stable_flow(placer: Placer, spec: PopulationSpec) -> None:
    """No time channel: the check is skipped (flagged) and every event with a finite
    FSC-A passes, so that the populations below are gated."""
    fsc = placer.raw(placer.channels.fsc_area, spec.parent)
    reason = "no time channel: stable-flow check skipped"
    placer.decisions[spec.id] = ThresholdDecision(0.0, "skipped", False, reason, int(fsc.size))
    placer.flags.append(f"stable_flow_skipped:{spec.id}")
    fsc_axis = Dimension(placer.channels.fsc_area)
    placer.add(RangeGate(spec.id, spec.parent, Bound(fsc_axis, min=_before(fsc))))


def singlets(placer: Placer, spec: PopulationSpec) -> None:
    area = placer.values(Dimension(placer.channels.fsc_area), spec.parent)
    height = placer.values(Dimension(placer.channels.fsc_height), spec.parent)
    finite = np.isfinite(area) & np.isfinite(height)
    area, height = area[finite], height[finite]
    usable = area > np.quantile(area, 0.05) if area.size else area.astype(bool)
    ratio = height[usable] / area[usable]
    width = float(spec.options.get("width", 5.0))
    # beads form a much narrower band than cells; where they outnumber the cells (a
    # lymphopenic sample) the band must not narrow below what cells spread over
    min_spread = float(spec.options.get("min_spread", 0.02))
    if ratio.size < 20:
        centre, spread, fallback = 1.0, 0.1, True
    else:
        centre = float(np.median(ratio))
        spread = max(float(1.4826 * np.median(np.abs(ratio - centre))), min_spread)
        fallback = False
    low, high = centre - width * spread, centre + width * spread
    everything = placer.raw(placer.channels.fsc_area, spec.parent)
    finite = everything[np.isfinite(everything)]
    top = max(float(finite.max()) * 1.05 if finite.size else 0.0, 262_144.0 * 1.2)
    placer.decisions[spec.id] = ThresholdDecision(
        low,
        "fixed",
        fallback,
        "too few events" if fallback else None,
        int(ratio.size),
        {"ratio_median": centre, "ratio_spread": spread, "ratio_range": (low, high)},
    )
    if fallback:
        placer.flags.append(f"threshold_fallback:{spec.id}")
    axes = (Dimension(placer.channels.fsc_area), Dimension(placer.channels.fsc_height))
    vertices = ((0.0, 0.0), (top, low * top), (top, high * top))
    placer.add(PolygonGate(spec.id, spec.parent, axes, vertices))


def beads(placer: Placer, spec: PopulationSpec) -> None:
    """Counting beads: bright in every fluorescence detector that carries signal."""
    bounds = Bounds(*spec.options.get("bounds", (0.6, 0.95)), spec.options.get("default", 0.8))
    dead_channels = {placer.channels.markers.get(n, n) for n in placer.degenerate}
    detectors = [d for d in placer.channels.fluorescence if d not in dead_channels]
    detectors = [d for d in detectors if not _flat(placer, d)]
    if not detectors:
        placer.skipped[spec.id] = "no fluorescence detector carries signal"
        placer.flags.append(f"not_gated:{spec.id}")
        return

    def estimate() -> ThresholdDecision:
        # the transform is monotone and the same for every detector: the dimmest
        # transformed value is the transformed dimmest value (one column transformed)
        columns = [
            placer.evaluator.values(Dimension(d, FCS_SPILL), spec.parent, BEAD_LIMIT)
            for d in detectors
        ]
        scale = placer.evaluator.gate_set.transforms[FLUOR]
        dimmest = scale.apply(np.min(np.column_stack(columns), axis=1))
        return place_threshold(CutSpec(("valley", "mixture"), bounds), dimmest, None)

    cut = placer.decide(spec.id, estimate).value
    limits = tuple(Bound(Dimension(d, FCS_SPILL, FLUOR), min=cut) for d in detectors)
    if len(limits) == 1:
        placer.add(RangeGate(spec.id, spec.parent, limits[0]))
    else:
        placer.add(RectangleGate(spec.id, spec.parent, limits))


def _flat(placer: Placer, channel: str) -> bool:
    """A channel without spread on the estimation subsample (e.g. a detector left off)."""
    values = placer.evaluator.values(Dimension(channel), None, ESTIMATE_LIMIT)
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
