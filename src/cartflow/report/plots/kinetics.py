"""A patient's CAR-T and B-cell counts over days after infusion as an SVG for the report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape

import numpy as np
import pandas as pd

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
