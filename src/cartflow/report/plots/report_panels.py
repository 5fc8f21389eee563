"""The report's plots of a gated sample: per population its parent's events as a binned
density (``cartflow.report.density``) on the gate's axes, the gate drawn over it."""

from __future__ import annotations

import numpy as np

from cartflow.gating.engine import Evaluator
from cartflow.gating.model import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from cartflow.pipeline.gate import SampleGating
from cartflow.report.density import AxisBins, Overlay, PanelSet
from cartflow.report.plots.shapes import (
    _cut_notes,
    _cuts,
    _ellipse,
    _gate_axes,
    _label,
    _population_gates,
)


def _overlay(gates, axes: list[Dimension]) -> Overlay:
    """The gates' cuts on the plot's axes and their polygons and ellipses as outlines."""
    x_cuts: list[float] = []
    y_cuts: list[float] = []
    outlines = []
    for gate in gates:
        if isinstance(gate, PolygonGate) and list(gate.axes) == axes:
            outlines.append(tuple((float(x), float(y)) for x, y in gate.vertices))
        if isinstance(gate, EllipsoidGate) and (outline := _ellipse(gate, axes)) is not None:
            outlines.append(tuple((float(x), float(y)) for x, y in outline[::8]))  # 16 sides
        for axis, low, high in _cuts(gate):
            if axis in axes:
                kept = x_cuts if axis == axes[0] else y_cuts
                kept.extend(float(v) for v in (low, high) if v is not None and np.isfinite(v))
    return Overlay(tuple(x_cuts), tuple(y_cuts), tuple(outlines))


def _spill(gated: SampleGating):
    spill = gated.spillover
    return (list(spill.channels), spill.matrix) if spill else None


def _gating_evaluator(gated: SampleGating) -> Evaluator:
    """The evaluator that gated the sample, or one with its gates evaluated again."""
    if gated.evaluator is not None:
        return gated.evaluator
    gate_set = gated.placed.gate_set
    evaluator = Evaluator(gate_set.transforms, gate_set.compensations, gated.fcs.events,
                          gated.fcs.channel_names, _spill(gated))  # fmt: skip
    for gate in gate_set.gates:
        evaluator.add(gate, checked=True)
    return evaluator


def sample_panels(gated: SampleGating) -> PanelSet:
    """One plot per population: its parent's events as a binned density on the population's
    gate axes (a histogram on one axis), the gate drawn over it."""
    gate_set = gated.placed.gate_set
    evaluator = _gating_evaluator(gated)
    binned: dict[Dimension, tuple[str, AxisBins]] = {}

    def axis_bins(axis: Dimension) -> tuple[str, AxisBins]:
        if axis not in binned:
            scale = gate_set.transforms[axis.transform] if axis.transform else None
            binned[axis] = (_label(gated, axis), AxisBins.of(evaluator.raw_values(axis), scale))
        return binned[axis]

    def passing(gates, axes: list[Dimension], parent: str | None) -> np.ndarray:
        """The parent's events inside the gates' ranges on ``axes`` (as the gates decide)."""
        bounds = [
            bound
            for gate in gates
            if isinstance(gate, RangeGate | RectangleGate)
            for bound in gate.bounds
            if bound.axis in axes
        ]
        return evaluator.within(bounds, parent)

    panels = PanelSet()
    everything = np.arange(gated.result.event_count)
    for population in gated.placed.populations:
        parent = gated.placed.parents[population]
        events = everything if parent is None else np.flatnonzero(gated.result.mask(parent))
        gates = _population_gates(gated, population)
        count = gated.result.count(population)
        share = 100 * count / events.size if events.size else 0.0
        title = f"{population}: {count:,} of {events.size:,} {parent or 'events'} ({share:.1f} %)"
        steps = _gate_steps(gated, population, gates)
        for step, axes in enumerate(steps):
            if step:  # each further pair on the events that passed the pairs before
                events = passing(gates, [a for pair in steps[:step] for a in pair], parent)
                title = f"{population} ({step + 1} of {len(steps)}): on {events.size:,} events"
            elif len(steps) > 1:
                title = f"{title}; 1 of {len(steps)}"
            panels.add(
                population,
                title,
                axis_bins(axes[0]),
                axis_bins(axes[1]) if len(axes) == 2 else None,
                events,
                _overlay(gates, axes),
                _cut_notes(gated, population, axes),
            )
    return panels


def _gate_steps(gated: SampleGating, population: str, gates) -> list[list[Dimension]]:
    """The axes a population's gates are drawn on: all in one plot when they span at most
    two; otherwise two at a time, as a cytometrist draws a phenotype (CD45RA × CD62L, then
    CD27 × CD95), each pair shown on the events that passed the pairs before (only for
    gates that all must hold: one gate or an AND)."""
    axes = _gate_axes(gates)
    whole = gated.placed.gate_set.gate(population)
    if len(axes) <= 2 or (isinstance(whole, BooleanGate) and whole.op != "and"):
        return [axes[:2]] if axes else []
    return [axes[i : i + 2] for i in range(0, len(axes), 2)]
