"""A loaded template: its populations and cuts, and the same template with gates' options
set from outside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cartflow.gating.errors import GatingError
from cartflow.gating.options import GATE_OPTIONS, inputs_of
from cartflow.gating.template.reader import _Reader
from cartflow.gating.template.spec import CutSpec, PopulationSpec, ThresholdSpec


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


class _OverlayReader(_Reader):
    """The loader's checks of one gate's options, their problems as :class:`OptionsError`."""

    def __init__(self, template: Template, population: str) -> None:
        super().__init__(template.source, {})
        self.template, self.population = template, population

    def error(self, key: str, problem: str) -> GatingError:
        option = key.removeprefix(self.population).lstrip(".")
        return OptionsError(self.template, self.population, option, problem)
