"""Automated gating: every gate of a template placed from the sample's own data.

``place`` walks the template top-down. For each population it first places the cuts it needs
(from the events of the population the template names, via :mod:`gating.placement`), then
compiles the population into Gating-ML-shaped gates and evaluates them at once, so the next
cut can look at the population just made. The result is the placed :class:`GateSet` (which
:func:`gating.engine.evaluate` re-applies exactly, and which exports to Gating-ML), the
masks and counts, and every decision with its evidence.

Shape gates: stable flow (time bins), singlets (FSC-H/FSC-A), beads (bright in every
detector), cells (ellipses of scatter clusters fitted from template anchors, so debris and
dead cells stay out) and lymphocytes (low SSC, bright CD45, on the lymphocyte side of the dead
cells). Estimation always works on subsamples (``ESTIMATE_LIMIT``); gates are then evaluated
on every event. Bad input gives flags, not exceptions: channels without signal
(``degenerate_channel:``), non-finite events, cuts that fell back to the template default
(``threshold_fallback:``) and populations that could not be gated (``not_gated:``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np

from gating.engine import Evaluator, GatingResult
from gating.errors import GatingError
from gating.model import (
    FCS_SPILL,
    BooleanGate,
    Bound,
    Dimension,
    EllipsoidGate,
    Gate,
    GateRef,
    GateSet,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from gating.placement import (
    GRID_POINTS,
    MIN_EVENTS,
    Bounds,
    ClusterFit,
    ThresholdDecision,
    balance_threshold,
    density,
    gaussian_clusters,
    mixture_threshold,
    tail_threshold,
    valley_threshold,
)
from gating.template import Condition, CutSpec, PopulationSpec, Template
from gating.transforms import Flog, Logicle

FLUOR = "fluor"
SSC_LOG = "ssc_log"
ESTIMATE_LIMIT = 20_000
BEAD_LIMIT = 4_000
"""Events the bead cut is placed on (every detector of each is transformed)."""
MIN_CLUSTER = 20
"""Fewer fitted events than this and a scatter cluster counts as absent."""
PART = "::"
"""Separator of helper gates (one per phenotype condition) from their population id."""
BLAST_WEIGHT_RATIO = 5.0
"""Lymphocytes outweigh a cluster of their own large cells at least this many times."""


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


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _fixed(value: float, method_reason: str, events: int) -> ThresholdDecision:
    return ThresholdDecision(value, "fixed", False, None, events, {"source": method_reason})


def _place_cut(
    spec: CutSpec,
    values: np.ndarray,
    negatives: np.ndarray | None,
    name: str,
    scale: Logicle | None = None,
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
            decision = valley_threshold(values, spec.bounds, side=spec.valley_side)
        elif method == "mixture":
            decision = mixture_threshold(values, spec.bounds, spec.components)
        elif method == "balance":
            to_linear, to_scale = (scale.inverse, scale.apply) if scale else (_same, _same)
            decision = balance_threshold(
                values,
                spec.bounds,
                to_linear,
                to_scale,
                spec.components,
                spec.floor_sd,
                min_positives=spec.min_positives,
                hidden_share=spec.hidden_share,
            )
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
        fixed_cuts: Mapping[str, float | ThresholdDecision],
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
        self.scatter: ClusterFit | None = None
        self.degenerate: set[str] = set()
        self.scatter_kept: tuple[str, ...] = ()

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
            given = self.fixed_cuts[name]
            decision = (
                given if isinstance(given, ThresholdDecision) else _fixed(float(given), "given", 0)
            )
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
        if marker in self.degenerate:
            return ThresholdDecision(
                spec.bounds.default, spec.methods[0], True, "channel carries no signal", 0
            )
        axis = self.axis(marker)
        population = self._estimate_population(spec)
        values = self.values(axis, population) if population else np.empty(0)
        if above is not None:
            values = values[values >= above]
        negatives = None
        if spec.negative:
            known = spec.negative in self.parents
            negatives = self.values(axis, spec.negative) if known else np.empty(0)
        scale = self.evaluator.gate_set.transforms[FLUOR]
        decision = _place_cut(spec, values, negatives, marker, scale)
        decision.evidence["estimated_on"] = population
        return decision

    def _estimate_population(self, spec: CutSpec) -> str | None:
        """The first population of the cut's chain that is gated and holds enough events."""
        chain = [p for p in spec.estimate_chain if p in self.parents]
        if not chain:
            return None
        for population in chain:
            if self.evaluator.count(population) >= spec.min_events:
                return population
        return max(chain, key=self.evaluator.count)

    # ------------------------------------------------------------------------------ populations

    def check_channels(self) -> None:
        """Flag marker, scatter and time channels that carry no signal (constant or not
        finite on the estimation subsample); cuts on such markers fall back."""
        named = dict(self.channels.markers)
        named |= {
            channel: channel
            for channel in (self.channels.fsc_area, self.channels.ssc_area, self.channels.time)
        }
        for name, channel in named.items():
            try:
                values = self.evaluator.values(Dimension(channel), None, ESTIMATE_LIMIT)
            except GatingError:
                continue  # a missing channel is reported where a gate needs it
            finite = values[np.isfinite(values)]
            if finite.size == 0 or np.ptp(finite) == 0:
                self.degenerate.add(name)
                self.flags.append(f"degenerate_channel:{name}")

    def run(self) -> None:
        self.check_channels()
        for spec in self.template.populations:
            if spec.parent is not None and spec.parent in self.skipped:
                self.skipped[spec.id] = f"parent {spec.parent} was not gated"
                continue
            try:
                if spec.gate is not None:
                    getattr(self, f"_gate_{spec.gate}")(spec)
                else:
                    self._phenotype(spec)
            except (GatingError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                self.skipped[spec.id] = f"could not be gated: {exc}"
                self.flags.append(f"not_gated:{spec.id}")
                continue
            if spec.id not in self.skipped:
                self.populations.append(spec.id)
                self.parents[spec.id] = spec.parent

    def _phenotype(self, spec: PopulationSpec) -> None:
        usable = [c for c in spec.phenotype if c.marker in self.channels.markers]
        dropped = [c for c in spec.phenotype if c.marker not in self.channels.markers]
        if not usable:
            self.skipped[spec.id] = "no marker of its phenotype is on this panel"
            return
        silent = [c.marker for c in usable if c.marker in self.degenerate]
        if silent:
            self.skipped[spec.id] = f"channel of {', '.join(silent)} carries no signal"
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
        ssc = self._raw(self.channels.ssc_area, spec.parent)
        fsc = self._raw(self.channels.fsc_area, spec.parent)
        finite = np.isfinite(t) & np.isfinite(ssc) & np.isfinite(fsc)
        if not finite.all():
            t, ssc, fsc = t[finite], ssc[finite], fsc[finite]
        ssc = np.log10(np.clip(ssc, 1.0, None))
        z_limit = float(spec.options.get("max_deviation", 5.0))
        bins = int(np.clip(t.size // 100, 8, 200))
        edges = np.linspace(float(np.min(t)), float(np.max(t)), bins + 1) if t.size else None
        if t.size == 0 or edges[0] == edges[-1]:
            reason = "no events with a finite time" if t.size == 0 else "no time spread"
            self.decisions[spec.id] = ThresholdDecision(0.0, "fixed", True, reason, int(t.size))
            self.flags.append(f"threshold_fallback:{spec.id}")
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
        area = self.values(Dimension(self.channels.fsc_area), spec.parent)
        height = self.values(Dimension(self.channels.fsc_height), spec.parent)
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
        everything = self._raw(self.channels.fsc_area, spec.parent)
        finite = everything[np.isfinite(everything)]
        top = max(float(finite.max()) * 1.05 if finite.size else 0.0, 262_144.0 * 1.2)
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
        """Counting beads: bright in every fluorescence detector that carries signal."""
        bounds = Bounds(*spec.options.get("bounds", (0.6, 0.95)), spec.options.get("default", 0.8))
        dead_channels = {self.channels.markers.get(n, n) for n in self.degenerate}
        detectors = [d for d in self.channels.fluorescence if d not in dead_channels]
        detectors = [d for d in detectors if not self._flat(d)]
        if not detectors:
            self.skipped[spec.id] = "no fluorescence detector carries signal"
            self.flags.append(f"not_gated:{spec.id}")
            return

        def estimate() -> ThresholdDecision:
            # the transform is monotone and the same for every detector: the dimmest
            # transformed value is the transformed dimmest value (one column transformed)
            columns = [
                self.evaluator.values(Dimension(d, FCS_SPILL), spec.parent, BEAD_LIMIT)
                for d in detectors
            ]
            scale = self.evaluator.gate_set.transforms[FLUOR]
            dimmest = scale.apply(np.min(np.column_stack(columns), axis=1))
            return _place_cut(CutSpec(("valley", "mixture"), bounds), dimmest, None, spec.id)

        cut = self.decide(spec.id, estimate).value
        limits = tuple(Bound(Dimension(d, FCS_SPILL, FLUOR), min=cut) for d in detectors)
        if len(limits) == 1:
            self.add(RangeGate(spec.id, spec.parent, limits[0]))
        else:
            self.add(RectangleGate(spec.id, spec.parent, limits))

    def _flat(self, channel: str) -> bool:
        """A channel without spread on the estimation subsample (e.g. a detector left off)."""
        values = self.evaluator.values(Dimension(channel), None, ESTIMATE_LIMIT)
        finite = values[np.isfinite(values)]
        return finite.size == 0 or bool(np.ptp(finite) == 0)

    def _gate_cells(self, spec: PopulationSpec) -> None:
        """Intact leukocytes by scatter: the union of the kept clusters' ellipses.

        Named clusters (debris, dead cells, lymphocytes, monocytes, granulocytes …) are fitted
        by EM on FSC-A × log SSC-A from the template's anchors; the gate is the union of
        ``radius``-sd ellipses of the clusters in ``keep``, so debris and dead cells, which
        lie beside the leukocytes rather than below a single FSC cut, stay out. With
        ``keep_large`` (default) it also keeps everything larger than the first kept cluster's
        centre within the kept clusters' SSC span: blasts and activated cells.
        """
        beads = spec.options.get("exclude", "beads")
        parent = spec.parent
        if beads in self.populations:
            parent = f"{spec.id}{PART}events"
            self.add(BooleanGate(parent, spec.parent, "not", (GateRef(beads),)))
        anchors = spec.options.get("clusters")
        if not anchors:
            self._gate_cells_by_size(spec, parent)
            return
        keep = tuple(spec.options.get("keep", ("lymphocytes", "monocytes", "granulocytes")))
        radius = float(spec.options.get("radius", 4.0))
        fsc, ssc = self._scatter_axes()
        ssc_scale = self.evaluator.gate_set.transforms[SSC_LOG]
        named = {
            str(name): (float(a), float(ssc_scale.apply(np.array([float(b)]))[0]))
            for name, (a, b) in anchors.items()
        }
        spread = tuple(float(v) for v in spec.options.get("spread", (8_000.0, 0.03)))
        points = np.column_stack([self.values(fsc, parent), self.values(ssc, parent)])
        fit = gaussian_clusters(points, named, spread)
        wandered = set(fit.evidence.get("wandered", ()))
        kept = [
            n
            for n in keep
            if n in fit.clusters and fit.clusters[n].events >= MIN_CLUSTER and n not in wandered
        ]
        if fit.fallback or not kept:
            reason = fit.reason or "no kept cluster has events"
            self._gate_cells_by_size(spec, parent, reason)
            return
        self.scatter = fit
        self.scatter_kept = tuple(kept)
        first = fit.clusters[kept[0]]
        edge = first.mean[0] - radius * first.sd(0)
        evidence = dict(fit.evidence, keep=kept, radius=radius)
        evidence["absent"] = [n for n in keep if n not in kept]
        shapes: list[Gate] = [
            EllipsoidGate(
                f"{spec.id}{PART}{name}",
                parent,
                (fsc, ssc),
                fit.clusters[name].mean,
                fit.clusters[name].covariance,
                radius * radius,
            )
            for name in kept
        ]
        if spec.options.get("keep_large", True):
            # large cells (activated lymphocytes, blasts) lie beyond the first cluster's
            # ellipse on the FSC side, where nothing needs excluding: keep everything larger
            # than its centre across the kept clusters' side-scatter span
            low = first.mean[1] - radius * first.sd(1)
            high = max(fit.clusters[n].mean[1] + radius * fit.clusters[n].sd(1) for n in kept)
            span = (Bound(fsc, min=first.mean[0]), Bound(ssc, min=low, max=high))
            shapes.append(RectangleGate(f"{spec.id}{PART}large", parent, span))
            evidence["large"] = {"fsc_min": first.mean[0], "ssc_range": (low, high)}
        if len(shapes) == 1:
            shapes[0] = replace(shapes[0], id=spec.id)
        self.decisions[spec.id] = ThresholdDecision(
            float(edge), "clusters", False, None, fit.events, evidence
        )
        self.add(*shapes)
        if len(shapes) > 1:
            self.add(BooleanGate(spec.id, parent, "or", tuple(GateRef(g.id) for g in shapes)))

    def _scatter_axes(self) -> tuple[Dimension, Dimension]:
        return Dimension(self.channels.fsc_area), Dimension(self.channels.ssc_area, None, SSC_LOG)

    def _gate_cells_by_size(
        self, spec: PopulationSpec, parent: str | None, why: str | None = None
    ) -> None:
        """FSC-A above a valley (or the template default): the gate without scatter clusters."""
        axis = Dimension(self.channels.fsc_area)
        bounds = Bounds(
            *spec.options.get("bounds", (8_000.0, 40_000.0)), spec.options.get("default", 18_000.0)
        )

        def estimate() -> ThresholdDecision:
            decision = _place_cut(
                CutSpec(("valley",), bounds), self.values(axis, parent), None, spec.id
            )
            if why is not None and decision.reason:
                reason = f"scatter clusters: {why}; {decision.reason}"
                return ThresholdDecision(
                    decision.value, decision.method, True, reason, decision.events,
                    decision.evidence,
                )  # fmt: skip
            return decision

        cut = self.decide(spec.id, estimate).value
        self.add(RangeGate(spec.id, parent, Bound(axis, min=cut)))

    def _gate_lymphocytes(self, spec: PopulationSpec) -> None:
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
        _, axis = self._scatter_axes()
        bounds = Bounds(*spec.options.get("bounds", (0.6, 0.9)), spec.options.get("default", 0.78))
        ssc = self.values(axis, spec.parent)
        decision = self.decide(spec.id, lambda: self._lymphocyte_ssc(spec, ssc, bounds))
        cd45 = spec.options.get("bright", "CD45")
        bright = None
        posterior = self._lymphocyte_posterior(spec)
        if cd45 in self.channels.markers and cd45 not in self.degenerate:
            marker_axis = self.axis(cd45)
            values = self.values(marker_axis, spec.parent)
            sds = float(spec.options.get("cd45_sd", 4.5))
            low_ssc = ssc < decision.value
            others = None if posterior is None else 1.0 - posterior[low_ssc, 0]
            floor = self.decide(
                f"{spec.id}.{cd45}", lambda: _bright_floor(values[low_ssc], sds, others=others)
            )
            if not floor.fallback:  # without a floor the gate is the SSC cut alone
                bright = values >= floor.value
        cd45_floor = None if bright is None else (marker_axis, values, floor)
        plane = self._dead_line(spec, cd45_floor, posterior)
        band = None
        if bright is not None and not decision.fallback:
            band = self._brighter_band(spec, decision, ssc, values, floor.value)
        box_id = spec.id if plane is None and band is None else f"{spec.id}{PART}box"
        if bright is not None:
            box = (Bound(axis, max=decision.value), Bound(marker_axis, min=floor.value))
            self.add(RectangleGate(box_id, spec.parent, box))
        else:
            self.add(RangeGate(box_id, spec.parent, Bound(axis, max=decision.value)))
        if band is not None:
            top, band_floor = band
            shape = (Bound(axis, max=top), Bound(marker_axis, min=band_floor))
            band_id = f"{spec.id}{PART}band"
            union_id = spec.id if plane is None else f"{spec.id}{PART}stepped"
            self.add(
                RectangleGate(band_id, spec.parent, shape),
                BooleanGate(union_id, spec.parent, "or", (GateRef(box_id), GateRef(band_id))),
            )
            box_id = union_id
        if plane is not None:
            self.add(
                plane,
                BooleanGate(spec.id, spec.parent, "and", (GateRef(box_id), GateRef(plane.id))),
            )

    def _brighter_band(
        self,
        spec: PopulationSpec,
        decision: ThresholdDecision,
        ssc: np.ndarray,
        cd45: np.ndarray,
        floor: float,
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
        width = float(spec.options.get("band_sd", 1.0))
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
        band_floor = max(floor, centre + float(spec.options.get("band_cd45_sd", 3.0)) * spread)
        if band_floor >= float(np.median(cd45[lymph])):
            return None
        self.decisions[f"{spec.id}.band"] = ThresholdDecision(
            band_floor,
            "tail",
            False,
            None,
            int(near.sum()),
            {"ssc_range": (decision.value, top), "next_cd45_median": centre,
             "next_cd45_sd": spread, "cd45_floor": band_floor},
        )  # fmt: skip
        return top, band_floor

    def _lymphocyte_posterior(self, spec: PopulationSpec) -> np.ndarray | None:
        """P(lymphocyte | scatter) and, when fitted, P(dead cell | scatter) for the parent's
        estimation events, one column each (None without a scatter fit)."""
        fit = self.scatter
        low = spec.options.get("cluster", "lymphocytes")
        if fit is None or low not in fit.clusters or len(fit.clusters) < 2:
            return None
        dead = spec.options.get("dead", "dead")
        names = (low, dead) if dead in fit.clusters else (low,)
        fsc, ssc = self._scatter_axes()
        points = np.column_stack([self.values(fsc, spec.parent), self.values(ssc, spec.parent)])
        return fit.posterior(points, names)

    def _dead_line(
        self,
        spec: PopulationSpec,
        cd45_floor: tuple[Dimension, np.ndarray, ThresholdDecision] | None,
        posterior: np.ndarray | None,
    ) -> Gate | None:
        """The lymphocyte side of a line across the lymphocyte → dead-cell direction.

        The line sits where the dead cells the CD45 floor lets through become denser than
        the lymphocytes (their weights from the parent's scatter ``posterior``). Dead cells
        are CD45-dim, so with ``dead_cd45_sd`` the CD45 range above the floor is split that
        many lymphocyte CD45 sds below the lymphocytes' mode, and each band gets its own line:
        nearer the lymphocytes where the dim dead cells crowd, further out in the bright band.
        """
        fit, low = self.scatter, spec.options.get("cluster", "lymphocytes")
        dead = spec.options.get("dead", "dead")
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
            splits = spec.options.get("dead_cd45_sd", ())
            if mode is not None and sd:
                inner = sorted(mode - float(k) * sd for k in splits)
                edges[1:1] = [edge for edge in inner if edge > floor.value]
        fsc, ssc = self._scatter_axes()
        banded = len(edges) > 2
        lines: list[tuple[float, float, PolygonGate]] = []
        for number, (lo, hi) in enumerate(pairwise(edges)):
            weights = [lymph.weight, other.weight]
            if cd45 is not None and posterior is not None and posterior.size:
                inside = (cd45 >= lo) & (cd45 < hi)
                weights = [float(np.mean(posterior[:, i] * inside)) for i in range(2)]
            sds = self._dead_crossing(spec, reach, spread, weights)
            limit = float(direction @ mean) + sds * scale
            suffix = f"{number + 1}" if banded else ""
            self.decisions[".".join(filter(None, (spec.id, "dead", suffix)))] = ThresholdDecision(
                sds,
                "clusters",
                False,
                None,
                fit.events,
                {"direction": direction.tolist(), "limit": limit, "lymphocyte_sds": sds,
                 "dead_distance_sds": reach, "dead_spread_sds": spread, "weights": weights,
                 "lymphocyte_mean": list(lymph.mean), "dead_mean": list(other.mean),
                 "cd45_range": [float(lo), float(hi)]},
            )  # fmt: skip
            vertices = _half_plane(direction, limit, ((-1e7, 1e7), (-10.0, 10.0)))
            gate_id = PART.join(filter(None, (spec.id, "dead", suffix)))
            lines.append((lo, hi, PolygonGate(gate_id, spec.parent, (fsc, ssc), vertices)))
        if not banded:
            return lines[0][2]
        return self._banded(spec, cd45_floor[0], lines)

    def _banded(
        self,
        spec: PopulationSpec,
        axis: Dimension,
        lines: list[tuple[float, float, PolygonGate]],
    ) -> BooleanGate:
        """OR over the CD45 bands of each band's dead-cell line, the line evaluated on its
        band's events only; adds the parts."""
        parts = []
        for lo, hi, line in lines:
            band = RangeGate(
                f"{line.id}{PART}cd45",
                spec.parent,
                Bound(axis, min=None if np.isinf(lo) else lo, max=None if np.isinf(hi) else hi),
            )
            self.add(band, replace(line, parent=band.id))
            parts.append(GateRef(line.id))
        return BooleanGate(f"{spec.id}{PART}dead", spec.parent, "or", tuple(parts))

    def _dead_crossing(
        self, spec: PopulationSpec, reach: float, spread: float, weights: list[float]
    ) -> float:
        """Lymphocyte sds along the dead-cell direction where the weighted dead-cell density
        overtakes the lymphocytes' (within ``dead_sd``)."""
        low_sd, high_sd = (float(v) for v in spec.options.get("dead_sd", (2.5, 4.5)))
        grid = np.linspace(low_sd, high_sd, 256)
        lymph_density = weights[0] * np.exp(-0.5 * grid**2)
        dead_density = weights[1] / spread * np.exp(-0.5 * ((grid - reach) / spread) ** 2)
        dead_side = np.flatnonzero(dead_density > lymph_density)
        return float(grid[dead_side[0]]) if dead_side.size else high_sd

    def _lymphocyte_ssc(
        self, spec: PopulationSpec, ssc: np.ndarray, bounds: Bounds
    ) -> ThresholdDecision:
        """The SSC density minimum between the lymphocyte and the next scatter cluster."""
        fit = self.scatter
        low = spec.options.get("cluster", "lymphocytes")
        above = [
            c for c in (fit.clusters.values() if fit else ())
            if c.name in self.scatter_kept and c.name != low
        ]  # fmt: skip
        if fit is None or low not in fit.clusters or not above:
            return _place_cut(CutSpec(("valley",), bounds), ssc, None, spec.id)
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
        sds = float(spec.options.get("lymphocyte_sd", 3.0))
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


def _before(t: np.ndarray) -> float:
    """A time before every event (Gating-ML ranges need a finite end)."""
    t = t[np.isfinite(t)]
    return min(float(np.min(t)) if t.size else 0.0, 0.0) - 1.0


def _good_runs(good: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the runs of True."""
    padded = np.concatenate(([False], good, [False])).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2].tolist(), changes[1::2].tolist(), strict=True))


def _non_finite_events(events: np.ndarray) -> int:
    """Events with a value that is not finite (one event-long mask, not one per value)."""
    events = np.asarray(events)
    if events.ndim != 2:
        return int(np.count_nonzero(~np.isfinite(events)))
    bad = np.zeros(events.shape[0], dtype=bool)
    for j in range(events.shape[1]):
        bad |= ~np.isfinite(events[:, j])
    return int(np.count_nonzero(bad))


def place_cut(
    template: Template, name: str, values: np.ndarray, negatives: np.ndarray | None = None
) -> ThresholdDecision:
    """Place one of a template's cuts (``CAR``, ``CD27.bright``) on the given transformed
    values, e.g. the events of several samples pooled as openCyto's groupBy does."""
    scale = transforms_for(template)[FLUOR]
    return _place_cut(template.cut(name), values, negatives, name, scale)


def place(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    fixed_cuts: Mapping[str, float | ThresholdDecision] | None = None,
) -> tuple[PlacedGating, GatingResult]:
    """Place and evaluate every population of a template on one sample.

    ``fixed_cuts`` (by cut name, e.g. ``{"CAR": 0.31}``, or a decision with its evidence)
    skip estimation for those cuts, e.g. when one threshold was pooled over a patient's
    timepoints (:func:`place_cut`).

    Runs with one BLAS thread: its matrices are small (2 x 2 covariances, blocks of the
    compensation multiply), where waking a second thread costs more than it saves (the
    values do not depend on the thread count).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _place(template, events, channel_names, channels, spill, fixed_cuts)


def _place(
    template: Template,
    events: np.ndarray,
    channel_names: Sequence[str],
    channels: ChannelMap,
    spill: tuple[Sequence[str], np.ndarray] | None,
    fixed_cuts: Mapping[str, float | ThresholdDecision] | None,
) -> tuple[PlacedGating, GatingResult]:
    flags = []
    bad = _non_finite_events(events)
    if bad:
        flags.append(f"non_finite_events:{bad}")
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
