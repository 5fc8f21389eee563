"""Declarative gating templates: populations with a parent and a phenotype or a shape gate.

A template is YAML a cytometrist can read (see ``panels/templates/``). Phenotypes are written
``CD3+ CAR+ CD8+ CD4- CD45RA+ CD62L+ CD27++ CD95+``: ``+`` at or above the marker's positive
cut, ``-`` below it, ``++`` at or above its bright cut, ``dim`` between the two. Every
threshold names how it is placed from data, on which population, within which bounds, and its
default. Problems are reported at load time with the file, line and reason.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gating.errors import GatingError
from gating.placement import Bounds

Level = Literal["+", "-", "++", "dim"]
ShapeGate = Literal["stable_flow", "singlets", "beads", "cells", "lymphocytes"]
SHAPE_GATES: tuple[str, ...] = ("stable_flow", "singlets", "beads", "cells", "lymphocytes")
METHODS = ("valley", "mixture", "tail", "fixed")
_CONDITION = re.compile(r"^(?P<marker>[A-Za-z0-9γδαβ]+?)(?P<level>\+\+|\+|-|dim)$")


@dataclass(frozen=True)
class Condition:
    marker: str
    level: Level

    def __str__(self) -> str:
        return f"{self.marker}{self.level}"


@dataclass(frozen=True)
class CutSpec:
    """How one cut of a marker is placed: methods tried in order until one is sure."""

    methods: tuple[str, ...]
    bounds: Bounds
    estimate_on: str | None = None
    negative: str | None = None
    quantile: float = 0.995
    margin: float = 0.0
    components: int = 2


@dataclass(frozen=True)
class ThresholdSpec:
    """A marker's positive cut and, for markers read as bright (``++``), its bright cut."""

    marker: str
    positive: CutSpec
    bright: CutSpec | None = None


@dataclass(frozen=True)
class PopulationSpec:
    id: str
    parent: str | None
    phenotype: tuple[Condition, ...] = ()
    gate: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    line: int = 0


@dataclass(frozen=True)
class Template:
    id: str
    version: int
    tube: str
    transform: dict[str, float]
    thresholds: dict[str, ThresholdSpec]
    populations: tuple[PopulationSpec, ...]
    source: str
    sha256: str

    def population(self, population_id: str) -> PopulationSpec:
        for spec in self.populations:
            if spec.id == population_id:
                return spec
        raise KeyError(population_id)

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(self.thresholds)


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


def _lines(node: yaml.Node, path: str = "") -> dict[str, int]:
    """1-based line of every mapping key and sequence item, by a dotted path."""
    found = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found.update(_lines(value, f"{path}.{key.value}" if path else str(key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.update(_lines(item, f"{path}[{i}]"))
    return found


class _Reader:
    def __init__(self, source: Path, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, key: str, problem: str) -> GatingError:
        line = self.lines.get(key) or self.lines.get(key.rsplit(".", 1)[0], 0)
        return GatingError(f"{self.source} line {line}", problem)

    def cut(self, raw: Any, key: str) -> CutSpec:
        if not isinstance(raw, dict):
            raise self.error(key, "a threshold must be a mapping")
        method = raw.get("method")
        methods = tuple(method) if isinstance(method, list) else (method,)
        for name in methods:
            if name not in METHODS:
                raise self.error(key, f"method {name!r} is not one of {', '.join(METHODS)}")
        try:
            low, high = (float(v) for v in raw["bounds"])
            bounds = Bounds(low, high, float(raw["default"]))
        except KeyError as exc:
            raise self.error(key, f"missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, f"bounds/default: {exc}") from None
        if "tail" in methods and not raw.get("negative"):
            raise self.error(key, "method tail needs 'negative': the internal negative population")
        if {"valley", "mixture"} & set(methods) and not raw.get("estimate_on"):
            raise self.error(key, "methods valley and mixture need 'estimate_on': a population id")
        return CutSpec(
            methods=methods,
            bounds=bounds,
            estimate_on=raw.get("estimate_on"),
            negative=raw.get("negative"),
            quantile=float(raw.get("quantile", 0.995)),
            margin=float(raw.get("margin", 0.0)),
            components=int(raw.get("components", 2)),
        )


def load_template(path: Path) -> Template:
    """Load and validate a gating template."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise GatingError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        raise GatingError(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict) or node is None:
        raise GatingError(str(path), "a template must be a mapping")
    reader = _Reader(path, _lines(node))
    for key in ("id", "tube", "thresholds", "populations"):
        if key not in raw:
            raise reader.error("", f"missing field {key!r}")

    thresholds = {}
    for marker, spec in (raw["thresholds"] or {}).items():
        key = f"thresholds.{marker}"
        positive = reader.cut(spec, key)
        bright = None
        if "bright" in spec:
            bright_raw = {"estimate_on": spec.get("estimate_on"), **spec["bright"]}
            bright = reader.cut(bright_raw, f"{key}.bright")
        thresholds[str(marker)] = ThresholdSpec(str(marker), positive, bright)

    populations: list[PopulationSpec] = []
    known: set[str] = set()
    for i, entry in enumerate(raw["populations"] or []):
        key = f"populations[{i}]"
        if not isinstance(entry, dict) or "id" not in entry:
            raise reader.error(key, "a population needs an 'id'")
        pop_id, parent = str(entry["id"]), entry.get("parent")
        if pop_id in known:
            raise reader.error(key, f"population {pop_id!r} is defined twice")
        if parent is not None and parent not in known:
            raise reader.error(key, f"parent {parent!r} of {pop_id!r} is not defined above it")
        has_phenotype, gate = "phenotype" in entry, entry.get("gate")
        if has_phenotype == (gate is not None):
            raise reader.error(key, f"{pop_id!r} needs exactly one of 'phenotype' or 'gate'")
        if gate is not None and gate not in SHAPE_GATES:
            raise reader.error(key, f"gate {gate!r} is not one of {', '.join(SHAPE_GATES)}")
        phenotype: tuple[Condition, ...] = ()
        if has_phenotype:
            try:
                phenotype = parse_phenotype(str(entry["phenotype"]), pop_id)
            except GatingError as exc:
                raise reader.error(key, f"{pop_id}: {exc.problem}") from None
            for condition in phenotype:
                spec = thresholds.get(condition.marker)
                if spec is None:
                    raise reader.error(key, f"{pop_id}: no threshold for {condition.marker}")
                if condition.level in ("++", "dim") and spec.bright is None:
                    raise reader.error(
                        key, f"{pop_id}: {condition} needs a 'bright' cut for {condition.marker}"
                    )
        options = {k: v for k, v in entry.items() if k not in ("id", "parent", "phenotype", "gate")}
        populations.append(
            PopulationSpec(pop_id, parent, phenotype, gate, options, reader.lines.get(key, 0))
        )
        known.add(pop_id)
    for marker, spec in thresholds.items():
        for cut, label in ((spec.positive, ""), (spec.bright, ".bright")):
            for ref in (cut.estimate_on, cut.negative) if cut else ():
                if ref is not None and ref not in known:
                    raise reader.error(
                        f"thresholds.{marker}{label}", f"population {ref!r} is not defined"
                    )
    return Template(
        id=str(raw["id"]),
        version=int(raw.get("version", 1)),
        tube=str(raw["tube"]),
        transform=dict(raw.get("transform") or {}),
        thresholds=thresholds,
        populations=tuple(populations),
        source=str(path),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
