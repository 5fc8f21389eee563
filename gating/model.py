"""The gate model: small frozen dataclasses shaped like Gating-ML 2.0.

A gate's dimensions name their compensation and transformation by reference, exactly as in
Gating-ML, so a :class:`GateSet` converts to and from Gating-ML without loss. Populations are
addressed by id: every gate except a :class:`QuadrantGate` is a population, and each quadrant of
a quadrant gate is one. ``parent`` is the id of the population a gate is drawn inside.

Compensation references: ``None`` means uncompensated, ``"FCS"`` the spillover matrix of the
data file, anything else the id of a :class:`SpectrumMatrix` of the gate set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np

from gating.errors import GatingError
from gating.transforms import SCALE_TRANSFORMS, Fratio, Transform

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


@dataclass(frozen=True)
class SpectrumMatrix:
    """A square spillover (spectrum) matrix: rows are fluorochromes, columns detectors."""

    fluorochromes: tuple[str, ...]
    detectors: tuple[str, ...]
    coefficients: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        fluorochromes, detectors = tuple(self.fluorochromes), tuple(self.detectors)
        coefficients = tuple(tuple(float(v) for v in row) for row in self.coefficients)
        n = len(detectors)
        if n == 0 or len(fluorochromes) != n:
            raise GatingError(
                "spectrum matrix",
                f"{len(fluorochromes)} fluorochromes for {n} detectors: only square "
                "compensation matrices are supported",
            )
        if len(coefficients) != n or any(len(row) != n for row in coefficients):
            raise GatingError("spectrum matrix", f"coefficients are not {n} x {n}")
        matrix = np.array(coefficients)
        if not np.all(np.isfinite(matrix)) or np.linalg.matrix_rank(matrix) < n:
            raise GatingError("spectrum matrix", "coefficients are not finite and invertible")
        if len(set(detectors)) != n:
            raise GatingError("spectrum matrix", "detector names are not unique")
        object.__setattr__(self, "fluorochromes", fluorochromes)
        object.__setattr__(self, "detectors", detectors)
        object.__setattr__(self, "coefficients", coefficients)

    @property
    def matrix(self) -> np.ndarray:
        """The coefficients as a float64 array (a fresh copy)."""
        return np.array(self.coefficients, dtype=np.float64)

    def detector_for(self, name: str) -> str | None:
        """The detector a fluorochrome (or detector) name refers to, if any."""
        if name in self.detectors:
            return name
        if name in self.fluorochromes:
            return self.detectors[self.fluorochromes.index(name)]
        return None


def _missing(what: str, ref: str, quadrant_gates: set[str]) -> str:
    if ref in quadrant_gates:
        return f"{what} {ref!r} is a quadrant gate; name one of its quadrants instead"
    return f"{what} {ref!r} is not defined before this gate"


def _freeze(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


def _check_compensations(compensations: Mapping[str, SpectrumMatrix]) -> None:
    for matrix_id in compensations:
        if not matrix_id or matrix_id.lower() in ("fcs", "uncompensated"):
            raise GatingError(
                f"compensation {matrix_id!r}",
                "'FCS' and 'uncompensated' are reserved and cannot name a matrix",
            )


class GateHierarchy:
    """The checks of a :class:`GateSet`, one gate at a time.

    Keeps the ids of the gates admitted so far, so checking the next gate costs the size of
    that gate, not of the whole set: its axes' transformation and compensation ids, its parent
    and boolean references (defined before it) and its own ids (new and non-empty).
    """

    def __init__(
        self, transforms: Mapping[str, Transform], compensations: Mapping[str, SpectrumMatrix]
    ) -> None:
        _check_compensations(compensations)
        self.transforms = transforms
        self.compensations = compensations
        self._populations: set[str] = set()
        self._used: set[str] = set()
        self._quadrant_gates: set[str] = set()

    def check(self, gate: Gate) -> None:
        """Raise a :class:`GatingError` naming the gate if it cannot come next (nothing is
        recorded either way)."""
        self._check_axes(gate)
        populations, quadrant_gates = self._populations, self._quadrant_gates
        if gate.parent is not None and gate.parent not in populations:
            raise _gate_error(gate.id, _missing("parent", gate.parent, quadrant_gates))
        if isinstance(gate, BooleanGate):
            for ref in gate.refs:
                if ref.gate not in populations:
                    raise _gate_error(gate.id, _missing("reference", ref.gate, quadrant_gates))
        seen: set[str] = set()
        for new_id in _own_ids(gate):
            if not new_id:
                raise _gate_error(gate.id, "a gate or quadrant has an empty id")
            if new_id in self._used or new_id in seen:
                raise _gate_error(new_id, "this id is used twice")
            seen.add(new_id)

    def admit(self, gate: Gate) -> None:
        """Record a checked gate's ids: later gates may use it as parent or reference."""
        own = _own_ids(gate)
        self._used.update(own)
        if isinstance(gate, QuadrantGate):
            self._quadrant_gates.add(gate.id)
            self._populations.update(own[1:])
        else:
            self._populations.add(gate.id)

    def withdraw(self, gate: Gate) -> list[str]:
        """Forget an admitted gate's ids (nothing admitted after it may use them); returns
        the populations it made."""
        own = _own_ids(gate)
        self._used.difference_update(own)
        self._populations.difference_update(own)
        self._quadrant_gates.discard(gate.id)
        return own[1:] if isinstance(gate, QuadrantGate) else own

    def add(self, gate: Gate) -> None:
        """Check the next gate, then admit it."""
        self.check(gate)
        self.admit(gate)

    def _check_axes(self, gate: Gate) -> None:
        axes: tuple[Axis, ...]
        if isinstance(gate, QuadrantGate):
            axes = tuple(d.axis for d in gate.dividers)
        elif isinstance(gate, BooleanGate):
            axes = ()
        else:
            axes = gate.axes
        for axis in axes:
            comp = axis.compensation
            if comp not in (None, FCS_SPILL) and comp not in self.compensations:
                raise _gate_error(gate.id, f"{axis.label}: no compensation matrix {comp!r}")
            if axis.transform is not None:
                transform = self.transforms.get(axis.transform)
                if not isinstance(transform, SCALE_TRANSFORMS):
                    raise _gate_error(
                        gate.id, f"{axis.label}: {axis.transform!r} is not a scale transformation"
                    )
            if isinstance(axis, RatioDimension) and not isinstance(
                self.transforms.get(axis.ratio), Fratio
            ):
                raise _gate_error(gate.id, f"{axis.label}: {axis.ratio!r} is not an fratio")


def _own_ids(gate: Gate) -> list[str]:
    """The population ids a gate defines: its own, and its quadrants' for a quadrant gate."""
    if isinstance(gate, QuadrantGate):
        return [gate.id, *(q.id for q in gate.quadrants)]
    return [gate.id]


@dataclass(frozen=True)
class GateSet:
    """Gates in hierarchy order (parents and referenced gates first), transforms and matrices.

    Construction checks every reference: parents, boolean references, transformation and
    compensation ids; a problem is a :class:`GatingError` naming the gate.
    """

    gates: tuple[Gate, ...]
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    compensations: Mapping[str, SpectrumMatrix] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gates", tuple(self.gates))
        object.__setattr__(self, "transforms", _freeze(self.transforms))
        object.__setattr__(self, "compensations", _freeze(self.compensations))
        hierarchy = GateHierarchy(self.transforms, self.compensations)
        for gate in self.gates:
            hierarchy.add(gate)

    @classmethod
    def checked(
        cls,
        gates: tuple[Gate, ...],
        transforms: Mapping[str, Transform],
        compensations: Mapping[str, SpectrumMatrix],
    ) -> GateSet:
        """A gate set of gates already checked in this order (by a :class:`GateHierarchy` of
        the same transforms and matrices): built without checking them again."""
        gate_set = object.__new__(cls)
        object.__setattr__(gate_set, "gates", tuple(gates))
        object.__setattr__(gate_set, "transforms", _freeze(transforms))
        object.__setattr__(gate_set, "compensations", _freeze(compensations))
        return gate_set

    def __iter__(self) -> Iterator[Gate]:
        return iter(self.gates)

    def __len__(self) -> int:
        return len(self.gates)

    def gate(self, gate_id: str) -> Gate:
        """The gate with this id (a quadrant id gives its quadrant gate)."""
        for gate in self.gates:
            if gate.id == gate_id:
                return gate
            if isinstance(gate, QuadrantGate) and any(q.id == gate_id for q in gate.quadrants):
                return gate
        raise KeyError(gate_id)

    @property
    def population_ids(self) -> tuple[str, ...]:
        """Every addressable population: gate ids, with quadrant gates replaced by quadrants."""
        ids: list[str] = []
        for gate in self.gates:
            if isinstance(gate, QuadrantGate):
                ids.extend(q.id for q in gate.quadrants)
            else:
                ids.append(gate.id)
        return tuple(ids)
