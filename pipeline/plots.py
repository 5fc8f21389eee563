"""QC plots of a gated sample: one PNG per population, its parent's events as density, the gate
drawn, the placed cuts with their evidence, the counts in the title."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from gating.compensation import compensate
from gating.model import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from gating.placer import PART
from pipeline.gate import SampleGating

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


def _compensated(gated: SampleGating) -> np.ndarray:
    fcs, spill = gated.fcs, gated.spillover
    if spill is None:
        return fcs.events
    return compensate(fcs.events, fcs.channel_names, list(spill.channels), spill.matrix)


def _plot_axes(gates) -> list[Dimension]:
    """The (at most two) axes a population's gates are drawn on."""
    axes: list[Dimension] = []
    for gate in gates:
        for axis in getattr(gate, "axes", ()):
            if isinstance(axis, Dimension) and axis not in axes:
                axes.append(axis)
    return axes[:2]


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


def _ellipse(gate: EllipsoidGate, axes: list[Dimension]) -> np.ndarray | None:
    """Outline of a 2-D ellipsoid gate drawn on the plot's axes (in either order)."""
    if len(gate.axes) != 2 or set(gate.axes) != set(axes):
        return None
    angles = np.linspace(0.0, 2 * np.pi, 129)
    root = np.linalg.cholesky(np.array(gate.covariance)) * np.sqrt(gate.distance_square)
    outline = np.asarray(gate.mean) + np.column_stack([np.cos(angles), np.sin(angles)]) @ root.T
    return outline if gate.axes[0] == axes[0] else outline[:, ::-1]


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


def sample_overview(gated: SampleGating, path: Path, columns: int = 5) -> Path:
    """All of a sample's gates in one PNG (for the report)."""
    plt = _matplotlib()
    populations = gated.placed.populations
    rows = max(1, -(-len(populations) // columns))
    fig, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.7 * rows), dpi=60)
    compensated = _compensated(gated)
    flat = np.atleast_1d(grid).ravel()
    for ax, population in zip(flat, populations, strict=False):
        draw_population(ax, gated, compensated, population)
    for ax in flat[len(populations) :]:
        ax.axis("off")
    fig.suptitle(f"{gated.fcs.path.name} — {gated.panel.id}, {gated.template.id}", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.05, top=0.93, wspace=0.3, hspace=0.45)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def kinetics_figure(
    rows,
    patient: str,
    path: Path,
    events: Mapping[str, float] | None = None,
    pages: Mapping[int, str] | None = None,
) -> Path:
    """CAR-T (and B cells) per µL over days with 95 % intervals and LOD/LLOQ shading;
    clinical ``events`` (label → day: infusion, relapse, HSCT, last follow-up) as vertical
    lines, and, in an SVG (``path`` ending .svg), each point a link to its sample's page
    (``pages``: sample id → href)."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=80)
    for (tube, population), colour in ((("memory", "CAR"), "C3"), (("bcell", "B"), "C0")):
        part = rows[(rows.tube == tube) & (rows.population == population)].sort_values(
            "nominal_day"
        )
        part = part[part.cells_per_ul.notna()]
        if part.empty:
            continue
        day = pd.to_numeric(part.actual_day, errors="coerce").fillna(part.nominal_day).astype(float)
        value = part.cells_per_ul.clip(lower=1e-2)
        low = (value - part.cells_ci_low.clip(lower=1e-2)).clip(lower=0)
        high = (part.cells_ci_high - value).clip(lower=0)
        label = "CAR-T cells/µL" if population == "CAR" else "B cells/µL"
        ax.errorbar(day, value, yerr=[low, high], fmt="o-", color=colour, label=label, ms=4)
        if pages:
            linked = ax.scatter(day, value, s=60, color=colour, alpha=0.01, zorder=4)
            linked.set_urls([pages.get(int(i)) for i in part.sample_id])
        below = part.below_lod.astype("boolean").fillna(False).astype(bool)
        ax.scatter(day[below], value[below], facecolors="white", edgecolors=colour, zorder=3)
        if population == "CAR":
            ax.fill_between(
                day, 1e-2, part.lloq_cells_per_ul, color="0.85", step="mid", label="below LLOQ"
            )
            ax.fill_between(
                day, 1e-2, part.lod_cells_per_ul, color="0.7", step="mid", label="below LOD"
            )
    for (label, day), style in zip(
        (events or {}).items(), ("-", "--", "-.", ":", "-"), strict=False
    ):
        ax.axvline(day, color="0.25", lw=0.9, ls=style)
        ax.text(
            day,
            0.02,
            f" {label}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="bottom",
            ha="left",
            fontsize=7,
            color="0.25",
        )
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=30)
    ticks = [5, 7, 11, 14, 21, 28, 90, 180, 365]
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
    ax.set_xlabel("day after infusion")
    ax.set_ylabel("cells/µL")
    ax.set_title(patient)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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


PHENOTYPE_DIR = "gates"
"""Folder (beside a sample's overview) of its gates drawn one population at a time."""


def _condition_mask(values: np.ndarray, level: str, positive: float, bright: float | None):
    """Events meeting one phenotype condition (``+``, ``-``, ``++``, ``dim``)."""
    if level == "+":
        return values >= positive
    if level == "-":
        return values < positive
    if level == "++":
        return values >= bright
    return (values >= positive) & (values < bright)  # dim


def _condition_cuts(gated: SampleGating, marker: str, level: str) -> list[tuple[str, float]]:
    decisions = gated.placed.decisions
    names = [marker, f"{marker}.bright"] if level in ("++", "dim") else [marker]
    return [(name, decisions[name].value) for name in names if name in decisions]


def phenotype_steps(gated: SampleGating, population: str):
    """How a cytometrist draws a phenotype gate: its conditions two markers at a time, each
    pair on the events of the parent that passed the pairs before. Yields, per step, the
    conditions, their cuts (name, value) and the indices of the events shown."""
    spec = gated.template.population(population)
    markers = gated.panel_markers()
    conditions = [c for c in spec.phenotype if c.marker in markers]
    parent = gated.placed.parents[population]
    inside = (
        np.ones(gated.result.event_count, bool) if parent is None else gated.result.mask(parent)
    )
    for start in range(0, len(conditions), 2):
        pair = conditions[start : start + 2]
        cuts = [_condition_cuts(gated, c.marker, c.level) for c in pair]
        shown = np.flatnonzero(inside)
        yield pair, cuts, shown
        for condition, marker_cuts in zip(pair, cuts, strict=True):
            values = gated.marker_values(condition.marker)
            named = dict(marker_cuts)
            positive = named.get(condition.marker)
            if positive is None:
                continue
            bright = named.get(f"{condition.marker}.bright")
            inside = inside & _condition_mask(values, condition.level, positive, bright)


def _draw_step(ax, gated: SampleGating, pair, cuts, shown: np.ndarray) -> None:
    """One step of a phenotype gate: density on its markers, each cut drawn and named."""
    idx = shown[:: int(np.ceil(shown.size / PLOT_EVENTS))] if shown.size > PLOT_EVENTS else shown
    values = [gated.marker_values(c.marker)[idx] for c in pair]
    styles = {False: "-", True: "--"}
    if len(pair) == 2 and idx.size:
        (x0, x1), (y0, y1) = _limits(values[0]), _limits(values[1])
        density, _, _ = np.histogram2d(*values, bins=80, range=((x0, x1), (y0, y1)))
        shown_density = np.ma.masked_equal(np.log1p(density.T), 0)
        ax.imshow(
            shown_density, origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap="viridis"
        )
        ax.set_ylabel(f"{pair[1].marker} ({pair[1].level})", fontsize=7)
    elif idx.size:
        ax.hist(values[0], bins=100, color="0.45", range=_limits(values[0]))
    ax.set_xlabel(f"{pair[0].marker} ({pair[0].level})", fontsize=7)
    for axis, marker_cuts in enumerate(cuts):
        draw = ax.axvline if axis == 0 else ax.axhline
        for name, value in marker_cuts:
            bright = name.endswith(".bright")
            draw(value, color="red", lw=1.1, ls=styles[bright])
            label = f"{name.split('.')[0]}{'++' if bright else '+'} {value:.3g}"
            along = {"transform": ax.get_xaxis_transform(), "rotation": 90, "va": "top"}
            across = {"transform": ax.get_yaxis_transform(), "va": "bottom"}
            where = {"x": value, "y": 0.98, **along} if axis == 0 else {"y": value, **across}
            where.setdefault("x", 0.99)
            ax.text(s=label, color="red", fontsize=6, ha="right", **where)
    ax.set_title(f"{' '.join(str(c) for c in pair)}  on {shown.size:,} events", fontsize=7)
    ax.tick_params(labelsize=6)


def phenotype_figure(gated: SampleGating, population: str, path: Path) -> Path:
    """A phenotype population drawn as a cytometrist would: one panel per pair of its
    markers, each on the events that passed the pairs before, its cuts drawn and named
    (the density each cut was placed on is on the sample page, from the stored evidence)."""
    plt = _matplotlib()
    steps = list(phenotype_steps(gated, population))
    fig, grid = plt.subplots(
        1, max(len(steps), 1), figsize=(2.9 * max(len(steps), 1), 2.7), dpi=85, squeeze=False
    )
    for ax, (pair, cuts, shown) in zip(grid[0], steps, strict=False):
        _draw_step(ax, gated, pair, cuts, shown)
    count, parent = gated.result.count(population), gated.placed.parents[population]
    parent_count = gated.result.count(parent) if parent else gated.result.event_count
    share = 100 * count / parent_count if parent_count else 0.0
    fig.suptitle(
        f"{population}: {count:,} of {parent_count:,} {parent} ({share:.1f} %)", fontsize=8
    )
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.17, top=0.8, wspace=0.35)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def phenotype_figures(gated: SampleGating, folder: Path) -> list[Path]:
    """One :func:`phenotype_figure` per phenotype population of the sample, in ``folder``."""
    written = []
    for population in gated.placed.populations:
        if gated.template.population(population).phenotype:
            written.append(phenotype_figure(gated, population, folder / f"{population}.png"))
    return written
