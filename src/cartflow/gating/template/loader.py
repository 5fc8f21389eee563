"""Declarative gating templates: populations with a parent and a phenotype or a shape gate.

A template is YAML a cytometrist can read (see ``panels/templates/``). Phenotypes are written
``CD3+ CAR+ CD8+ CD4- CD45RA+ CD62L+ CD27++ CD95+``: ``+`` at or above the marker's positive
cut, ``-`` below it, ``++`` at or above its bright cut, ``dim`` between the two. Every
threshold names how it is placed from data, on which population, within which bounds, and its
default. Problems are reported at load time with the file, line and reason. This module
reads the YAML file into a :class:`~cartflow.gating.template.model.Template`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from cartflow.gating.errors import GatingError
from cartflow.gating.options import GATE_OPTIONS, CoreOptions, inputs_of
from cartflow.gating.template.model import Template
from cartflow.gating.template.reader import _Reader
from cartflow.gating.template.spec import (
    _CONDITION,
    PART_SEPARATOR,
    SHAPE_GATES,
    TRANSFORM_DEFAULTS,
    TRANSFORMS,
    Condition,
    PopulationSpec,
    ThresholdSpec,
    parse_phenotype,
)
from cartflow.io.errors import yaml_node_lines, yaml_problem


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
POPULATION_FIELDS = frozenset({"id", "parent", "phenotype", "gate", "exclude", "boolean"})


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
