"""Automated gating: every gate of a template placed from the sample's own data.

``place`` walks the template top-down. For each population it first places the cuts it needs
(from the events of the population the template names, via :mod:`gating.placement`), then
compiles the population into Gating-ML-shaped gates and evaluates them at once, so the next
cut can look at the population just made. The result is the placed :class:`GateSet` (which
:func:`gating.engine.evaluate` re-applies exactly, and which exports to Gating-ML), the
masks and counts, and every decision with its evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gating.engine import Evaluator, GatingResult
from gating.model import (
    FCS_SPILL,
    BooleanGate,
    Bound,
    Dimension,
    Gate,
    GateRef,
    GateSet,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from gating.placement import (
    Bounds,
    ThresholdDecision,
    mixture_threshold,
    tail_threshold,
    valley_threshold,
)
from gating.template import Condition, CutSpec, PopulationSpec, Template
from gating.transforms import Flog, Logicle

FLUOR = "fluor"
SSC_LOG = "ssc_log"
ESTIMATE_LIMIT = 50_000
PART = "::"
"""Separator of helper gates (one per phenotype condition) from their population id."""


@dataclass(frozen=True)
class ChannelMap:
    """Where a sample's markers and scatter signals are ($PnN names)."""

    markers: Mapping[str, str]
    fluorescence: tuple[str, ...]
    fsc_area: str = "FSC-A"
    fsc_height: str = "FSC-H"
    ssc_area: str = "SSC-A"
    time: str = "Time"


@dataclass(frozen=True)
class PlacedGating:
    """What was decided for one sample: gates, cuts with evidence, and what was left out."""

    template_id: str
    template_sha256: str
    gate_set: GateSet
    populations: tuple[str, ...]
    parents: Mapping[str, str | None]
    decisions: Mapping[str, ThresholdDecision]
    skipped: Mapping[str, str] = field(default_factory=dict)
    approximations: Mapping[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def cuts(self) -> dict[str, float]:
        """Every placed cut by name (``CD3``, ``CD27.bright``, ``beads``, …)."""
        return {name: d.value for name, d in self.decisions.items()}


def transforms_for(template: Template) -> dict:
    """The template's fluorescence display transform and the SSC log scale."""
    params = {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0} | {
        k.upper(): float(v) for k, v in template.transform.items() if k != "type"
    }
    return {
        FLUOR: Logicle(t=params["T"], w=params["W"], m=params["M"], a=params["A"]),
        SSC_LOG: Flog(t=params["T"], m=params["M"]),
    }


def _fixed(value: float, method_reason: str, events: int) -> ThresholdDecision:
    return ThresholdDecision(value, "fixed", False, None, events, {"source": method_reason})


def _place_cut(
    spec: CutSpec, values: np.ndarray, negatives: np.ndarray | None, name: str
) -> ThresholdDecision:
    """Try each method of a cut in turn; the first that is not a fallback wins."""
    decision = None
    finite = values[np.isfinite(values)]
    if finite.size and np.ptp(finite) == 0:
        return ThresholdDecision(
            spec.bounds.default, spec.methods[0], True, "channel carries no signal", values.size
        )
    tried = []
    for method in spec.methods:
        if method == "valley":
            decision = valley_threshold(values, spec.bounds)
        elif method == "mixture":
            decision = mixture_threshold(values, spec.bounds, spec.components)
        elif method == "tail":
            decision = tail_threshold(
                negatives if negatives is not None else values,
                spec.bounds,
                spec.quantile,
                spec.margin,
            )
        else:
            return _fixed(spec.bounds.default, "template", values.size)
        if not decision.fallback:
            if tried:
                decision.evidence["earlier_attempts"] = tried
            return decision
        tried.append(f"{method}: {decision.reason}")
    assert decision is not None
    reason = "; ".join(tried)
    return ThresholdDecision(
        decision.value, decision.method, True, reason, decision.events, decision.evidence
    )


class _Placer:
    """Walks a template over one sample."""

    def __init__(
        self,
        template: Template,
        evaluator: Evaluator,
        channels: ChannelMap,
        fixed_cuts: Mapping[str, float],
    ) -> None:
        self.template = template
        self.evaluator = evaluator
        self.channels = channels
        self.fixed_cuts = fixed_cuts
        self.decisions: dict[str, ThresholdDecision] = {}
        self.populations: list[str] = []
        self.parents: dict[str, str | None] = {}
        self.skipped: dict[str, str] = {}
        self.approximations: dict[str, str] = {}
        self.flags: list[str] = []

    # ------------------------------------------------------------------------------ helpers

    def axis(self, marker: str) -> Dimension:
        return Dimension(self.channels.markers[marker], FCS_SPILL, FLUOR)

    def add(self, *gates: Gate) -> None:
        for gate in gates:
            self.evaluator.add(gate)

    def values(self, axis: Dimension, population: str | None) -> np.ndarray:
        return self.evaluator.values(axis, population, ESTIMATE_LIMIT)

    def decide(self, name: str, make) -> ThresholdDecision:
        if name in self.fixed_cuts:
            decision = _fixed(float(self.fixed_cuts[name]), "given", 0)
        else:
            decision = make()
        self.decisions[name] = decision
        if decision.fallback:
            self.flags.append(f"threshold_fallback:{name}")
        return decision

    # ------------------------------------------------------------------------------ cuts

    def cut(self, marker: str, level: str) -> float:
        spec = self.template.thresholds[marker]
        positive = self.decisions.get(marker) or self.decide(
            marker, lambda: self._estimate(spec.positive, marker, None)
        )
        if level in ("+", "-"):
            return positive.value
        name = f"{marker}.bright"
        bright = self.decisions.get(name) or self.decide(
            name, lambda: self._estimate(spec.bright, marker, positive.value)
        )
        return bright.value

    def _estimate(self, spec: CutSpec, marker: str, above: float | None) -> ThresholdDecision:
        axis = self.axis(marker)
        values = self.values(axis, spec.estimate_on) if spec.estimate_on else np.empty(0)
        if above is not None:
            values = values[values >= above]
        negatives = None
        if spec.negative:
            known = spec.negative in self.parents
            negatives = self.values(axis, spec.negative) if known else np.empty(0)
        return _place_cut(spec, values, negatives, marker)

    # ------------------------------------------------------------------------------ populations

    def run(self) -> None:
        for spec in self.template.populations:
            if spec.parent is not None and spec.parent in self.skipped:
                self.skipped[spec.id] = f"parent {spec.parent} was not gated"
                continue
            if spec.gate is not None:
                getattr(self, f"_gate_{spec.gate}")(spec)
            else:
                self._phenotype(spec)
            if spec.id not in self.skipped:
                self.populations.append(spec.id)
                self.parents[spec.id] = spec.parent

    def _phenotype(self, spec: PopulationSpec) -> None:
        usable = [c for c in spec.phenotype if c.marker in self.channels.markers]
        dropped = [c for c in spec.phenotype if c.marker not in self.channels.markers]
        if not usable:
            self.skipped[spec.id] = "no marker of its phenotype is on this panel"
            return
        if dropped:
            self.approximations[spec.id] = (
                f"read as {' '.join(map(str, usable))}: "
                f"{', '.join(c.marker for c in dropped)} not on this panel"
            )
        gates = [self._condition_gate(spec, c, len(usable) == 1) for c in usable]
        if len(gates) > 1:
            refs = tuple(GateRef(g.id) for g in gates)
            gates.append(BooleanGate(spec.id, spec.parent, "and", refs))
        self.add(*gates)

    def _condition_gate(self, spec: PopulationSpec, condition: Condition, alone: bool) -> RangeGate:
        gate_id = spec.id if alone else f"{spec.id}{PART}{condition}"
        axis = self.axis(condition.marker)
        if condition.level == "+":
            bound = Bound(axis, min=self.cut(condition.marker, "+"))
        elif condition.level == "-":
            bound = Bound(axis, max=self.cut(condition.marker, "-"))
        elif condition.level == "++":
            bound = Bound(axis, min=self.cut(condition.marker, "++"))
        else:  # dim
            bound = Bound(
                axis, min=self.cut(condition.marker, "+"), max=self.cut(condition.marker, "++")
            )
        return RangeGate(gate_id, spec.parent, bound)

    # ------------------------------------------------------------------------------ shape gates

    def _raw(self, channel: str, population: str | None) -> np.ndarray:
        return self.evaluator.values(Dimension(channel), population)

    def _gate_stable_flow(self, spec: PopulationSpec) -> None:
        time = Dimension(self.channels.time)
        t = self._raw(self.channels.time, spec.parent)
        ssc = np.log10(np.clip(self._raw(self.channels.ssc_area, spec.parent), 1.0, None))
        fsc = self._raw(self.channels.fsc_area, spec.parent)
        z_limit = float(spec.options.get("max_deviation", 5.0))
        bins = int(np.clip(t.size // 100, 8, 200))
        edges = np.linspace(float(np.min(t)), float(np.max(t)), bins + 1) if t.size else None
        if t.size == 0 or edges[0] == edges[-1]:
            self.decisions[spec.id] = ThresholdDecision(0.0, "fixed", True, "no time spread", 0)
            self.add(RangeGate(spec.id, spec.parent, Bound(time, min=_before(t))))
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
        self.decisions[spec.id] = ThresholdDecision(
            float(bad.sum()),
            "fixed",
            False,
            None,
            int(t.size),
            {"edges": edges, "bad_bins": np.flatnonzero(bad).tolist(), "ranges": ranges},
        )
        if bad.any():
            self.flags.append(f"unstable_flow:{int(bad.sum())} of {bins} time bins")
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
        self.add(*gates)

    def _gate_singlets(self, spec: PopulationSpec) -> None:
        area = self._raw(self.channels.fsc_area, spec.parent)
        height = self._raw(self.channels.fsc_height, spec.parent)
        usable = area > np.quantile(area, 0.05) if area.size else area.astype(bool)
        ratio = height[usable] / area[usable]
        width = float(spec.options.get("width", 5.0))
        if ratio.size < 20:
            centre, spread, fallback = 1.0, 0.1, True
        else:
            centre = float(np.median(ratio))
            spread = max(float(1.4826 * np.median(np.abs(ratio - centre))), 0.005)
            fallback = False
        low, high = centre - width * spread, centre + width * spread
        top = max(float(np.max(area)) * 1.05 if area.size else 0.0, 262_144.0 * 1.2)
        self.decisions[spec.id] = ThresholdDecision(
            low,
            "fixed",
            fallback,
            "too few events" if fallback else None,
            int(ratio.size),
            {"ratio_median": centre, "ratio_spread": spread, "ratio_range": (low, high)},
        )
        if fallback:
            self.flags.append(f"threshold_fallback:{spec.id}")
        axes = (Dimension(self.channels.fsc_area), Dimension(self.channels.fsc_height))
        vertices = ((0.0, 0.0), (top, low * top), (top, high * top))
        self.add(PolygonGate(spec.id, spec.parent, axes, vertices))

    def _gate_beads(self, spec: PopulationSpec) -> None:
        detectors = self.channels.fluorescence
        bounds = Bounds(*spec.options.get("bounds", (0.6, 0.95)), spec.options.get("default", 0.8))

        def estimate() -> ThresholdDecision:
            columns = [self.values(Dimension(d, FCS_SPILL, FLUOR), spec.parent) for d in detectors]
            dimmest = np.min(np.column_stack(columns), axis=1) if columns else np.empty(0)
            return _place_cut(CutSpec(("valley", "mixture"), bounds), dimmest, None, spec.id)

        cut = self.decide(spec.id, estimate).value
        self.add(
            RectangleGate(
                spec.id,
                spec.parent,
                tuple(Bound(Dimension(d, FCS_SPILL, FLUOR), min=cut) for d in detectors),
            )
        )

    def _gate_cells(self, spec: PopulationSpec) -> None:
        axis = Dimension(self.channels.fsc_area)
        bounds = Bounds(
            *spec.options.get("bounds", (8_000.0, 40_000.0)), spec.options.get("default", 18_000.0)
        )
        beads = spec.options.get("exclude", "beads")
        have_beads = beads in self.populations

        def estimate() -> ThresholdDecision:
            values = self._raw(self.channels.fsc_area, spec.parent)
            if have_beads:
                keep = ~np.isin(
                    self.evaluator.positions(spec.parent), self.evaluator.positions(beads)
                )
                values = values[keep]
            return _place_cut(CutSpec(("valley",), bounds), values, None, spec.id)

        cut = self.decide(spec.id, estimate).value
        if not have_beads:
            self.add(RangeGate(spec.id, spec.parent, Bound(axis, min=cut)))
            return
        size_gate = RangeGate(f"{spec.id}{PART}FSC", spec.parent, Bound(axis, min=cut))
        refs = (GateRef(size_gate.id), GateRef(beads, complement=True))
        self.add(size_gate, BooleanGate(spec.id, spec.parent, "and", refs))

    def _gate_lymphocytes(self, spec: PopulationSpec) -> None:
        axis = Dimension(self.channels.ssc_area, None, SSC_LOG)
        bounds = Bounds(*spec.options.get("bounds", (0.6, 0.9)), spec.options.get("default", 0.78))
        decision = self.decide(
            spec.id,
            lambda: _place_cut(
                CutSpec(("valley",), bounds), self.values(axis, spec.parent), None, spec.id
            ),
        )
        self.add(RangeGate(spec.id, spec.parent, Bound(axis, max=decision.value)))


def _before(t: np.ndarray) -> float:
    """A time before every event (Gating-ML ranges need a finite end)."""
    return min(float(np.min(t)) if t.size else 0.0, 0.0) - 1.0


def _good_runs(good: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the runs of True."""
    padded = np.concatenate(([False], good, [False])).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2].tolist(), changes[1::2].tolist(), strict=True))


def place(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    fixed_cuts: Mapping[str, float] | None = None,
) -> tuple[PlacedGating, GatingResult]:
    """Place and evaluate every population of a template on one sample.

    ``fixed_cuts`` (by cut name, e.g. ``{"CAR": 0.31}``) skip estimation for those cuts,
    e.g. when one threshold was pooled over a patient's timepoints.
    """
    flags = []
    finite = np.isfinite(events)
    if not finite.all():
        flags.append(f"non_finite_events:{int((~finite.all(axis=1)).sum())}")
    evaluator = Evaluator(transforms_for(template), {}, events, channel_names, spill)
    placer = _Placer(template, evaluator, channels, fixed_cuts or {})
    placer.run()
    placed = PlacedGating(
        template_id=template.id,
        template_sha256=template.sha256,
        gate_set=evaluator.gate_set,
        populations=tuple(placer.populations),
        parents=dict(placer.parents),
        decisions=dict(placer.decisions),
        skipped=dict(placer.skipped),
        approximations=dict(placer.approximations),
        flags=(*flags, *placer.flags),
    )
    return placed, evaluator.result()
