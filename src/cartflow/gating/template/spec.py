"""The template's parts: conditions, cuts, thresholds and populations, and phenotype text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cartflow.gating.errors import GatingError
from cartflow.gating.options import GATE_OPTIONS
from cartflow.gating.placement import Bounds

Level = Literal["+", "-", "++", "dim"]
SHAPE_GATES: tuple[str, ...] = tuple(GATE_OPTIONS)
METHODS = ("valley", "mixture", "tail", "balance", "fixed")
PART_SEPARATOR = "::"
"""Reserved in population ids: helper gates are named ``<population>::<part>``."""
_CONDITION = re.compile(r"^(?P<marker>[^\s+]+?)(?P<level>\+\+|\+|-|dim)$")
"""A marker as labs name it (``NK1.1``, ``TCR-gd``, ``Live/Dead``), then its level."""
TRANSFORMS = ("logicle", "asinh", "biex", "linear")
"""Scales a template may give a channel; ``linear`` keeps data units (scatter)."""
TRANSFORM_DEFAULTS = {
    "logicle": {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0},
    "biex": {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0},
    "asinh": {"T": 262_144.0, "M": 4.5, "A": 0.0},
    "linear": {},
}


@dataclass(frozen=True)
class Condition:
    marker: str
    level: Level

    def __str__(self) -> str:
        return f"{self.marker}{self.level}"


@dataclass(frozen=True)
class CutSpec:
    """How one cut of a marker is placed: methods tried in order until one is sure.

    ``estimate_on`` is the population whose events place the cut; with ``also_on`` the first
    of them holding at least ``min_events`` events is used (the population the cut matters
    for, else a broader one).
    """

    methods: tuple[str, ...]
    bounds: Bounds
    estimate_on: str | None = None
    negative: str | None = None
    quantile: float = 0.995
    margin: float = 0.0
    components: int = 2
    floor_sd: float = 2.5
    min_positives: float = 100.0
    hidden_share: float = 0.4
    also_on: tuple[str, ...] = ()
    min_events: int = 200
    valley_side: str = "middle"
    smoothing: float = 1.0
    """The valley's density bandwidth as a share of Silverman's rule (below 1: finer)."""

    @property
    def estimate_chain(self) -> tuple[str, ...]:
        """Populations to place the cut on, in order of preference."""
        return ((self.estimate_on,) if self.estimate_on else ()) + self.also_on


@dataclass(frozen=True)
class ThresholdSpec:
    """A named cut's positive cut and, for markers read as bright (``++``), its bright cut.

    ``name`` is how phenotypes call it; ``marker`` the marker or channel it cuts (the name
    unless the template says ``marker:``, so one marker can have a cut per branch)."""

    name: str
    positive: CutSpec
    bright: CutSpec | None = None
    marker: str = ""

    def __post_init__(self) -> None:
        if not self.marker:
            object.__setattr__(self, "marker", self.name)


@dataclass(frozen=True)
class PopulationSpec:
    id: str
    parent: str | None
    phenotype: tuple[Condition, ...] = ()
    gate: str | None = None
    options: Any = None
    """The gate's method options (:mod:`cartflow.gating.options`), or a phenotype's core options."""
    line: int = 0
    exclude: str | None = None
    """A population left out of the parent before the gate is placed (e.g. beads)."""
    boolean: tuple[str, tuple[tuple[bool, str], ...]] | None = None
    """``("and" | "or", ((negated, population), ...))`` for a boolean population."""
    written: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """A gate's options as the template writes them (before defaults), read again with an
    overlay by :meth:`Template.with_options`."""


def parse_phenotype(text: str, where: str = "phenotype") -> tuple[Condition, ...]:
    """``'CD3+ CAR+ CD27++'`` → conditions; a bad token raises GatingError naming it."""
    conditions = []
    for token in text.split():
        match = _CONDITION.match(token)
        if not match:
            raise GatingError(where, f"{token!r} is not MARKER followed by +, -, ++ or dim")
        conditions.append(Condition(match["marker"], match["level"]))
    if not conditions:
        raise GatingError(where, "empty phenotype")
    markers = [c.marker for c in conditions]
    if len(set(markers)) != len(markers):
        raise GatingError(where, f"a marker appears twice in {text!r}")
    return tuple(conditions)
