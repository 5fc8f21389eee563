"""QC plots of a gated sample: per population, its parent's events as density, the gate drawn,
the placed cuts with their evidence, the counts in the title.

The report's plots (:func:`render_sample_plots`) are binned densities (``pipeline.density``),
drawn once per file content and gating; ``gate --plots`` draws print-quality PNGs with
matplotlib (:func:`gate_plots`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from gating.compensation import compensate
from gating.engine import Evaluator
from gating.model import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from gating.placer import PART
from pipeline.density import AxisBins, Overlay, PanelSet
from pipeline.gate import SampleGating
from pipeline.outputs import write_bytes

PLOT_EVENTS = 20_000

PLOTS_VERSION = 3
"""Raised when the report's sample plots change, so that cached ones are drawn again."""


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


def _spill(gated: SampleGating):
    spill = gated.spillover
    return (list(spill.channels), spill.matrix) if spill else None


def _compensated(gated: SampleGating) -> np.ndarray:
    fcs, spill = gated.fcs, gated.spillover
    if spill is None:
        return fcs.events
    return compensate(fcs.events, fcs.channel_names, list(spill.channels), spill.matrix)


def _gate_axes(gates) -> list[Dimension]:
    """Every axis of a population's gates, in order."""
    axes: list[Dimension] = []
    for gate in gates:
        for axis in getattr(gate, "axes", ()):
            if isinstance(axis, Dimension) and axis not in axes:
                axes.append(axis)
    return axes


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


def plots_key(gated: SampleGating, sha256: str) -> str:
    """What a sample's plots depend on: the file's content, the gates and cuts placed on it,
    the counts and the way plots are drawn (a hex digest)."""
    placed = gated.placed
    decisions = sorted(
        (name, d.method, d.value, d.fallback, d.reason) for name, d in placed.decisions.items()
    )
    text = repr(
        (PLOTS_VERSION, sha256, placed.template_sha256, placed.gate_set.gates, decisions,
         sorted(gated.counts().items()))
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def render_sample_plots(gated: SampleGating, sha256: str, folder: Path) -> bool:
    """Draw a sample's plots into ``folder`` unless those of the same file and gating are
    there already: ``<sha>.json`` (the panels, their notes and labels numbered into the
    record's ``notes``: :func:`unnumbered`) and ``<sha>-<key>.png`` (their images).
    Returns whether anything was drawn."""
    key = plots_key(gated, sha256)
    index = folder / f"{sha256[:16]}.json"
    image = f"{sha256[:16]}-{key[:12]}.png"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if known.get("key") == key and (folder / image).is_file():
        return False
    panels = sample_panels(gated)
    write_bytes(folder / image, panels.png())
    heading = f"{gated.panel.id}, {gated.template.id}"  # no file name: it may carry PHI
    texts = [*(n for p in panels.panels for n in p.notes),
             *(p.x_label for p in panels.panels), *(p.y_label or "" for p in panels.panels)]
    notes = list(dict.fromkeys(texts))
    number = {n: i for i, n in enumerate(notes)}
    record = {
        "key": key,
        "version": PLOTS_VERSION,
        "image": image,
        "rows": len(panels.images),
        "heading": heading,
        "notes": notes,  # each text once; a panel's notes and labels are numbers into it
        "panels": [_numbered(p.as_dict(), number) for p in panels.panels],
    }  # fmt: skip
    write_bytes(index, json.dumps(record, separators=(",", ":")).encode())
    old = known.get("image")
    if old and old != image:
        (folder / old).unlink(missing_ok=True)
    return True


def _numbered(panel: dict, number: Mapping[str, int]) -> dict:
    """A panel's notes and axis labels as numbers into its record's list of texts."""
    for label in ("x_label", "y_label"):
        if label in panel:
            panel[label] = number[panel[label]]
    if "notes" in panel:
        panel["notes"] = [number[n] for n in panel["notes"]]
    return panel


def unnumbered(panel: dict, texts: Sequence[str]) -> dict:
    """A panel of a plots record with its texts back in place (:func:`_numbered`)."""
    labels = {k: texts[panel[k]] for k in ("x_label", "y_label") if panel.get(k) is not None}
    return {**panel, **labels, "notes": [texts[i] for i in panel.get("notes", ())]}


KINETICS_SERIES = ((("memory", "CAR"), "#d62728", "CAR-T cells/µL"),
                   (("bcell", "B"), "#1f77b4", "B cells/µL"))  # fmt: skip
KINETICS_TICKS = (5, 7, 11, 14, 21, 28, 90, 180, 365)
FLOOR = 1e-2
"""Lowest value drawn on the log axis (cells/µL)."""


def _day_position(day: float) -> float:
    """Days on a scale linear up to day 30 and logarithmic beyond (as matplotlib's symlog)."""
    return day / 30 if day <= 30 else 1 + math.log10(day / 30)


def kinetics_svg(
    rows: pd.DataFrame,
    events: Mapping[str, float] | None = None,
    pages: Mapping[int, str] | None = None,
) -> str:
    """CAR-T (and B cells) per µL over days as SVG: 95 % intervals, hollow points below the
    LOD, the CAR-T LOD and LLOQ shaded; clinical ``events`` (label → day: infusion, relapse,
    HSCT, last follow-up) as vertical lines at the foot of the plot, and each point a link to
    its sample's page (``pages``: sample id → href)."""
    width, height, left, right, top, bottom = 560, 300, 56, 12, 12, 36
    series = []
    for (tube, population), colour, label in KINETICS_SERIES:
        part = rows[(rows.tube == tube) & (rows.population == population)]
        part = part[part.cells_per_ul.notna()].sort_values("nominal_day")
        if len(part):
            day = pd.to_numeric(part.actual_day, errors="coerce").fillna(part.nominal_day)
            series.append((part, day.astype(float).to_numpy(), colour, label, population))
    if not series:
        return ""
    days = np.concatenate([s[1] for s in series])
    values = np.concatenate(
        [s[0][c].to_numpy(float) for s in series for c in ("cells_per_ul", "cells_ci_high")]
        + [s[0].lod_cells_per_ul.to_numpy(float) for s in series]
    )
    values = values[np.isfinite(values)]
    low_exp = math.floor(math.log10(max(FLOOR, values.min() if values.size else 1.0)))
    high_exp = math.ceil(math.log10(max(FLOOR * 10, values.max() if values.size else 10.0)))
    high_exp = max(high_exp, low_exp + 1)
    marked = [d for d in (events or {}).values() if d >= 0]
    x0 = _day_position(min(0.0, days.min()))
    x1 = _day_position(max(30.0, days.max(), *marked))

    def px(day: float) -> float:
        return round(left + (_day_position(day) - x0) / (x1 - x0) * (width - left - right), 1)

    def py(value: float) -> float:
        share = (math.log10(max(value, FLOOR)) - low_exp) / (high_exp - low_exp)
        return round(height - bottom - share * (height - top - bottom), 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-family="sans-serif" font-size="10">'
    ]
    car = next((s for s in series if s[4] == "CAR"), None)
    if car is not None:
        for column, shade, label in (
            ("lloq_cells_per_ul", "#d9d9d9", "below LLOQ"),
            ("lod_cells_per_ul", "#b3b3b3", "below LOD"),
        ):
            limit = car[0][column].to_numpy(float)
            points = [(px(d), py(v)) for d, v in zip(car[1], limit, strict=True) if v == v]
            if points:
                base = height - bottom
                outline = " ".join(f"{x},{y}" for x, y in points)
                out.append(
                    f'<polygon points="{points[0][0]},{base} {outline} '
                    f'{points[-1][0]},{base}" fill="{shade}"><title>{label}</title>'
                    "</polygon>"
                )
    for exponent in range(low_exp, high_exp + 1):
        y = py(10.0**exponent)
        out.append(
            f'<path d="M{left},{y}H{width - right}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{y + 3}" text-anchor="end">{10.0**exponent:g}</text>'
        )
    for tick in (t for t in KINETICS_TICKS if _day_position(t) <= x1):
        out.append(
            f'<text x="{px(tick)}" y="{height - bottom + 12}" text-anchor="middle">{tick}</text>'
        )
    out.append(
        f'<text x="{(left + width) / 2}" y="{height - 6}" text-anchor="middle">'
        'day after infusion</text><text x="12" y="{0}" transform="rotate(-90 12 {0})" '
        'text-anchor="middle">cells/µL</text>'.format(height / 2)
    )
    out.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="none" stroke="#999"/>'
    )
    for i, (part, day, colour, label, _) in enumerate(series):
        value = part.cells_per_ul.to_numpy(float)
        ci_low = part.cells_ci_low.to_numpy(float)
        ci_high = part.cells_ci_high.to_numpy(float)
        below = part.below_lod.astype("boolean").fillna(False).to_numpy(bool)
        line = " ".join(f"{px(d)},{py(v)}" for d, v in zip(day, value, strict=True))
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        samples = part.sample_id.to_numpy() if "sample_id" in part else [None] * len(part)
        for d, v, lo, hi, hollow, sample in zip(
            day, value, ci_low, ci_high, below, samples, strict=True
        ):
            if lo == lo and hi == hi:
                out.append(f'<path d="M{px(d)},{py(lo)}V{py(hi)}" stroke="{colour}"/>')
            fill = "#fff" if hollow else colour
            point = (
                f'<circle cx="{px(d)}" cy="{py(v)}" r="3" fill="{fill}" '
                f'stroke="{colour}"><title>day {d:g}: {v:.3g}/µL</title></circle>'
            )
            href = (pages or {}).get(int(sample)) if sample is not None else None
            out.append(f'<a href="{escape(href)}">{point}</a>' if href else point)
        out.append(
            f'<text x="{width - right - 6}" y="{top + 14 + 13 * i}" text-anchor="end" '
            f'fill="{colour}">{label}</text>'
        )
    for (label, when), dash in zip((events or {}).items(), ("", "6 3", "2 2", "8 2 2 2"),
                                   strict=False):  # fmt: skip
        if when < 0:
            continue
        x = px(when)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<path d="M{x},{top}V{height - bottom}" stroke="#444"{style}>'
            f"<title>{escape(label)}: day {when:g}</title></path>"
            f'<text x="{x + 3}" y="{height - bottom - 4}" font-size="8" fill="#444" '
            f'transform="rotate(-90 {x + 3} {height - bottom - 4})">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


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
