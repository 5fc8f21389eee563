"""What a batch gates: the pending files with their hand-set corrections, and what gating one
produced, written by the process that owns the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cartflow.gating.placement import ThresholdDecision
from cartflow.io.errors import CartflowError
from cartflow.panels import Panel
from cartflow.panels.config import DEFAULT_CONFIG_DIR, LabConfig, load_config
from cartflow.pipeline.gate import LabGating, template_for
from cartflow.report.pages import plots_dir
from cartflow.store import GateRecord, PopulationRecord, Store, corrections_key


@dataclass(frozen=True)
class GateWork:
    """What gating one file produced, ready to be written by the process that owns the store."""

    path: Path
    sha256: str
    sample_id: int
    template_id: str
    template_sha256: str
    panel_sha256: str = ""
    """The tube's panels and marker names as gated (:meth:`LabConfig.panel_sha256`)."""
    populations: tuple[PopulationRecord, ...] = ()
    gates: tuple[GateRecord, ...] = ()
    flags: tuple[str, ...] = ()
    error: str | None = None
    flowjo: bytes | None = None
    """The sample's one-sample FlowJo workspace, for the batch workspace (when asked for)."""
    plots_drawn: bool = False
    """Whether the sample's report plots were drawn (not found already drawn)."""
    worker_died: bool = False  # the process gating it was killed (out of memory, …)
    corrections_key: str = ""
    """The sample's active corrections this gating applied (see :func:`sample_corrections`)."""


@dataclass(frozen=True)
class Override:
    """A hand-set cut of a sample: its name, value and audit entry."""

    cut: str
    value: float
    correction_id: int
    by: str
    reason: str

    def decision(self) -> ThresholdDecision:
        evidence = {"source": "override", "correction": self.correction_id, "by": self.by,
                    "reason": self.reason}  # fmt: skip
        return ThresholdDecision(self.value, "fixed", False, None, 0, evidence)


@dataclass(frozen=True)
class FixedGates:
    """A lab's gate file (Gating-ML .xml or FlowJo .wsp) set on a sample by hand."""

    name: str
    content: str
    correction_id: int


@dataclass(frozen=True)
class PendingFile:
    path: Path
    sha256: str
    sample_id: int
    tube: str
    plots: Path | None = None
    """Folder of the report's sample plots, drawn while the file is in memory (None: none)."""
    config: LabConfig | None = None
    """The lab configuration to gate with (None: the shipped one)."""
    review: Path | None = None
    """Folder of the review exports (Gating-ML per sample), when asked for."""
    lab: LabGating | None = None
    """A lab's fixed gates that gate this file's tube instead of its template."""
    panel_sha256: str = ""
    """The tube's panels and marker names it is gated with ('' with a lab's fixed gates)."""
    corrections_key: str = ""
    overrides: tuple[Override, ...] = ()
    fixed_gates: FixedGates | None = None
    """Gates set on this sample by hand (they win over the tube's template or lab gates)."""
    panel: Panel | None = None
    """The panel the file was matched to at ingest, as the configuration holds it now (None:
    gone or changed since, so the file is matched again)."""


@dataclass(frozen=True)
class SampleCorrections:
    """What of a sample's active corrections its gating applies."""

    key: str = ""
    cuts: tuple[Override, ...] = ()
    gates: FixedGates | None = None


def sample_corrections(trail: Sequence[Mapping[str, Any]]) -> SampleCorrections:
    """From a sample's audit trail (oldest first): its corrections key, its active cut
    overrides (the newest of each cut) and its newest active fixed gates."""
    newest: dict[str, Override] = {}
    gates = None
    for c in trail:
        if c["active"] and c["action"] == "cut":
            newest[c["target"]] = Override(
                c["target"], float(c["new"]), c["id"], c["by"], c["reason"]
            )
        if c["active"] and c["action"] == "gates":
            gates = FixedGates(c["new"]["file"], c["new"]["content"], c["id"])
    return SampleCorrections(corrections_key(trail), tuple(newest.values()), gates)


def tube_template(tube: str, config: LabConfig | None):
    """The tube's template in the lab configuration (None: the shipped templates)."""
    return config.template(tube) if config else template_for(tube)


def pending_gating(
    store: Store,
    files: Sequence[tuple[Path, str]],
    report_dir: Path | None = None,
    config: LabConfig | None = None,
    review_dir: Path | None = None,
    lab_gates: Mapping[str, LabGating] | None = None,
) -> list[PendingFile]:
    """Stored samples among ``files`` (path, sha256) without counts from their current
    template and panel (with the folder of their plots when a report is wanted, and the
    review folder when review exports are); a tube in ``lab_gates`` is gated by the lab's
    gates. A changed panel of a tube, or a changed marker name resolving it, re-gates that
    tube's samples and no other. Each file is gated with the panel it was matched to at
    ingest, unless that panel is gone or changed since (then it is matched again)."""
    lab_gates = lab_gates or {}
    resolving = config if config is not None else load_config(DEFAULT_CONFIG_DIR)
    panel_shas: dict[str, str] = {}
    by_sha = {s.sha256: s for s in store.samples()}
    matched = store.sample_panels()
    trails: dict[int, list[dict[str, Any]]] = {}
    for entry in store.corrections():
        trails.setdefault(entry["sample_id"], []).append(entry)
    tried = store.gating_keys()
    panels_gated: dict[int, set[str]] = {}
    for sample_id, _, gated_panel_sha, _ in tried:
        panels_gated.setdefault(sample_id, set()).add(gated_panel_sha)
    pending = []
    for path, sha in files:
        sample = by_sha.get(sha)
        if sample is None:
            continue
        tube = sample.tube
        lab = lab_gates.get(tube)
        if lab is not None:
            panel_sha = ""
        elif tube not in panel_shas:
            panel_sha = panel_shas[tube] = resolving.panel_sha256(tube)
        else:
            panel_sha = panel_shas[tube]
        corrections = sample_corrections(trails.get(sample.sample_id, []))
        try:
            gating_sha = lab.sha256 if lab else tube_template(tube, config).sha256
            done = (sample.sample_id, gating_sha, panel_sha, corrections.key) in tried
        except CartflowError:
            done = False  # gating will say what is missing
        if not done:
            placed = not lab and corrections.gates is None
            plots = plots_dir(report_dir) if report_dir and placed else None
            review = review_dir if placed else None
            pending.append(
                PendingFile(
                    path,
                    sha,
                    sample.sample_id,
                    tube,
                    plots,
                    config,
                    review,
                    lab,
                    panel_sha,
                    corrections.key,
                    corrections.cuts,
                    corrections.gates,
                    _stored_panel(
                        resolving, matched, panels_gated, sample.sample_id, tube, panel_sha
                    ),
                )
            )
    return pending


def _stored_panel(
    config: LabConfig,
    matched: dict[int, tuple[str, str]],
    panels_gated: dict[int, set[str]],
    sample_id: int,
    tube: str,
    panel_sha: str,
) -> Panel | None:
    """The panel the sample was matched to at ingest, unless it must be matched again: the
    panel is gone or changed, or the sample was gated before under another resolution of its
    tube's panels (a changed marker spelling may now resolve its labels differently)."""
    if panels_gated.get(sample_id, {panel_sha}) - {panel_sha}:
        return None
    return config.stored_panel(*matched.get(sample_id, ("", "")), tube)


def write_gating(store: Store, run_id: int, work: GateWork) -> bool:
    """Store one file's gating in one transaction; False when another run stored it first."""
    return store.record_gating(
        run_id,
        work.sample_id,
        work.template_id,
        work.template_sha256,
        list(work.populations),
        list(work.gates),
        (*work.flags, *((f"gating_failed: {work.error}",) if work.error else ())),
        error=work.error,
        panel_sha256=work.panel_sha256,
        corrections_key=work.corrections_key,
    )
