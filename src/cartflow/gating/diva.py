"""BD FACSDiva experiment exports (``<bdfacs>`` XML): each tube's gates and DIVA's counts.

A tube's gates are DIVA regions in its own display coordinates:

- on a biexponential ("scaled") axis, 0..4096 display channels of DIVA's biexponential with
  the gate's scale value r: Logicle with T = 262144, M = 4.5, A = 0 and
  W = (M - log10(T / r)) / 2 (the equation BD gave for it, as CytoML reads DIVA exports);
  the gate keeps that scale, so its edges are straight where DIVA drew them straight;
- on a log axis that is not scaled, log10 of the value: rectangles and intervals become
  ranges on the values (a limit at or below the axis minimum is left open, since DIVA shows
  the events below it on the axis), polygons are drawn on a log scale;
- on a linear axis, the values themselves.

Fluorescence parameters DIVA compensates are compensated with the file's own spillover
matrix ('FCS'). Rectangle, polygon and interval regions are read, a quadrant set as its
four quadrants; any other region or classifier (snap-to gates, "rest of" populations,
ellipses) is an error naming the gate and its kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from cartflow.gating.errors import GatingError
from cartflow.gating.model import (
    FCS_SPILL,
    Bound,
    Dimension,
    Gate,
    GateSet,
    PolygonGate,
    RangeGate,
    RectangleGate,
)
from cartflow.gating.samples import match_sample
from cartflow.gating.transforms import Flog, Logicle, ScaleTransform

DIVA_TOP = 262144.0
"""The top of DIVA's data scale (18-bit)."""
DIVA_DECADES = 4.5
"""Decades of DIVA's biexponential display."""
DISPLAY_CHANNELS = 4096.0
ROOT = "All Events"
QUADRANT_SET = "Composite_Classifier"
"""DIVA's quadrant set: its four quadrants are gates of their own."""


@dataclass(frozen=True)
class DivaPopulation:
    """A gate of a tube: its path under All Events, DIVA's kind for it, DIVA's count."""

    path: str
    kind: str
    count: int | None


@dataclass(frozen=True)
class DivaTube:
    """One tube of a DIVA experiment (its data file, keywords and gates)."""

    name: str
    specimen: str
    file_name: str | None
    keywords: MappingProxyType
    event_count: int | None
    populations: tuple[DivaPopulation, ...]
    element: etree._Element

    def stored_counts(self) -> dict[str, int]:
        """DIVA's count of each population (by path), where it stored one."""
        return {p.path: p.count for p in self.populations if p.count is not None}


class DivaExperiment:
    """A FACSDiva experiment export: its tubes and, per tube, its gates as a :class:`GateSet`."""

    def __init__(self, path: Path, document: etree._Element) -> None:
        self.path = path
        self.log_decades = float(document.findtext("experiment/log_decades") or 5)
        self.samples = tuple(_tubes(document))
        self.groups = tuple(dict.fromkeys(t.specimen for t in self.samples))

    def match(self, file_name: str, fil: str | None = None, event_count: int | None = None):
        """The tube a data file belongs to (by name, then $FIL, then a unique event count)."""
        return match_sample(self.samples, self.path, file_name, fil, event_count)

    def gates_for(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> GateSet:
        """The gates of the tube a data file belongs to."""
        tube = self.match(file_name, fil, event_count)
        gate_set = self.gate_set(tube)
        if not gate_set.gates:
            raise GatingError(self.path, f"tube {tube.name} (matching {file_name}) has no gates")
        return gate_set

    def gate_set(self, tube: DivaTube) -> GateSet:
        """The tube's gates (ids are their paths under All Events)."""
        reader = _TubeGates(self.path, tube, self.log_decades)
        return GateSet(tuple(reader.gates()), reader.transforms)


def _path(fullname: str | None) -> str | None:
    """DIVA's ``All Events\\P1\\P2`` as ``P1/P2`` (None for All Events itself)."""
    if not fullname:
        return None
    parts = fullname.split("\\")
    if parts[0] == ROOT:
        parts = parts[1:]
    return "/".join(parts) or None


def _tubes(document: etree._Element) -> Iterator[DivaTube]:
    for specimen in document.iterfind("experiment/specimen"):
        for tube in specimen.iterfind("tube"):
            file_name = (tube.findtext("data_filename") or "").strip() or None
            keywords = {
                (k.get("name") or ""): (k.findtext("value") or "")
                for k in tube.iterfind("keywords/keyword")
            }
            populations, events = [], None
            for gate in tube.iterfind("gates/gate"):
                count = _int(gate.findtext("num_events"))
                path = _path(gate.get("fullname"))
                if path is None:
                    events = count
                    continue
                region = gate.find("region")
                kind = gate.get("type", "")
                if region is not None and kind == "Region_Classifier":
                    kind = region.get("type", kind)
                if kind != QUADRANT_SET:
                    populations.append(DivaPopulation(path, kind, count))
            yield DivaTube(
                name=file_name or tube.get("name", ""),
                specimen=specimen.get("name", ""),
                file_name=file_name,
                keywords=MappingProxyType(keywords),
                event_count=events or None,
                populations=tuple(populations),
                element=tube,
            )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class _TubeGates:
    """The gates of one tube, read region by region."""

    def __init__(self, path: Path, tube: DivaTube, log_decades: float) -> None:
        self.path = path
        self.tube = tube
        self.log_decades = log_decades
        self.transforms: dict[str, ScaleTransform] = {}
        self.parameters = {
            p.get("name"): p for p in tube.element.iterfind("instrument_settings/parameter")
        }

    def _error(self, gate: str, problem: str) -> GatingError:
        return GatingError(self.path, f"tube {self.tube.name}: gate {gate!r} {problem}")

    def gates(self) -> Iterator[Gate]:
        for element in self.tube.element.iterfind("gates/gate"):
            path = _path(element.get("fullname"))
            kind = element.get("type", "")
            if path is None or kind == QUADRANT_SET:
                continue  # All Events; a quadrant set's quadrants come as gates of their own
            region = element.find("region")
            shape = region.get("type") if region is not None else None
            if kind != "Region_Classifier" or shape not in (
                "RECTANGLE_REGION",
                "POLYGON_REGION",
                "INTERVAL_REGION",
            ):
                raise self._error(
                    path,
                    f"is a DIVA {kind}{f' ({shape})' if shape else ''}, which cartflow cannot "
                    "read (it reads rectangle, polygon, interval and quadrant gates)",
                )
            yield self._gate(path, _path(element.findtext("parent")), element, region, shape)

    def _gate(self, path, parent, element, region, shape) -> Gate:
        points = [
            (float(p.get("x", "nan")), float(p.get("y", "nan")))
            for p in region.iterfind("points/point")
        ]
        if not points or not all(math.isfinite(v) for p in points for v in p):
            raise self._error(path, "has no finite region points")
        x = self._axis(path, element, region.get("xparm"), "x")
        if shape == "INTERVAL_REGION":
            low, high = sorted(x.bound(v) for v, _ in points[:2])
            return RangeGate(path, parent, Bound(x.dimension, *x.open_low(low, high)))
        y = self._axis(path, element, region.get("yparm"), "y")
        if shape == "RECTANGLE_REGION":
            xs, ys = [x.bound(v) for v, _ in points], [y.bound(v) for _, v in points]
            return RectangleGate(
                path,
                parent,
                (
                    Bound(x.dimension, *x.open_low(min(xs), max(xs))),
                    Bound(y.dimension, *y.open_low(min(ys), max(ys))),
                ),
            )
        vertices = tuple((x.vertex(a), y.vertex(b)) for a, b in points)
        return PolygonGate(path, parent, (x.shape_dimension, y.shape_dimension), vertices)

    def _axis(self, path: str, element, parameter: str | None, which: str) -> _Axis:
        settings = self.parameters.get(parameter)
        if parameter is None or settings is None:
            raise self._error(path, f"names {which} parameter {parameter!r}, not one of the tube's")
        compensated = settings.findtext("can_be_compensated") == "true"
        logged = settings.findtext("is_log") == "true"
        scaled = element.findtext(f"is_{which}_parameter_scaled") == "true"
        scale = float(element.findtext(f"{which}_parameter_scale_value") or 0)
        comp = FCS_SPILL if compensated else None
        if scaled and logged:
            if scale <= 0:
                raise self._error(
                    path, f"is drawn on DIVA's log display of {parameter}, which cartflow "
                    "cannot read (only its biexponential display)",
                )  # fmt: skip
            width = max(0.0, (DIVA_DECADES - math.log10(DIVA_TOP / scale)) / 2)
            transform_id = f"diva-biex-{scale:g}"
            self.transforms[transform_id] = Logicle(DIVA_TOP, width, DIVA_DECADES, 0.0)
            dimension = Dimension(parameter, comp, transform_id)
            return _Axis(dimension, dimension, lambda v: v / DISPLAY_CHANNELS, None)
        if scaled:
            plain = Dimension(parameter, comp)
            return _Axis(plain, plain, lambda v: v / DISPLAY_CHANNELS * DIVA_TOP, None)
        if logged:
            transform_id = "diva-log"
            self.transforms[transform_id] = Flog(DIVA_TOP, self.log_decades)
            floor = math.log10(DIVA_TOP) - self.log_decades
            return _Axis(
                Dimension(parameter, comp),
                Dimension(parameter, comp, transform_id),
                lambda v: 10.0**v,
                10.0**floor,
                lambda v: float(self.transforms[transform_id].apply([10.0**v])[0]),
            )
        plain = Dimension(parameter, comp)
        return _Axis(plain, plain, lambda v: v, None)


@dataclass(frozen=True)
class _Axis:
    """How one region coordinate maps to a bound (on ``dimension``) and to a polygon vertex
    (on ``shape_dimension``)."""

    dimension: Dimension
    shape_dimension: Dimension
    bound: Callable[[float], float]
    floor: float | None
    to_shape: Callable[[float], float] | None = None

    def vertex(self, value: float) -> float:
        return self.to_shape(value) if self.to_shape else self.bound(value)

    def open_low(self, low: float, high: float) -> tuple[float | None, float]:
        """A lower limit at or below a log axis's minimum is open (DIVA shows the events
        below the axis on it)."""
        return (None if self.floor is not None and low <= self.floor else low), high
