"""Typed options of every placement method, with their defaults in one place.

Each method's options are a frozen dataclass whose field names are the names a template
uses (``cd45_sd: 4.5``); :func:`read_options` checks a template's mapping against it (unknown
names, wrong kinds) and fills in the defaults. Problems are returned as (option, message) so
the loader can name the file and line.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

INPUT = {"input": True}
"""Field metadata: the option names a population whose fit the method reads."""


def inputs_of(cls: type) -> tuple[str, ...]:
    """The options of ``cls`` that name an input population."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("input"))


@dataclass(frozen=True)
class StableFlowOptions:
    max_deviation: float = 5.0


@dataclass(frozen=True)
class SingletsOptions:
    width: float = 5.0
    min_spread: float = 0.02
    channels: tuple[str, ...] = ()
    """Two channels: area and height (FSC-A × FSC-H, the default) or height and width
    (FSC-H × FSC-W, SSC-H × SSC-W)."""


@dataclass(frozen=True)
class BeadsOptions:
    bounds: tuple[float, ...] = (0.6, 0.95)
    default: float = 0.8


@dataclass(frozen=True)
class CellsOptions:
    clusters: dict | None = None
    keep: tuple[str, ...] = ("lymphocytes", "monocytes", "granulocytes")
    radius: float = 4.0
    spread: tuple[float, ...] = (8_000.0, 0.03)
    bounds: tuple[float, ...] = (8_000.0, 40_000.0)
    default: float = 18_000.0
    keep_large: bool = True
    min_share: float = 0.2
    """A fit keeping less of its parent starts again from the data; still less: flagged
    ``implausible:``."""
    start: str = "anchors"
    """``anchors``: the clusters start where ``clusters`` puts them; ``data``: that layout
    is only relative (FSC ratios, log-SSC offsets), moved onto the sample's densest scatter
    (each kept cluster tried there, the likeliest fit kept), no instrument's positions."""


@dataclass(frozen=True)
class LymphocytesOptions:
    scatter: str = field(default="cells", metadata=INPUT)
    """The population whose scatter-cluster fit this gate reads (a ``cells`` gate)."""
    bounds: tuple[float, ...] = (0.6, 0.9)
    default: float = 0.78
    cluster: str = "lymphocytes"
    bright: str = "CD45"
    cd45_sd: float = 4.5
    dead: str = "dead"
    dead_sd: tuple[float, ...] = (2.5, 4.5)
    dead_cd45_sd: tuple[float, ...] = ()
    lymphocyte_sd: float = 3.0
    band_sd: float = 1.0
    band_cd45_sd: float = 3.0


@dataclass(frozen=True)
class CoreOptions:
    core: tuple[str, ...] = ()
    core_quantile: float = 0.999


@dataclass(frozen=True)
class PolygonOptions:
    channels: tuple[str, ...] = ()
    vertices: tuple = ()
    """Corners as [x, y] pairs, in the axes' units (``units``)."""
    units: str = "transformed"


@dataclass(frozen=True)
class RectangleOptions:
    channels: tuple[str, ...] = ()
    min: tuple[float, ...] = ()
    max: tuple[float, ...] = ()
    units: str = "transformed"


@dataclass(frozen=True)
class EllipseOptions:
    channels: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    covariance: tuple = ()
    distance: float = 1.0
    units: str = "transformed"


@dataclass(frozen=True)
class QuadrantOptions:
    channels: tuple[str, ...] = ()
    at: tuple[float, ...] = ()
    """The crossing point [x, y] in the axes' units."""
    quarter: str = "++"
    """Which quarter: ``++``, ``+-``, ``-+`` or ``--`` (x sign, then y sign)."""
    units: str = "transformed"


@dataclass(frozen=True)
class ClusterOptions:
    """A cluster placed from the data on two channels (flowDensity / flowClust spirit)."""

    channels: tuple[str, ...] = ()
    pick: str = "largest"
    """``largest`` (most events), ``densest`` (highest peak) or ``nearest`` (to ``near``)."""
    near: tuple[float, ...] = (0.5, 0.5)
    """For ``nearest``: where to look, as quantiles of each channel's parent events."""
    components: float = 3
    level: float = 0.95
    """Share of the chosen Gaussian its ellipse keeps."""
    min_share: float = 0.0
    """Flag the gate ``implausible:`` when it keeps less than this share of its parent."""
    max_share: float = 1.0
    trim: tuple[float, ...] = (0.001, 0.999)
    """Parent events outside these quantiles on either channel do not shape the fit."""


PAIRS = {"bounds": 2, "dead_sd": 2, "spread": 2, "channels": 2, "core": 2, "near": 2,
         "trim": 2, "mean": 2, "at": 2}  # fmt: skip
POINTS = {"vertices", "covariance"}
"""Options holding [x, y] pairs."""
CHOICES = {
    "units": ("transformed", "data"),
    "pick": ("largest", "densest", "nearest"),
    "quarter": ("++", "+-", "-+", "--"),
    "start": ("anchors", "data"),
}
"""Options that hold exactly two values."""


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int | float):
        return "number"
    if isinstance(default, str):
        return "text"
    if isinstance(default, tuple):
        return "texts" if default and isinstance(default[0], str) else "numbers"
    return "mapping"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(name: str, kind: str, value: Any) -> tuple[Any, str | None]:
    """The value as the option's type, or a message saying what is allowed."""
    if kind == "bool":
        return value, None if isinstance(value, bool) else f"{name} must be true or false"
    if kind == "number":
        return (float(value), None) if _number(value) else (value, f"{name} must be a number")
    if kind == "points":
        pairs = isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p) for p in value
        )
        if not pairs or not value:
            return value, f"{name} must be a list of [x, y] number pairs"
        return tuple(tuple(float(v) for v in p) for p in value), None
    if kind == "text":
        if name in CHOICES and value not in CHOICES[name]:
            return value, f"{name} must be one of {', '.join(CHOICES[name])}"
        return str(value), None if isinstance(value, str) and value else f"{name} must be a name"
    if kind in ("numbers", "texts"):
        if not isinstance(value, list):
            return value, f"{name} must be a list"
        ok = all(_number(v) if kind == "numbers" else isinstance(v, str) for v in value)
        if not ok:
            what = "numbers" if kind == "numbers" else "names"
            return value, f"{name} must be a list of {what}"
        if name in PAIRS and len(value) != PAIRS[name]:
            return value, f"{name} needs {PAIRS[name]} values"
        return tuple(float(v) if kind == "numbers" else v for v in value), None
    if not isinstance(value, dict) or not value:
        return value, f"{name} must be a mapping"
    return value, None


def read_options(cls: type, raw: dict[str, Any]) -> tuple[Any, tuple[str, str] | None]:
    """``cls`` filled from a template's mapping; or the first problem as (option, message)."""
    known = {f.name: f for f in fields(cls)}
    for name in raw:
        if name not in known:
            allowed = ", ".join(known) or "none"
            return None, (str(name), f"has no option {name!r} (allowed: {allowed})")
    values = {}
    for name, value in raw.items():
        default = known[name].default
        kind = "mapping" if default is None or default is MISSING else _kind(default)
        if name in ("core", "channels"):
            kind = "texts"
        if name in POINTS:
            kind = "points"
        checked, problem = _check(name, kind, value)
        if problem:
            return None, (name, problem)
        values[name] = checked
    return cls(**values), None


REQUIRED = {
    "polygon": ("channels", "vertices"),
    "rectangle": ("channels",),
    "ellipse": ("channels", "mean", "covariance"),
    "quadrant": ("channels", "at"),
    "cluster": ("channels",),
}
"""Options a gate cannot go without."""

GATE_OPTIONS: dict[str, type] = {
    "stable_flow": StableFlowOptions,
    "singlets": SingletsOptions,
    "beads": BeadsOptions,
    "cells": CellsOptions,
    "lymphocytes": LymphocytesOptions,
    "polygon": PolygonOptions,
    "rectangle": RectangleOptions,
    "ellipse": EllipseOptions,
    "quadrant": QuadrantOptions,
    "cluster": ClusterOptions,
}
"""The options of every gate method a template may name (``gate: cells``)."""
