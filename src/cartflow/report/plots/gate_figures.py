"""Print-quality PNGs of a gated sample with matplotlib (``gate --plots``): per population, its
parent's events as density, the gate drawn, the placed cuts with their evidence, the counts
in the title."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cartflow.gating.compensation import compensate
from cartflow.gating.model import Dimension, EllipsoidGate, PolygonGate
from cartflow.pipeline.gate import SampleGating
from cartflow.report.plots.shapes import (
    _cut_notes,
    _cuts,
    _ellipse,
    _gate_axes,
    _label,
    _population_gates,
)

PLOT_EVENTS = 20_000


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


def _compensated(gated: SampleGating) -> np.ndarray:
    fcs, spill = gated.fcs, gated.spillover
    if spill is None:
        return fcs.events
    return compensate(fcs.events, fcs.channel_names, list(spill.channels), spill.matrix)


def _plot_axes(gates) -> list[Dimension]:
    """The (at most two) axes a population's gates are drawn on."""
    return _gate_axes(gates)[:2]


def _draw_density(ax, gated, compensated, axes, idx) -> tuple[np.ndarray, np.ndarray | None]:
    """The parent's events: a 2-D log density, or a histogram on one axis."""
    x = _axis_values(gated, compensated, axes[0], idx)
    y = None
    if len(axes) == 2:
        y = _axis_values(gated, compensated, axes[1], idx)
        (x0, x1), (y0, y1) = _limits(x), _limits(y)
        density, _, _ = np.histogram2d(x, y, bins=96, range=((x0, x1), (y0, y1)))
        shown = np.ma.masked_equal(np.log1p(density.T), 0)
        ax.imshow(shown, origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap="viridis")
        ax.set_ylabel(_label(gated, axes[1]), fontsize=7)
    else:
        ax.hist(x, bins=120, color="0.45", range=_limits(x))
    ax.set_xlabel(_label(gated, axes[0]), fontsize=7)
    return x, y


def _draw_gates(ax, gates, axes: list[Dimension]) -> None:
    """Polygons and ellipses as outlines, range and rectangle cuts as lines."""
    for gate in gates:
        if isinstance(gate, PolygonGate):
            vertices = np.array((*gate.vertices, gate.vertices[0]))
            ax.plot(vertices[:, 0], vertices[:, 1], color="red", lw=1.2)
        if isinstance(gate, EllipsoidGate) and (outline := _ellipse(gate, axes)) is not None:
            ax.plot(outline[:, 0], outline[:, 1], color="red", lw=1.2)
        for axis, low, high in _cuts(gate):
            if axis not in axes:
                continue
            draw = ax.axvline if axis == axes[0] else ax.axhline
            for value in (low, high):
                if value is not None and np.isfinite(value):
                    draw(value, color="red", lw=1.2)


def draw_population(ax, gated: SampleGating, compensated: np.ndarray, population: str) -> list[str]:
    """Draw a population's parent as density with its gate; returns notes on its cuts."""
    parent = gated.placed.parents[population]
    parent_mask = (
        np.ones(gated.result.event_count, bool) if parent is None else gated.result.mask(parent)
    )
    idx = np.flatnonzero(parent_mask)
    if idx.size > PLOT_EVENTS:
        idx = idx[:: int(np.ceil(idx.size / PLOT_EVENTS))]
    gates = _population_gates(gated, population)
    axes = _plot_axes(gates)
    count, parent_count = gated.result.count(population), int(parent_mask.sum())
    share = 100 * count / parent_count if parent_count else 0.0
    ax.set_title(
        f"{population}: {count:,} of {parent_count:,} {parent or 'events'} ({share:.1f} %)",
        fontsize=8,
    )
    if axes and idx.size:
        x, y = _draw_density(ax, gated, compensated, axes, idx)
        _draw_gates(ax, gates, axes)
        ax.set_xlim(*_limits(x))
        if y is not None:
            ax.set_ylim(*_limits(y))
    ax.tick_params(labelsize=6)
    return _cut_notes(gated, population, axes)


def gate_plots(gated: SampleGating, out_dir: Path) -> list[Path]:
    """Write one PNG per population into ``out_dir``; returns the paths."""
    plt = _matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    compensated = _compensated(gated)
    written = []
    for population in gated.placed.populations:
        fig, ax = plt.subplots(figsize=(5, 4), dpi=90)
        notes = draw_population(ax, gated, compensated, population)
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
