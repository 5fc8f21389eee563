"""Axes, bounds and the gate types, small frozen dataclasses shaped like Gating-ML 2.0."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cartflow.gating.errors import GatingError

FCS_SPILL = "FCS"
"""Compensation reference meaning the data file's own spillover matrix."""


def _gate_error(gate_id: str, problem: str) -> GatingError:
    return GatingError(f"gate {gate_id!r}", problem)


def _bound(value: float | None, gate_id: str, what: str) -> float | None:
    if value is None:
        return None
    number = float(value)
    if math.isnan(number):
        raise _gate_error(gate_id, f"{what} is NaN")
    return number


@dataclass(frozen=True)
class Dimension:
    """One channel (by $PnN, or a fluorochrome name of the referenced spectrum matrix)."""

    channel: str
    compensation: str | None = None
    transform: str | None = None

    @property
    def label(self) -> str:
        """Readable name: channel [compensation, transform]."""
        return _label(self.channel, self.compensation, self.transform)


@dataclass(frozen=True)
class RatioDimension:
    """A new dimension computed by the fratio transformation with id ``ratio``."""

    ratio: str
    compensation: str | None = None
    transform: str | None = None

    @property
    def label(self) -> str:
        """Readable name: ratio id [compensation, transform]."""
        return _label(f"ratio {self.ratio}", self.compensation, self.transform)


Axis = Dimension | RatioDimension


def _label(name: str, compensation: str | None, transform: str | None) -> str:
    extras = [x for x in (compensation, transform) if x]
    return f"{name} [{', '.join(extras)}]" if extras else name


@dataclass(frozen=True)
class Bound:
    """A half-open range min <= value < max on one axis; either end may be None (open)."""

    axis: Axis
    min: float | None = None
    max: float | None = None

    def check(self, gate_id: str) -> Bound:
        """This bound with float limits, or a GatingError naming the gate."""
        low = _bound(self.min, gate_id, f"min of {self.axis.label}")
        high = _bound(self.max, gate_id, f"max of {self.axis.label}")
        if low is None and high is None:
            raise _gate_error(gate_id, f"{self.axis.label} has neither min nor max")
        return Bound(self.axis, low, high)


@dataclass(frozen=True)
class RangeGate:
    """A one-dimensional range (or threshold, when one end is open)."""

    id: str
    parent: str | None
    bound: Bound

    def __post_init__(self) -> None:
        object.__setattr__(self, "bound", self.bound.check(self.id))

    @property
    def bounds(self) -> tuple[Bound, ...]:
        """The single bound, as a tuple like RectangleGate's."""
        return (self.bound,)

    @property
    def axes(self) -> tuple[Axis, ...]:
        """The axes the gate is drawn on."""
        return (self.bound.axis,)


@dataclass(frozen=True)
class RectangleGate:
    """A box: one half-open range per axis (two or more axes)."""

    id: str
    parent: str | None
    bounds: tuple[Bound, ...]

    def __post_init__(self) -> None:
        bounds = tuple(b.check(self.id) for b in self.bounds)
        if len(bounds) < 2:
            raise _gate_error(self.id, "a rectangle needs two or more dimensions (use RangeGate)")
        object.__setattr__(self, "bounds", bounds)

    @property
    def axes(self) -> tuple[Axis, ...]:
        """The axes the gate is drawn on."""
        return tuple(b.axis for b in self.bounds)


@dataclass(frozen=True)
class PolygonGate:
    """A polygon on two axes; inside by the even-odd (crossing number) rule."""

    id: str
    parent: str | None
    axes: tuple[Axis, Axis]
    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.axes) != 2:
            raise _gate_error(self.id, f"a polygon needs 2 dimensions, not {len(self.axes)}")
        vertices = tuple((float(x), float(y)) for x, y in self.vertices)
        if len(vertices) < 3:
            raise _gate_error(self.id, f"a polygon needs at least 3 vertices, not {len(vertices)}")
        if not all(math.isfinite(v) for vertex in vertices for v in vertex):
            raise _gate_error(self.id, "polygon vertices must be finite numbers")
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "vertices", vertices)


@dataclass(frozen=True)
class EllipsoidGate:
    """Events with (x - mean)' inv(covariance) (x - mean) <= distance_square (boundary inside).

    The covariance is used as given; the compliance set's 3-D ellipsoid has an asymmetric one.
    """

    id: str
    parent: str | None
    axes: tuple[Axis, ...]
    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    distance_square: float

    def __post_init__(self) -> None:
        k = len(self.axes)
        if k < 2:
            raise _gate_error(self.id, "an ellipsoid needs at least 2 dimensions")
        mean = tuple(float(v) for v in self.mean)
        covariance = tuple(tuple(float(v) for v in row) for row in self.covariance)
        if len(mean) != k or len(covariance) != k or any(len(r) != k for r in covariance):
            raise _gate_error(self.id, f"mean and covariance must match the {k} dimensions")
        matrix = np.array(covariance)
        if not np.all(np.isfinite(matrix)) or not all(math.isfinite(v) for v in mean):
            raise _gate_error(self.id, "mean and covariance must be finite numbers")
        if np.linalg.matrix_rank(matrix) < k:
            raise _gate_error(self.id, "covariance matrix is singular")
        distance = float(self.distance_square)
        if not distance > 0 or not math.isfinite(distance):
            raise _gate_error(self.id, f"distance square {self.distance_square} must be > 0")
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", covariance)
        object.__setattr__(self, "distance_square", distance)


@dataclass(frozen=True)
class Divider:
    """A quadrant-gate divider: one axis cut at one or more values."""

    id: str
    axis: Dimension
    values: tuple[float, ...]


@dataclass(frozen=True)
class DividerRange:
    """Where one quadrant lies along one divider: min <= value < max (None = open)."""

    divider: str
    min: float | None
    max: float | None


@dataclass(frozen=True)
class Quadrant:
    """One addressable population of a quadrant gate; dividers it omits do not constrain it."""

    id: str
    ranges: tuple[DividerRange, ...]


@dataclass(frozen=True)
class QuadrantGate:
    """Dividers splitting the parent population into quadrants (any number of them)."""

    id: str
    parent: str | None
    dividers: tuple[Divider, ...]
    quadrants: tuple[Quadrant, ...]

    def __post_init__(self) -> None:
        dividers = tuple(
            Divider(d.id, d.axis, tuple(sorted({float(v) for v in d.values})))
            for d in self.dividers
        )
        if not dividers:
            raise _gate_error(self.id, "a quadrant gate needs at least one divider")
        by_id = {d.id: d for d in dividers}
        if len(by_id) != len(dividers):
            raise _gate_error(self.id, "divider ids are not unique")
        for divider in dividers:
            if not isinstance(divider.axis, Dimension):
                raise _gate_error(self.id, f"divider {divider.id!r} must be on an FCS dimension")
            if not divider.values or not all(math.isfinite(v) for v in divider.values):
                raise _gate_error(self.id, f"divider {divider.id!r} needs finite values")
        quadrants = tuple(self.quadrants)
        for quadrant in quadrants:
            for r in quadrant.ranges:
                divider = by_id.get(r.divider)
                if divider is None:
                    raise _gate_error(
                        self.id, f"quadrant {quadrant.id!r} names unknown divider {r.divider!r}"
                    )
                if not _one_interval(divider.values, r.min, r.max):
                    raise _gate_error(
                        self.id,
                        f"quadrant {quadrant.id!r}: [{r.min}, {r.max}) is not one interval "
                        f"between consecutive values of divider {r.divider!r} {divider.values}",
                    )
        if not quadrants:
            raise _gate_error(self.id, "a quadrant gate needs at least one quadrant")
        object.__setattr__(self, "dividers", dividers)
        object.__setattr__(self, "quadrants", quadrants)

    def divider(self, divider_id: str) -> Divider:
        """The divider with this id."""
        return next(d for d in self.dividers if d.id == divider_id)


def _one_interval(values: tuple[float, ...], low: float | None, high: float | None) -> bool:
    """Whether [low, high) is one of the intervals the sorted divider values cut an axis into."""
    edges = (None, *values, None)
    return any(low == a and high == b for a, b in itertools.pairwise(edges))


BooleanOp = Literal["and", "or", "not"]


@dataclass(frozen=True)
class GateRef:
    """A reference to a population in a boolean gate, optionally as its complement."""

    gate: str
    complement: bool = False


@dataclass(frozen=True)
class BooleanGate:
    """and / or over two or more populations, or not over exactly one."""

    id: str
    parent: str | None
    op: BooleanOp
    refs: tuple[GateRef, ...]

    def __post_init__(self) -> None:
        refs = tuple(self.refs)
        if self.op not in ("and", "or", "not"):
            raise _gate_error(self.id, f"boolean operation {self.op!r} is not and, or, not")
        if self.op == "not" and len(refs) != 1:
            raise _gate_error(self.id, f"'not' takes exactly one reference, not {len(refs)}")
        if self.op != "not" and len(refs) < 2:
            raise _gate_error(self.id, f"'{self.op}' needs at least two references")
        object.__setattr__(self, "refs", refs)


Gate = RangeGate | RectangleGate | PolygonGate | EllipsoidGate | QuadrantGate | BooleanGate
