"""Pooled cuts: one threshold estimated from the events of several samples (openCyto's groupBy),
e.g. every timepoint of a patient, then given to each sample's gating as a fixed cut.

Each file is gated once on its own; the values a cut is estimated on (the cut's marker on its
estimation population, above the positive cut for a bright cut) are taken from every file, at
most ``per_file`` evenly spaced events each so that no sample outweighs the others, and the
template's methods place the cut on the pool. The decision keeps its evidence and names the
files it was pooled over; ``gate_file(..., fixed_cuts=cuts)`` then uses it as given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cartflow.gating.auto import METHODS, place_cut, place_pooled
from cartflow.gating.method import PART, Placement
from cartflow.gating.model import FCS_SPILL, Dimension
from cartflow.gating.placement import ThresholdDecision
from cartflow.gating.placer import ESTIMATE_LIMIT
from cartflow.gating.template import Template
from cartflow.io.errors import CartflowError
from cartflow.io.outputs import write_text
from cartflow.panels.config import LabConfig
from cartflow.pipeline.gate import (
    GateStageError,
    SampleGating,
    channel_map,
    compact_evidence,
    gate_file,
)


def _thin(values: np.ndarray, limit: int) -> np.ndarray:
    return values if values.size <= limit else values[:: math.ceil(values.size / limit)]


def cut_values(gated: SampleGating, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The transformed values one sample's cut ``name`` was estimated on, and the values of
    its internal negative population when the cut has one."""
    cut = gated.template.cut(name)
    level = "bright" if name.endswith(".bright") else ""
    named = name.removesuffix(".bright")
    marker = gated.template.thresholds[named].marker
    decision = gated.placed.decisions.get(name)
    if decision is None:
        raise GateStageError(gated.fcs.path, f"no cut {name!r} was placed on this sample")
    values = gated.marker_values(marker)

    def on(population: str | None) -> np.ndarray:
        if population is None or population not in gated.placed.populations:
            return np.empty(0, dtype=values.dtype)
        return values[np.asarray(gated.result.mask(population))]

    gated_chain = [p for p in cut.estimate_chain if p in gated.placed.populations]
    population = decision.evidence.get("estimated_on") or next(iter(gated_chain), None)
    estimated = on(population)
    if level == "bright":
        positive = gated.placed.decisions[named].value
        estimated = estimated[estimated >= positive]
    negatives = on(cut.negative) if cut.negative else None
    return estimated, negatives


def pool_cuts(
    paths: Sequence[Path],
    names: Sequence[str],
    template: Template | None = None,
    tube: str | None = None,
    per_file: int = ESTIMATE_LIMIT,
    config: LabConfig | None = None,
) -> dict[str, ThresholdDecision]:
    """One decision per cut name from the pooled events of ``paths`` (all gated with the same
    template); raises a CartflowError naming the file that does not fit."""
    if not paths:
        raise CartflowError("pool", "no files to pool over")
    gated = [gate_file(Path(p), template=template, tube=tube, config=config) for p in paths]
    first = gated[0].template
    for name in names:
        first.cut(name)  # an unknown cut name fails before anything is pooled
    for sample in gated[1:]:
        if sample.template.sha256 != first.sha256:  # as placed: its panel's options set over it
            raise GateStageError(
                sample.fcs.path,
                f"is gated with template {sample.template.id} as panel {sample.panel.id} sets "
                f"it, not {first.id} as panel {gated[0].panel.id} does for "
                f"{gated[0].fcs.path.name}: cuts are pooled within one template and its options",
            )
    cuts: dict[str, ThresholdDecision] = {}
    for name in names:
        parts = [cut_values(sample, name) for sample in gated]
        values = np.concatenate([_thin(v, per_file) for v, _ in parts])
        negatives = (
            np.concatenate([_thin(n, per_file) for _, n in parts])
            if all(n is not None for _, n in parts)
            else None
        )
        decision = place_cut(first, name, values, negatives)
        decision.evidence.update(
            pooled_over=[s.fcs.path.name for s in gated],
            pooled_events=[int(min(v.size, per_file)) for v, _ in parts],
            per_sample_cuts=[float(s.placed.decisions[name].value) for s in gated],
        )
        cuts[name] = decision
    return cuts


def _parent_events(gated: SampleGating, population: str) -> tuple[np.ndarray, list[str]]:
    """The events a gate's method reads on one sample: its parent's (less what it excludes),
    fluorescence detectors compensated with the sample's own matrix, every channel."""
    spec = gated.template.population(population)
    helper = f"{population}{PART}events"
    where = helper if helper in gated.result.populations else spec.parent
    mask = (
        np.ones(gated.result.event_count, dtype=bool)
        if where is None
        else np.asarray(gated.result.mask(where), dtype=bool)
    )
    detectors = set(gated.spillover.channels) if gated.spillover else set()
    names = list(gated.fcs.channel_names)
    columns = []
    for j, name in enumerate(names):
        if name in detectors:
            columns.append(gated._evaluator.values(Dimension(name, FCS_SPILL), None)[mask])
        else:
            columns.append(np.asarray(gated.fcs.events[:, j], dtype=np.float64)[mask])
    return np.column_stack(columns), names


def pool_gates(
    paths: Sequence[Path],
    populations: Sequence[str],
    template: Template | None = None,
    tube: str | None = None,
    per_file: int = ESTIMATE_LIMIT,
    config: LabConfig | None = None,
) -> dict[str, Placement]:
    """One placement per gate (``cells``, ``lymphocytes``, a ``cluster`` gate …) from the
    pooled parent events of ``paths``, each sample's detectors compensated with its own
    matrix; ``gate_file(..., fixed_cuts=placements)`` puts the same gates under each
    sample's parent. A gate reading another's fit (``scatter: cells``) needs that one
    pooled too, listed before it."""
    if not paths:
        raise CartflowError("pool", "no files to pool over")
    gated = [gate_file(Path(p), template=template, tube=tube, config=config) for p in paths]
    first = gated[0]
    names = list(first.fcs.channel_names)
    for sample in gated[1:]:
        same_layout = list(sample.fcs.channel_names) == names
        if sample.template.sha256 != first.template.sha256 or not same_layout:
            raise GateStageError(
                sample.fcs.path,
                f"differs from {first.fcs.path.name} in template (or the options its panel "
                "sets over it) or channels: gates are pooled within one template and one "
                "channel layout",
            )
    placements: dict[str, Placement] = {}
    for population in populations:
        spec = first.template.population(population)
        if spec.gate is None:
            raise CartflowError("pool", f"{population!r} is a phenotype, not a gate: pool its cuts")
        inputs = {}
        for option in METHODS[spec.gate].inputs:
            source = getattr(spec.options, option)
            if source not in placements:
                raise CartflowError("pool", f"{population!r} reads {source!r}: pool it first")
            inputs[option] = placements[source].fit
        parts = [_parent_events(sample, population) for sample in gated]
        events = np.concatenate([_thin_rows(e, per_file) for e, _ in parts])
        detectors = list(first.spillover.channels) if first.spillover else []
        spill = (detectors, np.eye(len(detectors))) if detectors else None
        channels = channel_map(first.panel, first.fcs)
        placement = place_pooled(first.template, population, events, names, channels, spill, inputs)
        for _, decision in placement.decisions:
            decision.evidence.update(
                pooled_over=[s.fcs.path.name for s in gated],
                pooled_events=[int(min(len(e), per_file)) for e, _ in parts],
            )
        placements[population] = placement
    return placements


def _thin_rows(rows: np.ndarray, limit: int) -> np.ndarray:
    return rows if len(rows) <= limit else rows[:: math.ceil(len(rows) / limit)]


def write_cuts(cuts: dict[str, ThresholdDecision], path: Path) -> None:
    """Pooled cuts as JSON (value, method, fallback, reason, events and compact evidence)."""
    payload = {
        name: {**asdict(d), "evidence": compact_evidence(d.evidence)} for name, d in cuts.items()
    }
    write_text(path, json.dumps(payload, indent=2))


def read_cuts(path: Path) -> dict[str, ThresholdDecision]:
    """Cuts written by :func:`write_cuts` (or by hand: ``{"CAR": {"value": 0.41}}``)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CartflowError(path, f"cannot be read as a cuts file: {exc}") from None
    if not isinstance(raw, dict):
        raise CartflowError(path, "a cuts file is a JSON object of cut name → cut")
    cuts = {}
    for name, entry in raw.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise CartflowError(path, f"cut {name!r} needs a finite number 'value'")
        evidence, events = entry.get("evidence") or {}, entry.get("events") or 0
        if not isinstance(evidence, dict):
            raise CartflowError(path, f"cut {name!r}: 'evidence' must be an object")
        if not isinstance(events, int) or isinstance(events, bool) or events < 0:
            raise CartflowError(path, f"cut {name!r}: 'events' must be a whole number")
        evidence = dict(evidence, source=str(path.name))
        cuts[str(name)] = ThresholdDecision(float(value), "fixed", False, None, events, evidence)
    return cuts
