"""Spectrum matrices and the gate set: gates in hierarchy order, checked one at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from cartflow.gating.errors import GatingError
from cartflow.gating.model.gates import (
    FCS_SPILL,
    Axis,
    BooleanGate,
    Gate,
    QuadrantGate,
    RatioDimension,
    _gate_error,
)
from cartflow.gating.transforms import SCALE_TRANSFORMS, Fratio, Transform


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
