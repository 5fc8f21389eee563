"""What every automatic gate is: a placement method on its parent's events.

A method (openCyto's method-per-row, cytoflow's estimate/apply) is a pure function
``place(parent: Parent, options) -> Placement``: it reads the events of the population it is
placed under (and, when it declares one, what an earlier method fitted, e.g. the scatter
clusters of ``cells``) and returns its gates, its decisions with their evidence, flags and
notes. It never adds to the evaluator or changes another method's results: the
:class:`~cartflow.gating.placer.Placer` applies each placement in one place and records its
decisions one way. Options are frozen dataclasses whose fields are the template's names with their
defaults (:mod:`cartflow.gating.options`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cartflow.gating.engine import Evaluator
from cartflow.gating.model import FCS_SPILL, Dimension, Gate
from cartflow.gating.placement import ThresholdDecision

FLUOR = "fluor"
SSC_LOG = "ssc_log"
ESTIMATE_LIMIT = 20_000
PART = "::"
"""Separator of helper gates from their population id (``<population>::<part>``)."""


@dataclass(frozen=True)
class ChannelMap:
    """Where a sample's markers and scatter signals are ($PnN names)."""

    markers: Mapping[str, str]
    fluorescence: tuple[str, ...]
    fsc_area: str = "FSC-A"
    fsc_height: str = "FSC-H"
    ssc_area: str = "SSC-A"
    time: str = "Time"


def axis_for(
    name: str, channels: ChannelMap, scales: Mapping[str, str | None], units: str = "transformed"
) -> Dimension:
    """The axis of a marker (its compensated detector) or of a channel named directly
    (``FSC-A``): on the template's scale for it (``scales``: name → transform id, None for
    data units), else the fluorescence scale for detectors and data units for the rest;
    ``units="data"`` always gives data units."""
    if name in channels.markers:
        channel, compensation = channels.markers[name], FCS_SPILL
    else:
        channel = name
        compensation = FCS_SPILL if name in channels.fluorescence else None
    default = FLUOR if compensation else None
    transform = scales.get(name, scales.get(channel, default))
    return Dimension(channel, compensation, None if units == "data" else transform)


def fixed_decision(value: float, source: str, events: int) -> ThresholdDecision:
    """A cut given rather than placed (by the template, or pooled and passed in)."""
    return ThresholdDecision(value, "fixed", False, None, events, {"source": source})


@dataclass(frozen=True)
class Parent:
    """A read-only view of the sample for one method: the population it is placed under,
    the channels, what earlier methods fitted that it declared as inputs, and cuts given
    from outside (pooled). Values come from the evaluator's estimation subsample."""

    id: str
    population: str | None
    evaluator: Evaluator = field(repr=False)
    channels: ChannelMap
    degenerate: frozenset[str] = frozenset()
    given: Mapping[str, float | ThresholdDecision] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    scales: Mapping[str, str | None] = field(default_factory=dict)
    """The template's scale (transform id) per marker or channel, where it gives one."""
    available: frozenset[str] = frozenset()
    """The sample's channel names ($PnN)."""

    def values(self, axis: Dimension, limit: int | None = ESTIMATE_LIMIT) -> np.ndarray:
        """Transformed values of one axis on the parent (its estimation subsample)."""
        return self.evaluator.values(axis, self.population, limit)

    def values_in(
        self, axis: Dimension, population: str | None, limit: int | None = ESTIMATE_LIMIT
    ) -> np.ndarray:
        """Transformed values of one axis on another gated population."""
        return self.evaluator.values(axis, population, limit)

    def raw(self, channel: str) -> np.ndarray:
        """Every parent event's raw value of one channel, as stored (float32 or float64;
        read-only)."""
        return self.evaluator.raw_values(Dimension(channel), self.population)

    def count(self, population: str) -> int:
        return self.evaluator.count(population)

    def transform(self, name: str):
        return self.evaluator.gate_set.transforms[name]

    def axis(self, name: str, units: str = "transformed") -> Dimension:
        """A marker's compensated axis, or a channel's, on its scale (:func:`axis_for`)."""
        return axis_for(name, self.channels, self.scales, units)

    def has(self, name: str) -> bool:
        """Whether the sample carries this marker or channel."""
        return name in self.channels.markers or name in self.available

    def scatter_axes(self) -> tuple[Dimension, Dimension]:
        """FSC-A (linear) and SSC-A (log) as the scatter gates use them."""
        return Dimension(self.channels.fsc_area), Dimension(self.channels.ssc_area, None, SSC_LOG)

    def decide(self, name: str, make: Callable[[], ThresholdDecision]) -> ThresholdDecision:
        """The cut given from outside under this name, else the one ``make`` places."""
        if name in self.given:
            given = self.given[name]
            if isinstance(given, ThresholdDecision):
                return given
            return fixed_decision(float(given), "given", 0)
        return make()


@dataclass(frozen=True)
class Placement:
    """What one method placed: gates (children after their parents), named decisions with
    evidence, flags, notes on how the population is read short of its definition, what it
    fitted for later methods (``fit``), or why it placed nothing (``skipped``)."""

    gates: tuple[Gate, ...] = ()
    decisions: tuple[tuple[str, ThresholdDecision], ...] = ()
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fit: Any = None
    skipped: str | None = None


class Builder:
    """A method's own scratch list of what it places (local to one call)."""

    def __init__(self) -> None:
        self.gates: list[Gate] = []
        self.decisions: list[tuple[str, ThresholdDecision]] = []
        self.flags: list[str] = []
        self.notes: list[str] = []

    def add(self, *gates: Gate) -> None:
        self.gates.extend(gates)

    def record(self, name: str, decision: ThresholdDecision) -> ThresholdDecision:
        self.decisions.append((name, decision))
        return decision

    def done(self, fit: Any = None, skipped: str | None = None) -> Placement:
        return Placement(
            tuple(self.gates), tuple(self.decisions), tuple(self.flags), tuple(self.notes),
            fit, skipped,
        )  # fmt: skip


@dataclass(frozen=True)
class Method:
    """A registered placement method: its name, its options type (defaults in one place),
    the option names that refer to populations whose fit it reads, and its function."""

    name: str
    options: type
    place: Callable[[Parent, Any], Placement]

    @property
    def inputs(self) -> tuple[str, ...]:
        """Options naming the populations whose fits this method reads."""
        from cartflow.gating.options import inputs_of

        return inputs_of(self.options)
