"""QC plots of a gated sample: one PNG per population, its parent's events as density, the gate
drawn, the placed cuts with their evidence, the counts in the title."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gating.auto import PART
from gating.compensation import compensate
from gating.model import BooleanGate, Dimension, PolygonGate, RangeGate, RectangleGate
from pipeline.gate import SampleGating

PLOT_EVENTS = 30_000


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axis_values(gated: SampleGating, compensated: np.ndarray, axis: Dimension, idx: np.ndarray):
    column = compensated[idx, gated.fcs.channel_names.index(axis.channel)].astype(np.float64)
    if axis.transform is None:
        return column
    return gated.placed.gate_set.transforms[axis.transform].apply(column)


def _population_gates(gated: SampleGating, population: str) -> list:
    """The shape or range gates that make up a population (its own, or its AND/OR parts)."""
    gate = gated.placed.gate_set.gate(population)
    if isinstance(gate, BooleanGate):
        parts = [gated.placed.gate_set.gate(r.gate) for r in gate.refs]
        return [g for g in parts if g.id.startswith(population + PART)] or parts[:1]
    return [gate]


def _cuts(gate) -> list[tuple[Dimension, float | None, float | None]]:
    if isinstance(gate, RangeGate | RectangleGate):
        return [(b.axis, b.min, b.max) for b in gate.bounds]
    return []


def gate_plots(gated: SampleGating, out_dir: Path) -> list[Path]:
    """Write one PNG per population into ``out_dir``; returns the paths."""
    plt = _matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    fcs = gated.fcs
    spill = fcs.spillover
    compensated = (
        compensate(fcs.events, fcs.channel_names, list(spill.channels), spill.matrix)
        if spill
        else fcs.events
    )
    written = []
    for population in gated.placed.populations:
        parent = gated.placed.parents[population]
        parent_mask = (
            np.ones(gated.result.event_count, bool) if parent is None else gated.result.mask(parent)
        )
        idx = np.flatnonzero(parent_mask)
        if idx.size > PLOT_EVENTS:
            idx = idx[:: int(np.ceil(idx.size / PLOT_EVENTS))]
        gates = _population_gates(gated, population)
        axes = []
        for gate in gates:
            for axis in getattr(gate, "axes", ()):
                if isinstance(axis, Dimension) and axis not in axes:
                    axes.append(axis)
        axes = axes[:2]
        fig, ax = plt.subplots(figsize=(5, 4), dpi=90)
        count, parent_count = gated.result.count(population), int(parent_mask.sum())
        share = 100 * count / parent_count if parent_count else 0.0
        title = f"{population}: {count:,} of {parent_count:,} {parent or 'events'} ({share:.1f} %)"
        notes = []
        if axes and idx.size:
            x = _axis_values(gated, compensated, axes[0], idx)
            if len(axes) == 2:
                y = _axis_values(gated, compensated, axes[1], idx)
                ax.hist2d(x, y, bins=120, cmap="viridis", cmin=1)
                ax.set_ylabel(_label(gated, axes[1]))
            else:
                ax.hist(x, bins=150, color="0.45")
            ax.set_xlabel(_label(gated, axes[0]))
            for gate in gates:
                if isinstance(gate, PolygonGate):
                    vertices = np.array((*gate.vertices, gate.vertices[0]))
                    ax.plot(vertices[:, 0], vertices[:, 1], color="red", lw=1.2)
                for axis, low, high in _cuts(gate):
                    draw = ax.axvline if axis == axes[0] else ax.axhline
                    if axis not in axes:
                        continue
                    for value in (low, high):
                        if value is not None and np.isfinite(value):
                            draw(value, color="red", lw=1.2)
        markers = gated.panel_markers()
        shown = {a.channel for a in axes}
        if axes and idx.size:
            ax.set_xlim(*_limits(x))
            if len(axes) == 2:
                ax.set_ylim(*_limits(y))
        for name, decision in gated.placed.decisions.items():
            marker = name.split(".")[0]
            if marker == population or markers.get(marker) in shown:
                state = f"fallback ({decision.reason})" if decision.fallback else decision.method
                notes.append(f"{name}: cut {decision.value:.3g} by {state}")
        ax.set_title(title, fontsize=9)
        if notes:
            fig.text(0.01, 0.005, "\n".join(notes[:4]), fontsize=6, va="bottom")
        fig.tight_layout(rect=(0, 0.06 if notes else 0, 1, 1))
        path = out_dir / f"{population}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [0.2, 99.8])
    pad = 0.08 * (high - low) or 1.0
    return float(low - pad), float(high + pad)


def _label(gated: SampleGating, axis: Dimension) -> str:
    marker = next((m for m, c in gated.panel_markers().items() if c == axis.channel), None)
    scale = f" [{axis.transform}]" if axis.transform else ""
    return f"{marker} ({axis.channel}){scale}" if marker else f"{axis.channel}{scale}"
