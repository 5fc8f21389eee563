"""Fast plots of events: binned densities as small indexed PNGs, gates drawn over them in SVG.

A plot is a 2-D histogram of a set of events on two axes (or a 1-D histogram on one), shown
as an image, with the gate's outlines and cuts as vector overlays and its text in HTML. Events
are binned without transforming them: every scale transformation is monotone, so the bin
edges, chosen on the transformed scale, are mapped back to raw (compensated) values once per
axis and each event's bin is found there, once per axis and sample. Each plot then costs one
``bincount`` of its events' bin codes.

All images of a sample (densities, and histograms as grey bars) go into one PNG (stacked,
one palette, transparent where empty, an image drawn twice stored once), so a sample's
plots are one small file; :func:`panel_svg` crops one plot out of it, styled by PLOT_CSS.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cartflow.gating.transforms import ScaleTransform

BINS = 64
"""Bins per axis (the image is BINS x BINS pixels, drawn larger on screen)."""

LEVELS = 16
"""Colour levels of a density image (log scale); level 0 is an empty bin."""

DISPLAY = 180
"""Size on screen, in CSS pixels, of one plot."""

RANGE_QUANTILES = (0.2, 99.8)
"""Percentiles of an axis's events spanned by its plots (then padded by RANGE_PAD)."""

RANGE_PAD = 0.08

RANGE_EVENTS = 10_000

Outline = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Overlay:
    """What is drawn over a plot, in the plot's (transformed) units."""

    x_cuts: tuple[float, ...] = ()
    y_cuts: tuple[float, ...] = ()
    outlines: tuple[Outline, ...] = ()
    """Closed polygons (polygon gates, ellipses as outlines)."""


@dataclass(frozen=True)
class Panel:
    """One rendered plot: where its image is and what to draw and write around it."""

    name: str
    title: str
    x_label: str
    x_range: tuple[float, float]
    y_label: str | None = None
    y_range: tuple[float, float] | None = None
    row: int | None = None
    """Which image of the sample's stacked PNG (a density, or a histogram's bars)."""
    overlay: Overlay = Overlay()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """A JSON-ready form, numbers to 5 significant digits (outlines 4: a tenth of a
        pixel), without what a 1-D plot or one without notes lacks (:func:`panel_from_dict`)."""
        overlay = self.overlay
        second = {}
        if self.y_range:
            second = {"y_label": self.y_label, "y_range": _rounded(self.y_range)}
        return {
            "name": self.name,
            "title": self.title,
            "x_label": self.x_label,
            "x_range": _rounded(self.x_range),
            **second,
            "row": self.row,
            "overlay": {
                "x_cuts": _rounded(overlay.x_cuts),
                "y_cuts": _rounded(overlay.y_cuts),
                **({"outlines": [_rounded(np.asarray(o, dtype=np.float64), 4).tolist()
                                 for o in overlay.outlines]} if overlay.outlines else {}),
            },
            **({"notes": list(self.notes)} if self.notes else {}),
        }  # fmt: skip


def _rounded(values, digits: int = 5) -> np.ndarray | list[float]:
    """Numbers to ``digits`` significant digits (a list; an array when given an array)."""
    if not isinstance(values, np.ndarray):
        return [float(f"{v:.{digits}g}") for v in values]
    with np.errstate(divide="ignore", invalid="ignore"):
        places = digits - 1 - np.floor(np.log10(np.abs(np.where(values == 0, 1.0, values))))
    scale = 10.0 ** np.nan_to_num(places)
    return np.round(values * scale) / scale


def panel_from_dict(data: dict) -> Panel:
    """The :class:`Panel` of :meth:`Panel.as_dict`."""
    overlay = data.get("overlay") or {}
    return Panel(
        name=data["name"],
        title=data["title"],
        x_label=data["x_label"],
        x_range=tuple(data["x_range"]),
        y_label=data.get("y_label"),
        y_range=tuple(data["y_range"]) if data.get("y_range") else None,
        row=data.get("row"),
        overlay=Overlay(
            x_cuts=tuple(overlay.get("x_cuts", ())),
            y_cuts=tuple(overlay.get("y_cuts", ())),
            outlines=tuple(tuple(tuple(p) for p in o) for o in overlay.get("outlines", ())),
        ),
        notes=tuple(data.get("notes") or ()),
    )


@dataclass(frozen=True)
class AxisBins:
    """An axis binned once for all events: its range, and each event's bin (-1: outside)."""

    low: float
    high: float
    codes: np.ndarray

    @classmethod
    def of(cls, raw: np.ndarray, scale: ScaleTransform | None = None, bins: int = BINS) -> AxisBins:
        """Bins on the scale's (transformed) axis, each event placed by its raw value."""
        usable = np.isfinite(raw)
        if scale is not None and scale.domain_min > -math.inf:  # flog: only above 0
            usable &= raw > scale.domain_min
        low, high = _span(raw, usable, scale)
        edges = np.linspace(low, high, bins + 1)
        raw_edges = edges if scale is None else np.asarray(scale.inverse(edges), dtype=np.float64)
        raw_edges = np.maximum.accumulate(np.nan_to_num(raw_edges, nan=-np.inf))
        if raw.dtype == np.float32:  # x >= the smallest float32 >= edge: exactly x >= edge
            raw_edges = _ceil32(raw_edges)
        # one comparison pass per edge: faster than a binary search for 65 edges
        codes = np.full(raw.shape, -1, dtype=np.int8)  # bins < 127
        above = np.empty(raw.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            for edge in raw_edges:
                np.greater_equal(raw, edge, out=above)
                np.add(codes, above, out=codes, casting="unsafe")
        codes[(codes >= bins) | ~usable] = -1
        return cls(low, high, codes)


def _ceil32(values: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each value."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    return np.where(rounded < values, np.nextafter(rounded, np.float32(np.inf)), rounded)


def _span(
    raw: np.ndarray, usable: np.ndarray, scale: ScaleTransform | None
) -> tuple[float, float]:
    """The plotted range on the transformed scale: central percentiles of the usable ones
    of at most RANGE_EVENTS evenly spread events, padded."""
    step = max(1, raw.size // RANGE_EVENTS)
    values = raw[::step][usable[::step]]
    if values.size == 0:
        return 0.0, 1.0
    low, high = _percentiles(values.astype(np.float64), RANGE_QUANTILES)
    if scale is not None:
        low, high = scale.apply(np.array([low, high], dtype=np.float64))
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    pad = RANGE_PAD * (high - low) or 1.0
    return float(low - pad), float(high + pad)


def _percentiles(values: np.ndarray, quantiles: Sequence[float]) -> list[float]:
    """``np.percentile`` (linear) of a few quantiles by one partition, without its overhead."""
    at = [q / 100 * (values.size - 1) for q in quantiles]
    ranks = sorted({r for a in at for r in (math.floor(a), math.ceil(a))})
    part = np.partition(values, ranks)
    below = [part[math.floor(a)] for a in at]
    return [
        float(low + (a - math.floor(a)) * (part[math.ceil(a)] - low))
        for a, low in zip(at, below, strict=True)
    ]


def density_levels(x: np.ndarray, y: np.ndarray, bins: int = BINS) -> np.ndarray:
    """A bins x bins image (row 0 at the top) of log counts in LEVELS levels; 0 where empty."""
    keep = (x >= 0) & (y >= 0)
    counts = np.bincount(y[keep].astype(np.int64) * bins + x[keep], minlength=bins * bins).reshape(
        bins, bins
    )[::-1]
    if not counts.any():
        return np.zeros((bins, bins), dtype=np.uint8)
    scaled = np.log1p(counts) / math.log1p(counts.max()) * (LEVELS - 1)
    return np.where(counts > 0, np.maximum(np.ceil(scaled), 1), 0).astype(np.uint8)


BAR = LEVELS
"""Palette index of a histogram's bars."""


def histogram_bars(x: np.ndarray, bins: int = BINS) -> np.ndarray:
    """A bins x bins image (row 0 at the top) of the events' bins as bars, the tallest 95 %
    of the height; 0 above the bars."""
    counts = np.bincount(x[x >= 0], minlength=bins)[:bins]
    top = counts.max() if counts.size else 0
    heights = np.round(counts / top * 0.95 * bins) if top else np.zeros(bins)
    return np.where(np.arange(bins)[::-1, None] < heights, BAR, 0).astype(np.uint8)


VIRIDIS = ("#440154", "#481b6d", "#46327e", "#3f4788", "#365c8d", "#2e6e8e", "#277f8e",
           "#21918c", "#1fa187", "#2db27d", "#4ac16d", "#73d056", "#a0da39", "#d0e11c",
           "#fde725")  # fmt: skip
"""matplotlib's viridis at LEVELS - 1 even steps (kept here: no matplotlib import to draw)."""


def _palette() -> list[int]:
    colours = ("#ffffff", *VIRIDIS, "#888888")  # ... and BAR
    return [int(c[i : i + 2], 16) for c in colours for i in (1, 3, 5)]


def load_png_writer() -> None:
    """Import and set up the PNG writer now: done before workers are forked, each of them
    has it already instead of importing it again."""
    from PIL import Image

    Image.preinit()


def stacked_png(images: Sequence[np.ndarray]) -> bytes:
    """The density images one above the other in one indexed PNG (empty bins transparent)."""
    from PIL import Image

    stacked = np.concatenate(images) if images else np.zeros((1, BINS), dtype=np.uint8)
    image = Image.fromarray(stacked, mode="P")
    image.putpalette(_palette())
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=0)
    return out.getvalue()


@dataclass
class PanelSet:
    """Panels of one sample as they are drawn: images collected for one stacked PNG (an
    image drawn again, e.g. the same parent on the same markers, is one row)."""

    panels: list[Panel] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    rows: dict[bytes, int] = field(default_factory=dict)

    def add(
        self,
        name: str,
        title: str,
        x: tuple[str, AxisBins],
        y: tuple[str, AxisBins] | None,
        events: np.ndarray,
        overlay: Overlay = Overlay(),
        notes: Sequence[str] = (),
    ) -> Panel:
        """A plot of ``events`` (indices) on axis ``x`` (label, bins), and ``y`` if given."""
        (x_label, x_bins) = x
        common = {
            "name": name,
            "title": title,
            "x_label": x_label,
            "x_range": (x_bins.low, x_bins.high),
            "overlay": overlay,
            "notes": tuple(notes),
        }
        if y is None:
            panel = Panel(**common, row=self._row(histogram_bars(x_bins.codes[events])))
        else:
            y_label, y_bins = y
            image = density_levels(x_bins.codes[events], y_bins.codes[events])
            panel = Panel(
                **common, y_label=y_label, y_range=(y_bins.low, y_bins.high),
                row=self._row(image),
            )  # fmt: skip
        self.panels.append(panel)
        return panel

    def _row(self, image: np.ndarray) -> int:
        """The row of the stacked PNG showing ``image`` (added unless already there)."""
        key = image.tobytes()
        if key not in self.rows:
            self.rows[key] = len(self.images)
            self.images.append(image)
        return self.rows[key]

    def png(self) -> bytes:
        return stacked_png(self.images)


# ---------------------------------------------------------------------------------- SVG


def _scale(value: float, low: float, high: float, flip: bool = False) -> float:
    share = (value - low) / (high - low) if high > low else 0.5
    return round(BINS * (1.0 - share if flip else share), 1)


PLOT_CSS = (
    f"svg.plot{{display:block;width:{DISPLAY}px;height:{DISPLAY}px;background:#fff;"
    "border:1px solid #999;box-sizing:border-box}"
    "svg.plot image{image-rendering:pixelated}"
    "svg.plot .gate{stroke:#d00;stroke-width:1.4;fill:none;vector-effect:non-scaling-stroke}"
)
"""How the page draws :func:`panel_svg`'s plots (in the report's style sheet, not in each)."""


def panel_svg(panel: Panel, image: str, rows: int) -> str:
    """SVG markup of one plot: its image cropped from the stacked PNG ``image`` (``rows``
    images high) and the gate drawn over it (styled by PLOT_CSS; named by its caption)."""
    x0, x1 = panel.x_range
    parts = [f'<svg class="plot" viewBox="0 0 {BINS} {BINS}">']
    if panel.row is not None:
        parts.append(
            f'<image href="{_escape(image)}" y="{-panel.row * BINS}" width="{BINS}" '
            f'height="{rows * BINS}"/>'
        )
    y0, y1 = panel.y_range or (0.0, 1.0)
    cuts = [f"M{_scale(c, x0, x1)},0V{BINS}" for c in panel.overlay.x_cuts if x0 <= c <= x1]
    if panel.y_range:
        cuts += [
            f"M0,{_scale(c, y0, y1, flip=True)}H{BINS}"
            for c in panel.overlay.y_cuts
            if y0 <= c <= y1
        ]
    if cuts:
        parts.append(f'<path class="gate" d="{"".join(cuts)}"/>')
    for outline in panel.overlay.outlines:
        points = " ".join(
            f"{_scale(px, x0, x1):g},{_scale(py, y0, y1, flip=True):g}" for px, py in outline
        )
        parts.append(f'<polygon class="gate" points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
