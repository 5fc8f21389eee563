"""One sample's walk through a gating template.

A :class:`Placer` places the cuts a population needs from the events of the population the
template names (:func:`cartflow.gating.cuts.place_threshold`, trying the cut's methods in turn),
compiles phenotype populations into range and boolean gates, and runs the registered
placement method of every other gate (:mod:`cartflow.gating.method`) on its parent's events. It is
the only writer: each method returns a :class:`~cartflow.gating.method.Placement`, which ``apply``
adds to one :class:`~cartflow.gating.engine.Evaluator` (so the next cut can look at the population
just made), recording its decisions the one way cuts are recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from cartflow.gating.cuts import place_threshold
from cartflow.gating.engine import Evaluator
from cartflow.gating.errors import GatingError
from cartflow.gating.method import (
    ESTIMATE_LIMIT,
    FLUOR,
    PART,
    SSC_LOG,
    ChannelMap,
    Method,
    Parent,
    Placement,
    axis_for,
    fixed_decision,
)
from cartflow.gating.model import BooleanGate, Bound, Dimension, Gate, GateRef, RangeGate
from cartflow.gating.placement import ThresholdDecision
from cartflow.gating.template import Condition, CutSpec, PopulationSpec, Template
from cartflow.gating.transforms import Fasinh, Flog, Hyperlog, Logicle

MIN_PARENT = 200
"""Parents smaller than this are not judged for implausible cuts."""
NEAR_EMPTY = 0.002
"""A side holding at most this share of its parent counts as (nearly) empty."""
SIDE_SHARE = 0.05
"""Share of the data a cut was placed on that must lie on a side for a mode there to count."""

__all__ = [
    "ESTIMATE_LIMIT", "FLUOR", "PART", "SSC_LOG", "ChannelMap", "Placer", "place_threshold",
    "transforms_for",
]  # fmt: skip


def transforms_for(template: Template) -> dict:
    """The template's fluorescence display transform, the SSC log scale, and the scale it
    gives any marker or channel of its own (``transforms:``)."""
    params = {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0} | {
        k.upper(): float(v) for k, v in template.transform.items() if k != "type"
    }
    made = {
        FLUOR: Logicle(t=params["T"], w=params["W"], m=params["M"], a=params["A"]),
        SSC_LOG: Flog(t=params["T"], m=params["M"]),
    }
    kinds = {"logicle": Logicle, "biex": Hyperlog, "asinh": Fasinh}
    for name, spec in template.transforms.items():
        if spec["type"] in kinds:
            values = {k.lower(): v for k, v in spec.items() if k != "type"}
            made[scale_id(name)] = kinds[spec["type"]](**values)
    return made


def scale_id(name: str) -> str:
    """The transform id of a marker's or channel's own scale (an XML id: Gating-ML)."""
    return "scale_" + re.sub(r"[^A-Za-z0-9._-]", lambda m: f"_{ord(m.group()):x}_", name)


def scales_for(template: Template) -> dict[str, str | None]:
    """Marker or channel → the transform id of its own scale (None: data units)."""
    return {
        name: None if spec["type"] == "linear" else scale_id(name)
        for name, spec in template.transforms.items()
    }


class Placer:
    """Walks a template over one sample: the cuts and gates placed so far, the flags raised,
    and the evaluator every gate is added to; gates other than phenotypes are placed by the
    ``methods`` registry (``core`` keeps a phenotype to its robust core)."""

    def __init__(
        self,
        template: Template,
        evaluator: Evaluator,
        channels: ChannelMap,
        fixed_cuts: Mapping[str, float | ThresholdDecision | Placement],
        methods: Mapping[str, Method],
        core: Method | None = None,
        channel_names: tuple[str, ...] = (),
    ) -> None:
        self.channel_names = frozenset(channel_names)
        self.scales = scales_for(template)
        self.template = template
        self.methods = methods
        self.core = core
        self.evaluator = evaluator
        self.channels = channels
        self.fixed_cuts = fixed_cuts
        self.decisions: dict[str, ThresholdDecision] = {}
        self.populations: list[str] = []
        self.parents: dict[str, str | None] = {}
        self.skipped: dict[str, str] = {}
        self.approximations: dict[str, str] = {}
        self.flags: list[str] = []
        self.degenerate: set[str] = set()
        self.fits: dict[str, Any] = {}
        """What each method fitted, by population, for methods that declare it as input."""

    def axis(self, name: str) -> Dimension:
        """The axis of a marker or channel on its scale."""
        return axis_for(name, self.channels, self.scales)

    def has(self, name: str) -> bool:
        """Whether the sample carries this marker or channel."""
        return name in self.channels.markers or name in self.channel_names

    def add(self, *gates: Gate) -> None:
        for gate in gates:
            self.evaluator.add(gate)

    def values(self, axis: Dimension, population: str | None) -> np.ndarray:
        return self.evaluator.values(axis, population, ESTIMATE_LIMIT)

    def decide(self, name: str, make) -> ThresholdDecision:
        if name in self.fixed_cuts:
            given = self.fixed_cuts[name]
            decision = (
                given
                if isinstance(given, ThresholdDecision)
                else fixed_decision(float(given), "given", 0)
            )
        else:
            decision = make()
        return self.record(name, decision)

    def approximate(self, population: str, note: str) -> None:
        """Say how a population is read short of its definition (notes add up)."""
        known = self.approximations.get(population)
        self.approximations[population] = f"{known}; {note}" if known else note

    def parent_view(
        self, population_id: str, parent: str | None, inputs: Mapping[str, Any] | None = None
    ) -> Parent:
        """The read-only view a method places ``population_id`` from."""
        return Parent(
            population_id, parent, self.evaluator, self.channels, frozenset(self.degenerate),
            self.fixed_cuts, inputs or {}, self.scales, self.channel_names,
        )  # fmt: skip

    def apply(self, population_id: str, placement: Placement) -> None:
        """Record a method's decisions, flags and notes; add its gates (or say why not)."""
        for name, decision in placement.decisions:
            self.record(name, decision)
        self.flags.extend(placement.flags)
        for note in placement.notes:
            self.approximate(population_id, note)
        if placement.skipped is not None:
            self.skipped[population_id] = placement.skipped
            return
        self.add(*placement.gates)
        if placement.fit is not None:
            self.fits[population_id] = placement.fit

    def place_gate(self, spec: PopulationSpec) -> None:
        """Run the population's method on its parent (less any excluded population)."""
        method = self.methods[str(spec.gate)]
        parent = spec.parent
        if spec.exclude is not None and spec.exclude in self.populations:
            parent = f"{spec.id}{PART}events"
            self.add(BooleanGate(parent, spec.parent, "not", (GateRef(spec.exclude),)))
        given = self.fixed_cuts.get(spec.id)
        if isinstance(given, Placement):  # placed once for several samples (pooled)
            gates = tuple(
                g if g.parent is not None else replace(g, parent=parent) for g in given.gates
            )
            self.apply(spec.id, replace(given, gates=gates))
            return
        inputs = {name: self.fits.get(getattr(spec.options, name)) for name in method.inputs}
        view = self.parent_view(spec.id, parent, inputs)
        self.apply(spec.id, method.place(view, spec.options))

    def record(self, name: str, decision: ThresholdDecision) -> ThresholdDecision:
        """Keep a decision (flagged when it fell back)."""
        self.decisions[name] = decision
        if decision.fallback:
            self.flags.append(f"threshold_fallback:{name}")
        return decision

    def marker_of(self, cut: str) -> str:
        """The marker or channel a named cut is placed on."""
        return self.template.thresholds[cut].marker

    def cut(self, cut: str, level: str) -> float:
        spec = self.template.thresholds[cut]
        positive = self.decisions.get(cut) or self.decide(
            cut, lambda: self._estimate(spec.positive, spec.marker, None)
        )
        if level in ("+", "-"):
            return positive.value
        name = f"{cut}.bright"
        bright = self.decisions.get(name) or self.decide(
            name, lambda: self._estimate(spec.bright, spec.marker, positive.value)
        )
        return bright.value

    def _estimate(self, spec: CutSpec, marker: str, above: float | None) -> ThresholdDecision:
        if marker in self.degenerate:
            return ThresholdDecision(
                spec.bounds.default, spec.methods[0], True, "channel carries no signal", 0
            )
        axis = self.axis(marker)
        population = self._estimate_population(spec)
        values = self.values(axis, population) if population else np.empty(0)
        if above is not None:
            values = values[values >= above]
        negatives = None
        if spec.negative:
            known = spec.negative in self.parents
            negatives = self.values(axis, spec.negative) if known else np.empty(0)
        scale = self.evaluator.gate_set.transforms.get(axis.transform)
        decision = place_threshold(spec, values, negatives, scale)
        decision.evidence["estimated_on"] = population
        return decision

    def _estimate_population(self, spec: CutSpec) -> str | None:
        """The first population of the cut's chain that is gated and holds enough events."""
        chain = [p for p in spec.estimate_chain if p in self.parents]
        if not chain:
            return None
        for population in chain:
            if self.evaluator.count(population) >= spec.min_events:
                return population
        return max(chain, key=self.evaluator.count)

    def check_channels(self) -> None:
        """Flag marker, scatter and time channels that carry no signal (constant or not
        finite on the estimation subsample); cuts on such markers fall back."""
        named = dict(self.channels.markers)
        named |= {
            channel: channel
            for channel in (self.channels.fsc_area, self.channels.ssc_area, self.channels.time)
        }
        for name, channel in named.items():
            try:
                values = self.evaluator.values(Dimension(channel), None, ESTIMATE_LIMIT)
            except GatingError:
                continue  # a missing channel is reported where a gate needs it
            finite = values[np.isfinite(values)]
            if finite.size == 0 or np.ptp(finite) == 0:
                self.degenerate.add(name)
                self.flags.append(f"degenerate_channel:{name}")

    def run(self) -> None:
        self.check_channels()
        for spec in self.template.populations:
            if spec.parent is not None and spec.parent in self.skipped:
                self.skipped[spec.id] = f"parent {spec.parent} was not gated"
                continue
            try:
                if spec.gate is not None:
                    self.place_gate(spec)
                elif spec.boolean is not None:
                    self._boolean(spec)
                else:
                    self._phenotype(spec)
            except (GatingError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                self.skipped[spec.id] = f"could not be gated: {exc}"
                self.flags.append(f"not_gated:{spec.id}")
                continue
            if spec.id not in self.skipped:
                self.populations.append(spec.id)
                self.parents[spec.id] = spec.parent

    def _boolean(self, spec: PopulationSpec) -> None:
        """``A and not B``, ``A or B``, ``not A``: one Gating-ML boolean gate, negated
        operands referenced as their complement."""
        operator, terms = spec.boolean
        missing = [name for _, name in terms if name not in self.parents]
        if missing:
            self.skipped[spec.id] = f"{', '.join(missing)} not gated"
            return
        if len(terms) == 1:
            self.add(BooleanGate(spec.id, spec.parent, "not", (GateRef(terms[0][1]),)))
            return
        refs = tuple(GateRef(name, complement=negated) for negated, name in terms)
        self.add(BooleanGate(spec.id, spec.parent, operator, refs))

    def _phenotype(self, spec: PopulationSpec) -> None:
        usable = [c for c in spec.phenotype if self.has(self.marker_of(c.marker))]
        dropped = [c for c in spec.phenotype if not self.has(self.marker_of(c.marker))]
        if not usable:
            self.skipped[spec.id] = "no marker of its phenotype is on this panel"
            return
        silent = [c.marker for c in usable if self.marker_of(c.marker) in self.degenerate]
        if silent:
            self.skipped[spec.id] = f"channel of {', '.join(silent)} carries no signal"
            return
        if dropped:
            self.approximate(
                spec.id,
                f"read as {' '.join(map(str, usable))}: "
                f"{', '.join(c.marker for c in dropped)} not on this panel",
            )
        if spec.options is not None and self.core is not None and self._with_core(spec, usable):
            return
        gates: list[Gate] = [self._condition_gate(spec, c, len(usable) == 1) for c in usable]
        if len(gates) > 1:
            refs = tuple(GateRef(g.id) for g in gates)
            gates.append(BooleanGate(spec.id, spec.parent, "and", refs))
        self.add(*gates)
        for condition, gate in zip(usable, gates, strict=False):
            self._check_plausible(spec, condition, gate.id)

    def _check_plausible(self, spec: PopulationSpec, condition: Condition, gate_id: str) -> None:
        """Flag ``implausible:<cut>`` when a cut leaves (nearly) nothing on its side while
        the events it was placed on have a clear mode there (a confident but wrong cut)."""
        decision = self.decisions.get(condition.marker)
        parent = self.evaluator.count(spec.parent) if spec.parent else self.evaluator.event_count
        flag = f"implausible:{condition.marker}"
        if decision is None or condition.level not in ("+", "-") or flag in self.flags:
            return
        evidence = decision.evidence
        if evidence.get("estimated_on", spec.parent) != spec.parent:
            return  # placed on another population: a subset may well be empty on one side
        modes = evidence.get("modes") or evidence.get("means") or ()
        above = condition.level == "+"
        on_side = [m for m in modes if (m >= decision.value) == above]
        grid = np.asarray(evidence.get("grid", ()), dtype=np.float64)
        density = np.asarray(evidence.get("density", ()), dtype=np.float64)
        if grid.size and grid.size == density.size and density.sum() > 0:
            side = (grid >= decision.value) == above
            if density[side].sum() < SIDE_SHARE * density.sum():
                return  # the mode there is a bump of a few events, not a population
        kept = self.evaluator.count(gate_id)
        if on_side and parent >= MIN_PARENT and kept <= NEAR_EMPTY * parent:
            self.flags.append(flag)
            self.approximate(
                spec.id,
                f"{condition} keeps {kept} of {parent} events though the cut's data have a "
                f"mode at {on_side[0]:.3f} on that side",
            )

    def _with_core(self, spec: PopulationSpec, usable: list[Condition]) -> bool:
        """The phenotype's events kept to their core; False (and nothing added) when no
        core can be placed. The core gates sit under the phenotype's gate, so only its
        (few) events are transformed for them."""
        assert self.core is not None
        helpers: list[Gate] = [self._condition_gate(spec, c, False) for c in usable]
        if len(helpers) > 1:
            refs = tuple(GateRef(g.id) for g in helpers)
            helpers.append(BooleanGate(f"{spec.id}{PART}phenotype", spec.parent, "and", refs))
        self.add(*helpers)
        phenotype = helpers[-1].id
        placement = self.core.place(self.parent_view(spec.id, phenotype), spec.options)
        core = placement.gates
        self.apply(spec.id, Placement(decisions=placement.decisions, notes=placement.notes))
        if not core:
            for gate in reversed(helpers):
                self.evaluator.withdraw(gate.id)
            return False
        refs = (GateRef(phenotype), *(GateRef(g.id) for g in core))
        self.add(*core, BooleanGate(spec.id, spec.parent, "and", refs))
        return True

    def _condition_gate(self, spec: PopulationSpec, condition: Condition, alone: bool) -> RangeGate:
        gate_id = spec.id if alone else f"{spec.id}{PART}{condition}"
        axis = self.axis(self.marker_of(condition.marker))
        if condition.level == "+":
            bound = Bound(axis, min=self.cut(condition.marker, "+"))
        elif condition.level == "-":
            bound = Bound(axis, max=self.cut(condition.marker, "-"))
        elif condition.level == "++":
            bound = Bound(axis, min=self.cut(condition.marker, "++"))
        else:  # dim
            bound = Bound(
                axis, min=self.cut(condition.marker, "+"), max=self.cut(condition.marker, "++")
            )
        return RangeGate(gate_id, spec.parent, bound)
