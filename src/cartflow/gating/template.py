"""Declarative gating templates: populations with a parent and a phenotype or a shape gate.

A template is YAML a cytometrist can read (see ``panels/templates/``). Phenotypes are written
``CD3+ CAR+ CD8+ CD4- CD45RA+ CD62L+ CD27++ CD95+``: ``+`` at or above the marker's positive
cut, ``-`` below it, ``++`` at or above its bright cut, ``dim`` between the two. Every
threshold names how it is placed from data, on which population, within which bounds, and its
default. Problems are reported at load time with the file, line and reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from cartflow.gating.errors import GatingError
from cartflow.gating.options import GATE_OPTIONS, REQUIRED, CoreOptions, inputs_of, read_options
from cartflow.gating.placement import Bounds
from cartflow.io.errors import YamlPlaces, yaml_node_lines, yaml_problem

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
    transforms: dict[str, dict] = field(default_factory=dict)
    """Per marker or channel: ``{"type": "asinh", "T": ..., ...}`` (``linear``: data units)."""

    def population(self, population_id: str) -> PopulationSpec:
        for spec in self.populations:
            if spec.id == population_id:
                return spec
        raise KeyError(population_id)

    @property
    def markers(self) -> tuple[str, ...]:
        """Every marker or channel the template cuts or draws on (each once)."""
        names = [spec.marker for spec in self.thresholds.values()]
        for population in self.populations:
            names.extend(getattr(population.options, "channels", ()) or ())
        return tuple(dict.fromkeys(names))

    def cut(self, name: str) -> CutSpec:
        """A cut by name: a marker's positive cut (``CAR``) or its bright cut (``CD27.bright``)."""
        bright = name.endswith(".bright")  # a marker name may hold dots itself (NK1.1)
        marker, level = (name.removesuffix(".bright"), "bright") if bright else (name, "")
        spec = self.thresholds.get(marker)
        cut = None if spec is None else (spec.bright if level == "bright" else spec.positive)
        if cut is None or level not in ("", "bright"):
            raise GatingError(f"template {self.id}", f"has no cut named {name!r}")
        return cut

    def with_options(self, overrides: Mapping[str, Mapping[str, Any]]) -> Template:
        """This template with some gates' options set otherwise (population id → option →
        value, e.g. ``{"cells": {"start": "anchors"}}``), each gate's options read again
        through the loader's checks (defaults filled in, kinds and cross-checks); the
        result's ``sha256`` covers the overlay. No overrides: this template itself. A
        population that is not a gate of this template, or an unknown or ill-typed option,
        raises :class:`OptionsError` naming the population and option and what is allowed."""
        if not overrides:
            return self
        specs = {spec.id: spec for spec in self.populations}
        order = {spec.id: i for i, spec in enumerate(self.populations)}
        gates = ", ".join(spec.id for spec in self.populations if spec.gate) or "none"
        changed: dict[str, PopulationSpec] = {}
        for pop_id, given in overrides.items():
            spec = specs.get(str(pop_id))
            if spec is None:
                raise OptionsError(
                    self, str(pop_id), "", f"template {self.id} has no population {pop_id!r} "
                    f"(its gates: {gates})"
                )  # fmt: skip
            if spec.gate is None:
                kind = "a boolean" if spec.boolean else "a phenotype"
                raise OptionsError(
                    self, spec.id, "", f"{spec.id!r} is {kind}, not a gate: only a gate's "
                    f"placement method takes options (gates of template {self.id}: {gates})"
                )  # fmt: skip
            if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
                raise OptionsError(self, spec.id, "", "options must map option names to values")
            reader = _OverlayReader(self, spec.id)
            written = {**spec.written, **given}
            options = reader.gate_options(str(spec.gate), written, spec.id)
            for name in inputs_of(GATE_OPTIONS[str(spec.gate)]):
                source = getattr(options, name)
                if source not in order or order[source] >= order[spec.id]:
                    raise reader.error(
                        f"{spec.id}.{name}",
                        f"{name} {source!r} must name a population defined above {spec.id!r}",
                    )
            changed[spec.id] = replace(spec, options=options, written=written)
        overlay = json.dumps(
            {str(k): dict(v) for k, v in overrides.items()}, sort_keys=True, default=str
        )
        digest = hashlib.sha256(f"{self.sha256}\0{overlay}".encode()).hexdigest()
        populations = tuple(changed.get(spec.id, spec) for spec in self.populations)
        return replace(self, populations=populations, sha256=digest)


class OptionsError(GatingError):
    """Options set on a template's gate from outside it (a panel's ``gate_options``) that do
    not fit it: ``population`` and ``option`` (``""``: the population itself) say where."""

    def __init__(self, template: Template, population: str, option: str, problem: str) -> None:
        self.population, self.option = population, option
        where = f"{population}.{option}" if option else population
        super().__init__(f"template {template.source} options for {where}", problem)


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
     "valley_side", "smoothing"}
)  # fmt: skip
POPULATION_FIELDS = frozenset({"id", "parent", "phenotype", "gate", "exclude", "boolean"})


class _Reader(YamlPlaces):
    def error(self, key: str, problem: str) -> GatingError:
        return GatingError(self.where(key), problem)

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
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)  # a fixed cut, as a plain number
            return CutSpec(("fixed",), Bounds(value, value, value))
        if not isinstance(raw, dict):
            raise self.error(
                key, "a threshold is a number (a fixed cut) or a mapping (method, bounds, default)"
            )
        unknown = sorted(set(map(str, raw)) - CUT_FIELDS - {"marker"})
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
            smoothing=self.number(raw, "smoothing", key, 1.0),
        )

    def options(self, cls: type, raw: dict[str, Any], key: str, what: str) -> Any:
        """A method's typed options from the template's mapping (defaults filled in)."""
        options, problem = read_options(cls, raw)
        if problem:
            joiner = " " if problem[1].startswith("has ") else ": "
            raise self.error(f"{key}.{problem[0]}", f"{what}{joiner}{problem[1]}")
        return options

    def gate_options(self, gate: str, options: dict[str, Any], key: str) -> Any:
        """Shape-gate options: known names of the right kind, dead-cell CD45 splits, and
        scatter clusters as name: [FSC-A, SSC-A]."""
        unknown = sorted(set(options) - {f.name for f in fields(GATE_OPTIONS[gate])})
        if unknown:
            self.options(GATE_OPTIONS[gate], options, key, f"gate {gate}")  # names what is allowed
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
        for name in REQUIRED.get(gate, ()):
            if name not in options:
                raise self.error(key, f"gate {gate} needs {name!r}")
        typed = self.options(GATE_OPTIONS[gate], options, key, f"gate {gate}")
        sized = [n for n in ("vertices", "min", "max") if getattr(typed, n, ())]
        for name in sized:
            if name != "vertices" and len(getattr(typed, name)) != len(typed.channels):
                raise self.error(f"{key}.{name}", f"{name} needs one number per channel")
        return typed


class _OverlayReader(_Reader):
    """The loader's checks of one gate's options, their problems as :class:`OptionsError`."""

    def __init__(self, template: Template, population: str) -> None:
        super().__init__(template.source, {})
        self.template, self.population = template, population

    def error(self, key: str, problem: str) -> GatingError:
        option = key.removeprefix(self.population).lstrip(".")
        return OptionsError(self.template, self.population, option, problem)


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
        from cartflow.gating.transforms import Logicle

        values = {"T": 262_144.0, "W": 0.5, "M": 4.5, "A": 0.0} | {
            k: float(v) for k, v in params.items()
        }
        Logicle(t=values["T"], w=values["W"], m=values["M"], a=values["A"])
    except (TypeError, ValueError) as exc:
        raise reader.error("transform", f"logicle parameters: {exc}") from None
    except GatingError as exc:
        raise reader.error("transform", exc.problem) from None
    return {"type": kind, **params}


def _channel_transforms(raw: Any, reader: _Reader) -> dict[str, dict]:
    """Per marker or channel scales: ``FSC-A: linear`` or ``CD3: {type: asinh, T: 1e5}``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise reader.error("transforms", "transforms must map markers or channels to a scale")
    from cartflow.gating.transforms import Fasinh, Hyperlog, Logicle

    made = {"logicle": Logicle, "biex": Hyperlog, "asinh": Fasinh}
    found = {}
    for name, entry in raw.items():
        key = f"transforms.{name}"
        entry = {"type": entry} if isinstance(entry, str) else entry
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in TRANSFORMS:
            raise reader.error(key, f"{name}: scale must be one of {', '.join(TRANSFORMS)}")
        params = {k: v for k, v in entry.items() if k != "type"}
        unknown = sorted(set(params) - set(TRANSFORM_DEFAULTS[kind]))
        if unknown:
            allowed = ", ".join(TRANSFORM_DEFAULTS[kind]) or "none"
            raise reader.error(key, f"{name}: {kind} has no parameter {unknown[0]!r} ({allowed})")
        try:
            values = TRANSFORM_DEFAULTS[kind] | {k: float(v) for k, v in params.items()}
            if kind in made:
                made[kind](**{k.lower(): v for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise reader.error(key, f"{name}: {kind} parameters: {exc}") from None
        except GatingError as exc:
            raise reader.error(key, f"{name}: {exc.problem}") from None
        found[str(name)] = {"type": kind, **values}
    return found


_BOOLEAN_SPLIT = re.compile(r"\s+(and|or)\s+")


def _boolean(
    text: Any, pop_id: str, parent: str | None, key: str, parents: dict[str, str | None],
    reader: _Reader,
) -> tuple[str, tuple[tuple[bool, str], ...]]:
    """``"CD4 T or CD8 T"``, ``"T and not CAR"``, ``"not beads"``: one operator kind, each
    operand a population defined above under the same parent (as Gating-ML and FlowJo
    read booleans), optionally preceded by ``not``."""  # fmt: skip
    if not isinstance(text, str) or not text.strip():
        raise reader.error(f"{key}.boolean", f"{pop_id}: boolean must be text like 'A and not B'")
    parts = _BOOLEAN_SPLIT.split(text.strip())
    operands, operators = parts[::2], set(parts[1::2])
    if len(operators) > 1:
        raise reader.error(
            f"{key}.boolean", f"{pop_id}: use either 'and' or 'or' in one boolean, not both"
        )
    terms = []
    for operand in operands:
        negated = operand.startswith("not ")
        name = operand.removeprefix("not ").strip()
        if name not in parents:
            raise reader.error(
                f"{key}.boolean", f"{pop_id}: {name!r} is not a population defined above"
            )
        if parents[name] != parent:
            raise reader.error(
                f"{key}.boolean",
                f"{pop_id}: {name!r} is not under {parent!r}; a boolean combines populations "
                "under its own parent",
            )
        terms.append((negated, name))
    if len(terms) == 1 and not terms[0][0]:
        raise reader.error(
            f"{key}.boolean", f"{pop_id}: a boolean combines two populations or negates one"
        )
    return (operators.pop() if operators else "and"), tuple(terms)


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
    for name, spec in raw.items():
        key = f"thresholds.{name}"
        if not isinstance(name, str) or not _CONDITION.match(f"{name}+"):
            raise reader.error(
                key, f"{name!r} is not a cut name (a marker or channel name, no spaces or '+')"
            )
        positive = reader.cut(spec, key)
        marker = spec.get("marker", name) if isinstance(spec, dict) else name
        if not isinstance(marker, str) or not _CONDITION.match(f"{marker}+"):
            raise reader.error(f"{key}.marker", f"marker {marker!r} is not a marker name")
        bright = None
        if isinstance(spec, dict) and "bright" in spec:
            if not isinstance(spec["bright"], dict):
                raise reader.error(f"{key}.bright", "a bright cut must be a mapping")
            bright_raw = {"estimate_on": spec.get("estimate_on"), **spec["bright"]}
            bright = reader.cut(bright_raw, f"{key}.bright")
        thresholds[name] = ThresholdSpec(name, positive, bright, marker)
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
) -> CoreOptions | None:
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
    return None if core is None else reader.options(CoreOptions, options, key, pop_id)


def _populations(
    entries: list, thresholds: dict[str, ThresholdSpec], reader: _Reader
) -> list[PopulationSpec]:
    """The population list in order: each parent defined above its children."""
    populations: list[PopulationSpec] = []
    known: set[str] = set()
    parents: dict[str, str | None] = {}
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
        if has_phenotype + (gate is not None) + ("boolean" in entry) != 1:
            raise reader.error(
                key, f"{pop_id!r} needs exactly one of 'phenotype', 'gate' or 'boolean'"
            )
        if "boolean" in entry:
            extra = sorted(set(entry) - {"id", "parent", "boolean"})
            if extra:
                raise reader.error(f"{key}.{extra[0]}", f"{pop_id}: unknown field {extra[0]!r}")
            boolean = _boolean(entry["boolean"], pop_id, parent, key, parents, reader)
            populations.append(
                PopulationSpec(pop_id, parent, boolean=boolean, line=reader.lines.get(key, 0))
            )
            known.add(pop_id)
            parents[pop_id] = parent
            continue
        if gate is not None and gate not in SHAPE_GATES:
            raise reader.error(key, f"gate {gate!r} is not one of {', '.join(SHAPE_GATES)}")
        raw = {k: v for k, v in entry.items() if k not in POPULATION_FIELDS}
        exclude = entry.get("exclude")
        if exclude is not None and exclude not in known:
            raise reader.error(
                f"{key}.exclude", f"{pop_id}: excluded population {exclude!r} is not defined above"
            )
        phenotype: tuple[Condition, ...] = ()
        if has_phenotype:
            extra = set(raw) - {f.name for f in fields(CoreOptions)}
            if extra:
                name = sorted(extra)[0]
                raise reader.error(f"{key}.{name}", f"{pop_id}: unknown field {name!r}")
            phenotype = _phenotype(entry, pop_id, key, thresholds, reader)
            options = _core_options(raw, pop_id, key, thresholds, reader)
        else:
            options = reader.gate_options(str(gate), raw, key)
            for name in inputs_of(GATE_OPTIONS[str(gate)]):
                if getattr(options, name) not in known:
                    raise reader.error(
                        f"{key}.{name}",
                        f"{pop_id}: {name} {getattr(options, name)!r} must name a population "
                        "defined above it",
                    )
        populations.append(
            PopulationSpec(
                pop_id, parent, phenotype, gate, options, reader.lines.get(key, 0), exclude,
                written=raw if gate is not None else {},
            )
        )
        known.add(pop_id)
        parents[pop_id] = parent
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
    reader = _Reader(path, yaml_node_lines(node))
    raw.setdefault("thresholds", {})
    for key in ("id", "tube", "populations"):
        if key not in raw:
            raise reader.error("", f"missing field {key!r}")
    try:
        version = int(raw.get("version", 1))
    except (TypeError, ValueError):
        raise reader.error("version", f"version {raw.get('version')!r} is not a number") from None
    transform = _transform(raw.get("transform"), reader)
    transforms = _channel_transforms(raw.get("transforms"), reader)
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
        transforms=transforms,
    )
