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

from gating.auto import place_cut
from gating.placement import ThresholdDecision
from gating.placer import ESTIMATE_LIMIT
from gating.template import Template
from pipeline.config import LabConfig
from pipeline.errors import CartflowError
from pipeline.gate import GateStageError, SampleGating, compact_evidence, gate_file


def _thin(values: np.ndarray, limit: int) -> np.ndarray:
    return values if values.size <= limit else values[:: math.ceil(values.size / limit)]


def cut_values(gated: SampleGating, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The transformed values one sample's cut ``name`` was estimated on, and the values of
    its internal negative population when the cut has one."""
    marker = name.removesuffix(".bright")
    cut = gated.template.cut(name)
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
    if name.endswith(".bright"):
        positive = gated.placed.decisions[marker].value
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
        if sample.template.sha256 != first.sha256:
            raise GateStageError(
                sample.fcs.path,
                f"is gated with template {sample.template.id}, not {first.id} like "
                f"{gated[0].fcs.path.name}: cuts are pooled within one template",
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


def write_cuts(cuts: dict[str, ThresholdDecision], path: Path) -> None:
    """Pooled cuts as JSON (value, method, fallback, reason, events and compact evidence)."""
    payload = {
        name: {**asdict(d), "evidence": compact_evidence(d.evidence)} for name, d in cuts.items()
    }
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


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
