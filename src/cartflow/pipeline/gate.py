"""Gating stage: one FCS file → its panel's template placed on its data → counts and evidence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cartflow.gating.auto import PlacedGating, place_evaluated
from cartflow.gating.engine import Evaluator, GatingResult
from cartflow.gating.model import FCS_SPILL, Dimension, GateSet
from cartflow.gating.placement import ThresholdDecision
from cartflow.gating.placer import FLUOR, ChannelMap, scales_for, transforms_for
from cartflow.gating.template import OptionsError, Template, load_template
from cartflow.io.errors import CartflowError
from cartflow.io.fcs import FcsFile, Spillover, read_fcs, read_spillover
from cartflow.panels import PANEL_DIR, Panel, load_panels, match_panel
from cartflow.panels.identity_rules import IdentityRules
from cartflow.pipeline.identity import identify
from cartflow.pipeline.records import GateRecord, PopulationRecord

if TYPE_CHECKING:
    from cartflow.panels.config import LabConfig

TEMPLATE_DIR = PANEL_DIR / "templates"


class GateStageError(CartflowError):
    code = "gating"


@dataclass(frozen=True)
class SampleGating:
    """A gated sample: the file, its panel, the placed gates and the per-population result."""

    fcs: FcsFile
    panel: Panel
    template: Template
    placed: PlacedGating
    result: GatingResult
    spillover: Spillover | None = None
    """The matrix the sample was compensated with (the file's own or an override)."""
    evaluator: Evaluator | None = field(default=None, repr=False, compare=False)
    """The evaluator that gated the sample (its columns and cut sides), for its plots."""

    def panel_markers(self) -> dict[str, str]:
        """Marker → detector of the sample's panel."""
        return {c.marker: c.channel for c in self.panel.channels}

    @cached_property
    def _evaluator(self) -> Evaluator:
        spill = self.spillover
        matrix = (list(spill.channels), spill.matrix) if spill else None
        fcs = self.fcs
        return Evaluator(transforms_for(self.template), {}, fcs.events, fcs.channel_names, matrix)

    def marker_values(self, marker: str) -> np.ndarray:
        """A marker's compensated values (or a channel's, ``FSC-A``) on the template's scale
        for it, for every event."""
        scales = scales_for(self.template)
        channel = self.panel_markers().get(marker)
        if channel is None:
            axis = Dimension(marker, None, scales.get(marker))
        else:
            axis = Dimension(channel, FCS_SPILL, scales.get(marker, FLUOR))
        return self._evaluator.values(axis, None)

    def counts(self) -> dict[str, int]:
        return {p: self.result.count(p) for p in self.placed.populations}

    def parent_counts(self) -> dict[str, int | None]:
        return {
            p: (self.result.count(parent) if parent else self.result.event_count)
            for p, parent in self.placed.parents.items()
        }


@cache
def template_for(tube: str, directory: Path = TEMPLATE_DIR) -> Template:
    """The default template of a tube (``panels/templates/<tube>.yaml``), read once."""
    path = directory / f"{tube}.yaml"
    if not path.is_file():
        raise GateStageError(path, f"no gating template for tube {tube!r}")
    return load_template(path)


def channel_map(panel: Panel, fcs: FcsFile) -> ChannelMap:
    """Marker → detector from the panel; every compensated detector for the bead gate."""
    fluorescence = (
        tuple(fcs.spillover.channels) if fcs.spillover else tuple(c.channel for c in panel.channels)
    )
    return ChannelMap(
        markers={c.marker: c.channel for c in panel.channels},
        fluorescence=fluorescence,
        fsc_area=panel.scatter[0],
        fsc_height=panel.scatter[1],
        ssc_area=panel.scatter[2],
        time=panel.time or "",  # no time channel: the stable-flow gate is skipped
    )


def gate_fcs(
    fcs: FcsFile,
    panel: Panel,
    template: Template | None = None,
    fixed_cuts: Mapping[str, float | ThresholdDecision] | None = None,
    spillover: Spillover | None = None,
    config: LabConfig | None = None,
) -> SampleGating:
    """Place the template on one read file (events scaled, not yet compensated); cuts named
    in ``fixed_cuts`` (a value or a decision, e.g. pooled) are used as given, and
    ``spillover`` replaces the file's own matrix (flagged). Without a template, the tube's
    template of ``config`` (default: the shipped configuration) is used; the panel's
    ``gate_options`` (its cytometer's settings) are set over the template's own, and the
    gating's ``template`` is the template so placed."""
    if template is None:
        template = config.template(panel.tube) if config else template_for(panel.tube)
    template = with_panel_options(template, panel)
    missing = [
        m for m in template.markers
        if m not in panel.markers and m not in panel.omitted and m not in fcs.channel_names
    ]  # fmt: skip
    if missing:
        raise GateStageError(
            fcs.path,
            f"template {template.id} needs marker(s) {', '.join(missing)} "
            f"that panel {panel.id} does not carry",
        )
    if fcs.events is None or fcs.events.shape[0] == 0:
        raise GateStageError(fcs.path, "the file holds no events")
    if spillover is not None:
        absent = [c for c in spillover.channels if c not in fcs.channel_names]
        if absent:
            raise GateStageError(
                fcs.path,
                f"spillover {spillover.keyword} names detectors not in the file: "
                + ", ".join(absent),
            )
    matrix = spillover or fcs.spillover
    if matrix is None and fcs.spillover_problem:
        raise GateStageError(
            fcs.path,
            f"its spillover matrix is present but unreadable ({fcs.spillover_problem}); "
            "give the lab's matrix with --spillover",
        )
    spill = (list(matrix.channels), matrix.matrix) if matrix else None
    events = fcs.events
    placed, result, evaluator = place_evaluated(
        template, events, fcs.channel_names, channel_map(panel, fcs), spill, fixed_cuts
    )
    if spill is None:
        placed = _with_flag(placed, "no_spillover_matrix")
    elif spillover is not None:
        placed = _with_flag(placed, f"spillover_{spillover.keyword}")
    return SampleGating(fcs, panel, template, placed, result, matrix, evaluator)


def with_panel_options(template: Template, panel: Panel) -> Template:
    """The template as the panel's cytometer places it (its ``gate_options`` set over the
    template's own); options that do not fit the template are a :class:`GateStageError`
    naming the panel file and line."""
    from cartflow.panels.config import options_error

    try:
        return template.with_options(panel.gate_options)
    except OptionsError as exc:
        problem = options_error(panel, template, exc)
        raise GateStageError(problem.source, problem.problem) from None


def _with_flag(placed: PlacedGating, flag: str) -> PlacedGating:
    from dataclasses import replace

    return replace(placed, flags=(*placed.flags, flag))


def gate_file(
    path: Path,
    template: Template | None = None,
    tube: str | None = None,
    panels: tuple[Panel, ...] | None = None,
    fixed_cuts: Mapping[str, float | ThresholdDecision] | None = None,
    spillover: Spillover | None = None,
    config: LabConfig | None = None,
    panel: Panel | None = None,
) -> SampleGating:
    """Read, match the panel and gate one FCS file (``fixed_cuts`` and ``spillover`` as in
    :func:`gate_fcs`). Panels, marker names, templates and identity rules come from
    ``config`` (default: the shipped configuration); a panel naming a spillover matrix is
    compensated with it unless ``spillover`` is given. A ``panel`` given (the one the file
    was matched to at ingest, as the configuration holds it now) is used as it is: the
    file is not matched again."""
    fcs = read_fcs(path)
    if panel is None:
        pairs = [(c.name, c.marker) for c in fcs.channels]
        tube = tube or (template.tube if template else None) or _tube_of(path, fcs, config)
        if panels is None:
            panels = config.panels if config else load_panels()
        names = config.names if config else None
        panel = match_panel(path, pairs, panels, tube, names).panel
    if spillover is None and config is not None and panel.spillover:
        spillover = read_spillover(config.spillover_path(panel))
    return gate_fcs(fcs, panel, template, fixed_cuts, spillover, config)


def _tube_of(path: Path, fcs: FcsFile, config: LabConfig | None = None) -> str | None:
    """The tube the file's keywords or name give, as ingest would read it (None if neither)."""
    rules = config.identity if config else IdentityRules()
    try:
        return identify(path, fcs.text, rules=rules).tube
    except CartflowError:  # no patient or timepoint to be found: the tube may still be
        return None


def compact_evidence(value, points: int = 128):
    """JSON-safe evidence: arrays thinned to ``points`` values and rounded."""
    if isinstance(value, np.ndarray):
        step = max(1, value.size // points)
        return [round(float(v), 5) for v in value[::step]]
    if isinstance(value, dict):
        return {str(k): compact_evidence(v, points) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact_evidence(v, points) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def cut_bounds(template: Template, name: str) -> dict[str, list[float] | float]:
    """Where the template lets a cut land and its default ({} for a shape gate's decision)."""
    from cartflow.gating.errors import GatingError

    try:
        bounds = template.cut(name).bounds
    except GatingError:
        return {}
    return {"bounds": [bounds.low, bounds.high], "default": bounds.default}


def gate_records(gated: SampleGating) -> tuple[list[PopulationRecord], list[GateRecord]]:
    """Store rows for a gated sample: counts per population, each decision with evidence."""
    counts, parents = gated.counts(), gated.parent_counts()
    populations = [
        PopulationRecord(p, gated.placed.parents[p], counts[p], parents[p])
        for p in gated.placed.populations
    ]
    gates = [
        GateRecord(
            gate=name,
            method=d.method,
            value=float(d.value),
            fallback=d.fallback,
            evidence=compact_evidence(
                {
                    "reason": d.reason,
                    "events": d.events,
                    **cut_bounds(gated.template, name),
                    **d.evidence,
                }
            ),
        )
        for name, d in gated.placed.decisions.items()
    ]
    for population, reason in gated.placed.skipped.items():
        gates.append(GateRecord(population, "skipped", None, False, {"reason": reason}))
    for population, note in gated.placed.approximations.items():
        gates.append(
            GateRecord(f"{population}.phenotype", "approximated", None, False, {"note": note})
        )
    return populations, gates


def membership_table(gated: SampleGating):
    """One boolean column per population, one row per event in file order."""
    import pandas as pd

    return pd.DataFrame(
        {p: np.asarray(gated.result.mask(p)) for p in gated.placed.populations}, copy=False
    )


@dataclass(frozen=True)
class LabGating:
    """A lab's fixed gates used as the gating of a tube: the file and its SHA-256, which
    stand where a template's id and hash stand in the store."""

    path: Path
    sha256: str

    @property
    def id(self) -> str:
        """How the store names this gating (``lab:<file name>``)."""
        return f"lab:{self.path.name}"

    def load(self):
        """The lab's gates (read once per process)."""
        return _lab_gates(self.path, self.sha256)


def lab_gating(path: Path) -> LabGating:
    """A lab's gates file, checked to be readable now (a :class:`CartflowError` if not)."""
    import hashlib

    file = path
    if not path.exists() and "#" in path.name:  # lab.wsp#GROUP: a workspace's sample group
        file = Path(str(path).rpartition("#")[0])
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as exc:
        raise GateStageError(file, f"cannot be read: {exc.strerror or exc}") from exc
    gating = LabGating(path, digest)
    gating.load()
    return gating


@cache
def _lab_gates(path: Path, sha256: str):
    del sha256  # part of the cache key: a changed file is read again
    return load_fixed_gates(path)


def lab_gate_records(
    gating: LabGating, fcs: FcsFile, gate_set: GateSet, result: GatingResult
) -> tuple[list[PopulationRecord], list[GateRecord]]:
    """Store rows for a sample gated with a lab's fixed gates: counts per population, and
    per gate where it came from (the lab's file, its sample, the lab software's own count)."""
    lab = gating.load()
    sample = lab.match(fcs.path.name, fcs.keyword("$FIL"), fcs.event_count)
    stored = sample.stored_counts()
    populations = [
        PopulationRecord(
            p,
            result.parents[p],
            result.count(p),
            result.count(result.parents[p]) if result.parents[p] else result.event_count,
        )
        for p in result.populations
    ]
    gates = [
        GateRecord(
            gate=p,
            method="fixed",
            value=None,
            fallback=False,
            evidence={
                "source": str(gating.path),
                "sha256": gating.sha256,
                "sample": sample.name,
                "gate": type(result.diagnostics[p].gate).__name__,
                "lab_count": stored.get(p),
            },
        )
        for p in result.populations
    ]
    return populations, gates


def load_fixed_gates(path: Path):
    """A lab's fixed gates: Gating-ML 2.0 or a FlowJo 10 workspace (told apart by content);
    ``gates_for`` gives the gates of one data file."""
    from cartflow.gating.workspace import load_lab_gates

    return load_lab_gates(path)


def fixed_gates_for(lab_gates, fcs: FcsFile) -> GateSet:
    """The lab's gates for one read file: its workspace sample, matched by name, $FIL or
    event count."""
    return lab_gates.gates_for(fcs.path.name, fcs.keyword("$FIL"), fcs.event_count)


def gate_fixed(
    path: Path, lab_gates, fcs: FcsFile | None = None
) -> tuple[FcsFile, GateSet, GatingResult]:
    """Apply a lab's fixed gates to one file (no placement): Gating-ML semantics, 'FCS'
    compensation from the file's own spillover matrix."""
    from cartflow.gating.engine import evaluate

    fcs = fcs or read_fcs(path)
    gate_set = fixed_gates_for(lab_gates, fcs)
    spill = (list(fcs.spillover.channels), fcs.spillover.matrix) if fcs.spillover else None
    return fcs, gate_set, evaluate(gate_set, fcs.events, fcs.channel_names, spill)
