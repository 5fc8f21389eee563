"""What a population's plot shows: the gates that make it up, the axes they are drawn on,
their cuts and outlines, the notes on its cuts and the axis labels."""

from __future__ import annotations

import numpy as np

from cartflow.gating.model import BooleanGate, Dimension, EllipsoidGate, RangeGate, RectangleGate
from cartflow.gating.placer import PART
from cartflow.pipeline.gate import SampleGating


def _population_gates(gated: SampleGating, population: str) -> list:
    """The shape or range gates that make up a population: its own, or the parts of its
    AND/OR gates, followed down through booleans of booleans (the lymphocyte gate)."""
    gate_set = gated.placed.gate_set

    def shapes(gate) -> list:
        if not isinstance(gate, BooleanGate):
            return [gate]
        parts = [gate_set.gate(r.gate) for r in gate.refs]
        own = [g for g in parts if g.id.startswith(population + PART)] or parts[:1]
        return [shape for part in own for shape in shapes(part)]

    return shapes(gate_set.gate(population))


def _cuts(gate) -> list[tuple[Dimension, float | None, float | None]]:
    if isinstance(gate, RangeGate | RectangleGate):
        return [(b.axis, b.min, b.max) for b in gate.bounds]
    return []


def _gate_axes(gates) -> list[Dimension]:
    """Every axis of a population's gates, in order."""
    axes: list[Dimension] = []
    for gate in gates:
        for axis in getattr(gate, "axes", ()):
            if isinstance(axis, Dimension) and axis not in axes:
                axes.append(axis)
    return axes


def _ellipse(gate: EllipsoidGate, axes: list[Dimension]) -> np.ndarray | None:
    """Outline of a 2-D ellipsoid gate drawn on the plot's axes (in either order)."""
    if len(gate.axes) != 2 or set(gate.axes) != set(axes):
        return None
    angles = np.linspace(0.0, 2 * np.pi, 129)
    root = np.linalg.cholesky(np.array(gate.covariance)) * np.sqrt(gate.distance_square)
    outline = np.asarray(gate.mean) + np.column_stack([np.cos(angles), np.sin(angles)]) @ root.T
    return outline if gate.axes[0] == axes[0] else outline[:, ::-1]


def _cut_notes(gated: SampleGating, population: str, axes: list[Dimension]) -> list[str]:
    """Each cut of the population's markers, or on its axes, with how it was placed."""
    markers = gated.panel_markers()
    shown = {a.channel for a in axes}
    notes = []
    for name, decision in gated.placed.decisions.items():
        if name.split(".")[0] == population or markers.get(name.split(".")[0]) in shown:
            state = f"fallback ({decision.reason})" if decision.fallback else decision.method
            if not name.endswith(".core"):
                notes.append(f"{name}: cut {decision.value:.3g} by {state}")
            elif decision.fallback:
                notes.append(f"{name}: none ({decision.reason})")
            else:  # ellipses of a fitted Gaussian, each drawn where the plot has its axes
                share = decision.evidence["quantile"]
                notes.append(
                    f"{name}: ellipses keeping {share:.1%} of the fitted core (drawn on their axes)"
                )
    return notes


def _label(gated: SampleGating, axis: Dimension) -> str:
    marker = next((m for m, c in gated.panel_markers().items() if c == axis.channel), None)
    scale = f" [{axis.transform}]" if axis.transform else ""
    return f"{marker} ({axis.channel}){scale}" if marker else f"{axis.channel}{scale}"
