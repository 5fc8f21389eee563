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
from pipeline.errors import yaml_problem

Level = Literal["+", "-", "++", "dim"]
ShapeGate = Literal["stable_flow", "singlets", "beads", "cells", "lymphocytes"]
SHAPE_GATES: tuple[str, ...] = ("stable_flow", "singlets", "beads", "cells", "lymphocytes")
METHODS = ("valley", "mixture", "tail", "balance", "fixed")
PART_SEPARATOR = "::"
"""Reserved in population ids: helper gates are named ``<population>::<part>``."""
_CONDITION = re.compile(r"^(?P<marker>[^\s+]+?)(?P<level>\+\+|\+|-|dim)$")
"""A marker as labs name it (``NK1.1``, ``TCR-gd``, ``Live/Dead``), then its level."""


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

    @property
    def estimate_chain(self) -> tuple[str, ...]:
        """Populations to place the cut on, in order of preference."""
        return ((self.estimate_on,) if self.estimate_on else ()) + self.also_on


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

    def cut(self, name: str) -> CutSpec:
        """A cut by name: a marker's positive cut (``CAR``) or its bright cut (``CD27.bright``)."""
        bright = name.endswith(".bright")  # a marker name may hold dots itself (NK1.1)
        marker, level = (name.removesuffix(".bright"), "bright") if bright else (name, "")
        spec = self.thresholds.get(marker)
        cut = None if spec is None else (spec.bright if level == "bright" else spec.positive)
        if cut is None or level not in ("", "bright"):
            raise GatingError(f"template {self.id}", f"has no cut named {name!r}")
        return cut


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
            name = f"{path}.{key.value}" if path else str(key.value)
            found[name] = key.start_mark.line + 1
            found.update({k: v for k, v in _lines(value, name).items() if k != name})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.update(_lines(item, f"{path}[{i}]"))
    return found


def _duplicate_key(node: yaml.Node) -> tuple[str, int] | None:
    """The first mapping key that appears twice in its mapping (YAML would keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                return str(key.value), key.start_mark.line + 1
            seen.add(key.value)
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


_POPULATION_ID = re.compile(r"[\w .+:-]+")
VALLEY_SIDES = ("lower", "middle", "upper")
"""Where in a valley's flat floor a valley cut lands."""
CUT_FIELDS = frozenset(
    {"method", "bounds", "default", "estimate_on", "negative", "quantile", "margin",
     "components", "floor_sd", "min_positives", "hidden_share", "min_events", "bright",
     "valley_side"}
)  # fmt: skip
POPULATION_FIELDS = frozenset({"id", "parent", "phenotype", "gate"})
PHENOTYPE_OPTIONS = frozenset({"core", "core_quantile"})
"""A phenotype population may keep to its robust core on scatter and named markers."""
GATE_OPTIONS: dict[str, frozenset[str]] = {
    "stable_flow": frozenset({"max_deviation"}),
    "singlets": frozenset({"width", "min_spread"}),
    "beads": frozenset({"bounds", "default"}),
    "cells": frozenset(
        {"exclude", "clusters", "keep", "radius", "spread", "bounds", "default", "keep_large"}
    ),
    "lymphocytes": frozenset(
        {
            "bounds",
            "default",
            "cluster",
            "bright",
            "cd45_sd",
            "dead",
            "dead_sd",
            "dead_cd45_sd",
            "lymphocyte_sd",
            "band_sd",
            "band_cd45_sd",
        }
    ),
}


class _Reader:
    def __init__(self, source: Path, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, key: str, problem: str) -> GatingError:
        line = self.lines.get(key)
        while line is None and key:
            key = key.rsplit(".", 1)[0] if "." in key else ""
            line = self.lines.get(key)
        return GatingError(f"{self.source} line {line or 1}", problem)

    def number(self, raw: dict, name: str, key: str, default: float) -> float:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{key}.{name}", f"{name} must be a number, not {value!r}")
        return float(value)

    def methods(self, method: Any, key: str) -> tuple[str, ...]:
        methods = tuple(method) if isinstance(method, list) else (method,)
        if not methods:
            raise self.error(key, "method needs at least one of " + ", ".join(METHODS))
        for name in methods:
            if name not in METHODS:
                raise self.error(key, f"method {name!r} is not one of {', '.join(METHODS)}")
        return methods

    def bounds(self, raw: dict, key: str) -> Bounds:
        try:
            low, high = (float(v) for v in raw["bounds"])
            bounds = Bounds(low, high, float(raw["default"]))
        except KeyError as exc:
            raise self.error(key, f"missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, f"bounds/default: {exc}") from None
        if not low < high:
            raise self.error(key, f"bounds [{low}, {high}] are empty")
        return bounds

    def cut(self, raw: Any, key: str) -> CutSpec:
        if not isinstance(raw, dict):
            raise self.error(key, "a threshold must be a mapping")
        unknown = sorted(set(map(str, raw)) - CUT_FIELDS)
        if unknown:
            raise self.error(f"{key}.{unknown[0]}", f"unknown field {unknown[0]!r}")
        methods = self.methods(raw.get("method"), key)
        bounds = self.bounds(raw, key)
        estimate_on = raw.get("estimate_on")
        chain = tuple(estimate_on) if isinstance(estimate_on, list) else (estimate_on,)
        if not all(isinstance(p, str) and p for p in chain if p is not None):
            raise self.error(key, "'estimate_on' must be a population id or a list of them")
        if "tail" in methods and not raw.get("negative"):
            raise self.error(key, "method tail needs 'negative': the internal negative population")
        if {"valley", "mixture", "balance"} & set(methods) and not estimate_on:
            raise self.error(
                key, "methods valley, mixture and balance need 'estimate_on': a population id"
            )
        quantile = self.number(raw, "quantile", key, 0.995)
        if not 0 < quantile < 1:
            raise self.error(f"{key}.quantile", f"quantile {quantile} must lie in (0, 1)")
        components = self.number(raw, "components", key, 2)
        if components < 1 or components != int(components):
            raise self.error(f"{key}.components", "components must be a whole number >= 1")
        valley_side = str(raw.get("valley_side", "middle"))
        if valley_side not in VALLEY_SIDES:
            raise self.error(
                f"{key}.valley_side", f"valley_side must be one of {', '.join(VALLEY_SIDES)}"
            )
        return CutSpec(
            methods=methods,
            bounds=bounds,
            estimate_on=chain[0],
            negative=raw.get("negative"),
            quantile=quantile,
            margin=self.number(raw, "margin", key, 0.0),
            components=int(components),
            floor_sd=self.number(raw, "floor_sd", key, 2.5),
            min_positives=self.number(raw, "min_positives", key, 100.0),
            hidden_share=self.number(raw, "hidden_share", key, 0.4),
            also_on=tuple(str(p) for p in chain[1:]),
            min_events=int(self.number(raw, "min_events", key, 200)),
            valley_side=valley_side,
        )

    def gate_options(self, gate: str, options: dict[str, Any], key: str) -> None:
        """Shape-gate options: known names, and scatter clusters as name: [FSC-A, SSC-A]."""
        unknown = sorted(set(options) - GATE_OPTIONS[gate])
        if unknown:
            raise self.error(f"{key}.{unknown[0]}", f"gate {gate} has no option {unknown[0]!r}")
        splits = options.get("dead_cd45_sd")
        if splits is not None:
            numbers = isinstance(splits, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in splits
            )
            if not numbers:
                raise self.error(
                    f"{key}.dead_cd45_sd", "dead_cd45_sd needs a list of positive CD45 sds"
                )
        clusters = options.get("clusters")
        if clusters is not None:
            if not isinstance(clusters, dict) or not clusters:
                raise self.error(f"{key}.clusters", "clusters must map names to [FSC-A, SSC-A]")
            for name, where in clusters.items():
                ok = isinstance(where, list) and len(where) == 2
                if not ok or not all(isinstance(v, int | float) and v > 0 for v in where):
                    raise self.error(
                        f"{key}.clusters.{name}",
                        f"cluster {name!r} needs [FSC-A, SSC-A] as two positive numbers",
                    )
            keep = options.get("keep", ["lymphocytes", "monocytes", "granulocytes"])
            missing = [k for k in keep if k not in clusters]
            if missing:
                raise self.error(
                    f"{key}.keep", f"kept cluster {missing[0]!r} is not one of the clusters"
                )


def _transform(raw: Any, reader: _Reader) -> dict[str, float]:
    """The fluorescence display transform: logicle with numeric T, W, M, A."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise reader.error("transform", "transform must be a mapping")
    kind = raw.get("type", "logicle")
    if kind != "logicle":
        raise reader.error("transform", f"transform type {kind!r} is not logicle")
    params = {k: v for k, v in raw.items() if k != "type"}
    unknown = sorted(set(params) - {"T", "W", "M", "A"})
    if unknown:
        raise reader.error("transform", f"unknown logicle parameter {unknown[0]!r}")
    try:
        from gating.transforms import Logicle

        values = {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0} | {
            k: float(v) for k, v in params.items()
        }
        Logicle(t=values["T"], w=values["W"], m=values["M"], a=values["A"])
    except (TypeError, ValueError) as exc:
        raise reader.error("transform", f"logicle parameters: {exc}") from None
    except GatingError as exc:
        raise reader.error("transform", exc.problem) from None
    return {"type": kind, **params}


def _read_yaml(path: Path) -> tuple[str, yaml.Node, dict]:
    """The template's text, its YAML node tree (for line numbers) and its values."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise GatingError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise GatingError(str(path), f"is not UTF-8 text: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise GatingError(*yaml_problem(path, exc)) from exc
    if not isinstance(raw, dict) or node is None:
        raise GatingError(f"{path} line 1", "a template must be a mapping")
    duplicate = _duplicate_key(node)
    if duplicate:
        raise GatingError(f"{path} line {duplicate[1]}", f"key {duplicate[0]!r} appears twice")
    return text, node, raw


def _thresholds(raw: dict, reader: _Reader) -> dict[str, ThresholdSpec]:
    """Each marker's positive cut and, when given, its bright cut."""
    thresholds = {}
    for marker, spec in raw.items():
        key = f"thresholds.{marker}"
        if not isinstance(marker, str) or not _CONDITION.match(f"{marker}+"):
            raise reader.error(key, f"{marker!r} is not a marker name (letters and digits)")
        positive = reader.cut(spec, key)
        bright = None
        if "bright" in spec:
            if not isinstance(spec["bright"], dict):
                raise reader.error(f"{key}.bright", "a bright cut must be a mapping")
            bright_raw = {"estimate_on": spec.get("estimate_on"), **spec["bright"]}
            bright = reader.cut(bright_raw, f"{key}.bright")
        thresholds[marker] = ThresholdSpec(marker, positive, bright)
    return thresholds


def _phenotype(
    entry: dict, pop_id: str, key: str, thresholds: dict[str, ThresholdSpec], reader: _Reader
) -> tuple[Condition, ...]:
    """A population's phenotype, each marker with the cut its level needs."""
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
    return phenotype


def _core_options(
    options: dict, pop_id: str, key: str, thresholds: dict[str, ThresholdSpec], reader: _Reader
) -> None:
    """``core``: two different markers with thresholds; ``core_quantile``: a share between
    0 and 1."""
    core = options.get("core")
    pair = (
        isinstance(core, list)
        and len(core) == 2
        and all(isinstance(m, str) and m in thresholds for m in core)
        and core[0] != core[1]
    )
    if core is not None and not pair:
        raise reader.error(
            f"{key}.core",
            f"{pop_id}: core needs two different markers with thresholds, as [CD45, CD3]",
        )
    quantile = options.get("core_quantile")
    if quantile is not None:
        if core is None:
            raise reader.error(f"{key}.core_quantile", f"{pop_id}: core_quantile needs core")
        number = isinstance(quantile, int | float) and not isinstance(quantile, bool)
        if not (number and 0 < quantile < 1):
            raise reader.error(
                f"{key}.core_quantile", f"{pop_id}: core_quantile must lie between 0 and 1"
            )


def _populations(
    entries: list, thresholds: dict[str, ThresholdSpec], reader: _Reader
) -> list[PopulationSpec]:
    """The population list in order: each parent defined above its children."""
    populations: list[PopulationSpec] = []
    known: set[str] = set()
    for i, entry in enumerate(entries):
        key = f"populations[{i}]"
        if not isinstance(entry, dict) or "id" not in entry:
            raise reader.error(key, "a population needs an 'id'")
        pop_id, parent = str(entry["id"]), entry.get("parent")
        if PART_SEPARATOR in pop_id or not pop_id.strip():
            raise reader.error(key, f"population id {pop_id!r} is empty or contains '::'")
        if not _POPULATION_ID.fullmatch(pop_id):  # it names files, XML ids and FlowJo paths
            raise reader.error(
                key, f"population id {pop_id!r} may hold letters, digits, spaces and _ . + - : only"
            )
        if pop_id in known:
            raise reader.error(key, f"population {pop_id!r} is defined twice")
        if parent is not None and parent not in known:
            raise reader.error(key, f"parent {parent!r} of {pop_id!r} is not defined above it")
        has_phenotype, gate = "phenotype" in entry, entry.get("gate")
        if has_phenotype == (gate is not None):
            raise reader.error(key, f"{pop_id!r} needs exactly one of 'phenotype' or 'gate'")
        if gate is not None and gate not in SHAPE_GATES:
            raise reader.error(key, f"gate {gate!r} is not one of {', '.join(SHAPE_GATES)}")
        options = {k: v for k, v in entry.items() if k not in POPULATION_FIELDS}
        phenotype: tuple[Condition, ...] = ()
        if has_phenotype:
            extra = set(options) - PHENOTYPE_OPTIONS
            if extra:
                name = sorted(extra)[0]
                raise reader.error(f"{key}.{name}", f"{pop_id}: unknown field {name!r}")
            phenotype = _phenotype(entry, pop_id, key, thresholds, reader)
            _core_options(options, pop_id, key, thresholds, reader)
        else:
            reader.gate_options(str(gate), options, key)
        populations.append(
            PopulationSpec(pop_id, parent, phenotype, gate, options, reader.lines.get(key, 0))
        )
        known.add(pop_id)
    return populations


def _check_cut_populations(
    thresholds: dict[str, ThresholdSpec], populations: list[PopulationSpec], reader: _Reader
) -> None:
    """Every population a cut is placed on exists and is gated before the cut is first needed."""
    order = {p.id: i for i, p in enumerate(populations)}
    for marker, spec in thresholds.items():
        users = [p for p in populations if any(c.marker == marker for c in p.phenotype)]
        for cut, label in ((spec.positive, ""), (spec.bright, ".bright")):
            if cut is None:
                continue
            where = f"thresholds.{marker}{label}"
            for ref in (*cut.estimate_chain, cut.negative):
                if ref is not None and ref not in order:
                    raise reader.error(where, f"population {ref!r} is not defined")
            if not users:
                continue
            first = users[0]
            if cut.estimate_chain and all(
                order[ref] >= order[first.id] for ref in cut.estimate_chain
            ):
                raise reader.error(
                    where,
                    f"{marker} is first needed by {first.id!r}, before "
                    f"{cut.estimate_chain[0]!r} (where it is placed) is gated",
                )
            if cut.negative is not None and order[cut.negative] >= order[first.id]:
                raise reader.error(
                    where,
                    f"{marker} is first needed by {first.id!r}, before its negative "
                    f"population {cut.negative!r} is gated",
                )


def load_template(path: Path) -> Template:
    """Load and validate a gating template; problems raise GatingError with file and line."""
    path = Path(path)
    text, node, raw = _read_yaml(path)
    reader = _Reader(path, _lines(node))
    for key in ("id", "tube", "thresholds", "populations"):
        if key not in raw:
            raise reader.error("", f"missing field {key!r}")
    try:
        version = int(raw.get("version", 1))
    except (TypeError, ValueError):
        raise reader.error("version", f"version {raw.get('version')!r} is not a number") from None
    transform = _transform(raw.get("transform"), reader)
    if not isinstance(raw["thresholds"], dict):
        raise reader.error("thresholds", "thresholds must map markers to their cuts")
    if not isinstance(raw["populations"], list) or not raw["populations"]:
        raise reader.error("populations", "populations must be a non-empty list")
    thresholds = _thresholds(raw["thresholds"], reader)
    populations = _populations(raw["populations"], thresholds, reader)
    _check_cut_populations(thresholds, populations, reader)
    return Template(
        id=str(raw["id"]),
        version=version,
        tube=str(raw["tube"]),
        transform=transform,
        thresholds=thresholds,
        populations=tuple(populations),
        source=str(path),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
