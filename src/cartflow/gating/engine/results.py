"""What an evaluation returns: masks, counts and the evidence of each population."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cartflow.gating.model import Gate


@dataclass(frozen=True)
class AxisCut:
    """What a range decided on one axis: the cuts as written and as applied to raw values.

    ``raw_min``/``raw_max`` are the cuts in compensated, untransformed units (equal to
    ``min``/``max`` on an untransformed axis; None when the transformed values were compared).
    ``boundary_events`` counts events so close to a mapped cut that they were transformed.
    """

    axis: str
    min: float | None
    max: float | None
    raw_min: float | None
    raw_max: float | None
    space: Literal["raw", "transformed"]
    boundary_events: int = 0


@dataclass(frozen=True)
class GateDiagnostics:
    """The evidence for one population: its gate, what was evaluated and what was decided."""

    population: str
    gate: Gate
    parent: str | None
    evaluated_events: int
    count: int
    cuts: tuple[AxisCut, ...] = ()
    transformed_axes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def gate_type(self) -> str:
        """The gate's class name, e.g. ``RectangleGate``."""
        return type(self.gate).__name__


class PackedMasks(Mapping[str, np.ndarray]):
    """Population masks kept as packed bits (one bit per event), unpacked when asked for.

    Each lookup returns a fresh read-only boolean array over all events in file order.
    """

    def __init__(self, packed: Mapping[str, np.ndarray], event_count: int) -> None:
        self._packed = packed
        self._n = event_count

    def __getitem__(self, population: str) -> np.ndarray:
        mask = np.unpackbits(self._packed[population], count=self._n).view(bool)
        mask.setflags(write=False)
        return mask

    def __contains__(self, population: object) -> bool:
        return population in self._packed

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


@dataclass(frozen=True, eq=False)
class GatingResult:
    """Per population: a read-only boolean mask over all events in file order, its count,
    its parent and its diagnostics. Quadrants are populations; a quadrant gate is not."""

    event_count: int
    masks: Mapping[str, np.ndarray]
    counts: Mapping[str, int]
    parents: Mapping[str, str | None]
    diagnostics: Mapping[str, GateDiagnostics]

    def _known(self, population: str) -> None:
        if population not in self.masks:
            raise KeyError(f"{population!r} is not a population of this result")

    def mask(self, population: str) -> np.ndarray:
        """Events in the population (including its parents)."""
        self._known(population)
        return self.masks[population]

    def count(self, population: str) -> int:
        """Number of events in the population."""
        self._known(population)
        return self.counts[population]

    def fraction_of_parent(self, population: str) -> float:
        """Count over the parent's count (over all events for a top-level gate); 0 if empty."""
        self._known(population)
        parent = self.parents[population]
        total = self.event_count if parent is None else self.counts[parent]
        return self.counts[population] / total if total else 0.0

    @property
    def populations(self) -> tuple[str, ...]:
        """Population ids in evaluation order."""
        return tuple(self.masks)
