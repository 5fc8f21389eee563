"""The gate evaluator: gates added one at a time on one event matrix, and :func:`evaluate`."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from cartflow.gating.engine.columns import _Columns
from cartflow.gating.engine.evaluation import _check_events, _Evaluation
from cartflow.gating.engine.ranges import _bounds_mask
from cartflow.gating.engine.results import GatingResult, PackedMasks
from cartflow.gating.errors import GatingError
from cartflow.gating.model import Axis, Bound, Gate, GateHierarchy, GateSet

SUBSAMPLES = 4
"""Estimation subsamples kept (the ones asked for last)."""


class Evaluator:
    """Gates evaluated one at a time on one event matrix, sharing every column cache.

    Data-driven placement adds a gate, looks at the values of the population it made, places
    the next cut and adds the next gate; ``result()`` then equals what :func:`evaluate` gives
    for the same gates.
    """

    def __init__(
        self,
        transforms: Mapping,
        compensations: Mapping,
        events: np.ndarray,
        channel_names: Sequence[str],
        spill: tuple[Sequence[str], np.ndarray] | None = None,
        *,
        ranges_in_raw_space: bool = True,
    ) -> None:
        self._transforms = dict(transforms)
        self._compensations = dict(compensations)
        self._gates: list[Gate] = []
        self._hierarchy = GateHierarchy(self._transforms, self._compensations)
        self._gate_set: GateSet | None = None
        events = _check_events(events, channel_names)
        base = GateSet((), self._transforms, self._compensations)
        self._columns = _Columns(base, events, channel_names, spill)
        self._evaluation = _Evaluation(self._columns, ranges_in_raw_space)
        self._subsamples: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @property
    def event_count(self) -> int:
        """Number of events."""
        return self._columns.n

    @property
    def gate_set(self) -> GateSet:
        """The gates added so far, with the transforms and matrices."""
        if self._gate_set is None:
            self._gate_set = GateSet.checked(
                tuple(self._gates), self._transforms, self._compensations
            )
        return self._gate_set

    def add(self, gate: Gate, *, checked: bool = False) -> None:
        """Evaluate one more gate (its parent and references must be there already).

        Only the new gate is checked against those added before (what constructing the
        :class:`GateSet` of all of them would check); ``checked``: it was, as part of one."""
        if not checked:
            self._hierarchy.check(gate)
        try:
            self._evaluation.run(gate)
        except GatingError as exc:
            if exc.source and exc.source.startswith("gate "):
                raise
            raise GatingError(f"gate {gate.id!r}", f"{exc.source}: {exc.problem}") from exc
        self._hierarchy.admit(gate)
        self._gates.append(gate)
        self._gate_set = None

    def withdraw(self, gate_id: str) -> None:
        """Take back the gate added last, as if it had never been added."""
        if not self._gates or self._gates[-1].id != gate_id:
            raise ValueError(f"{gate_id!r} is not the gate added last")
        gate = self._gates.pop()
        for population in self._hierarchy.withdraw(gate):
            self._evaluation.forget(population)
            for key in [k for k in self._subsamples if k[1] == population]:
                del self._subsamples[key]
        self._gate_set = None

    def count(self, population: str) -> int:
        """Events in a population evaluated so far."""
        return self._evaluation.counts[population]

    def positions(self, population: str | None) -> np.ndarray:
        """Indices of a population's events (None: all events)."""
        idx = self._evaluation.positions(population)
        return np.arange(self._columns.n) if idx is None else idx

    def within(self, bounds: Sequence[Bound], population: str | None = None) -> np.ndarray:
        """Indices of a population's events (None: all events) with min <= value < max on
        every bound, decided as a range gate's are (each side of a cut computed once and
        shared with the gates that use it)."""
        evaluation = self._evaluation
        mask, _ = _bounds_mask(bounds, evaluation.bits(population), evaluation._side)
        return np.flatnonzero(np.unpackbits(mask, count=self.event_count).view(bool))

    def raw_values(self, axis: Axis, population: str | None = None) -> np.ndarray:
        """Compensated, untransformed values of an axis, as stored (float32 or float64), on
        a population's events (None: every event; that column is computed once and kept,
        so it is returned read-only)."""
        idx = self._evaluation.positions(population)
        if idx is not None:
            return self._columns.raw(axis, idx)
        column = self._columns.raw(axis, None).view()
        column.setflags(write=False)
        return column

    def values(self, axis: Axis, population: str | None, limit: int | None = None) -> np.ndarray:
        """Transformed values of an axis on a population's events (an even subsample of at
        most ``limit`` of them, in file order, when given). Subsamples are kept, so asking
        twice costs one transform."""
        key = (axis, population, limit)
        if key in self._subsamples:
            self._subsamples.move_to_end(key)
            return self._subsamples[key]
        n = self._columns.n
        if population is None:
            idx = None if limit is None or n <= limit else np.arange(0, n, math.ceil(n / limit))
        else:
            idx = self._evaluation.positions(population)
            if limit is not None and idx.size > limit:
                idx = idx[:: math.ceil(idx.size / limit)]
        values = self._columns.transformed(axis, idx)
        if limit is not None:
            self._subsamples[key] = values
            while len(self._subsamples) > SUBSAMPLES:
                self._subsamples.popitem(last=False)
        return values

    def result(self) -> GatingResult:
        """Masks, counts, parents and diagnostics of every population added."""
        evaluation = self._evaluation
        return GatingResult(
            event_count=self._columns.n,
            masks=PackedMasks(dict(evaluation.packed), self._columns.n),
            counts=MappingProxyType(dict(evaluation.counts)),
            parents=MappingProxyType(dict(evaluation.parents)),
            diagnostics=MappingProxyType(dict(evaluation.diagnostics)),
        )


def evaluate(
    gate_set: GateSet,
    events: np.ndarray,
    channel_names: Sequence[str],
    spill: tuple[Sequence[str], np.ndarray] | None = None,
    *,
    ranges_in_raw_space: bool = True,
) -> GatingResult:
    """Gate ``events`` (n x channels, in file order) with ``gate_set``.

    ``spill`` is the data file's spillover matrix (its channel names and the matrix), used by
    dimensions whose compensation is ``"FCS"``; without it they stay uncompensated, as
    Gating-ML 2.0 specifies. ``ranges_in_raw_space=False`` compares transformed values for
    range, rectangle and quadrant gates instead of mapping their cuts (same membership; used
    to check that claim). Raises :class:`GatingError` for channels missing from the data or a
    bad spillover matrix.
    """
    evaluator = Evaluator(
        gate_set.transforms,
        gate_set.compensations,
        events,
        channel_names,
        spill,
        ranges_in_raw_space=ranges_in_raw_space,
    )
    for gate in gate_set.gates:
        evaluator.add(gate, checked=True)
    return evaluator.result()
