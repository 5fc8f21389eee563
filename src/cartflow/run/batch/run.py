"""A batch's run from start to end, its settings and its summary: :func:`run_batch` shows the
steps in order (ingest → gate → review exports → counts and kinetics → outcomes → review
queue → report); each step is a module of its own, this one only wires them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cartflow.io.errors import CartflowError
from cartflow.io.outputs import remove_folder
from cartflow.panels.config import LabConfig
from cartflow.panels.identity_rules import IdentityRules
from cartflow.pipeline.clinical import HematotoxTable, infusion_dates
from cartflow.pipeline.counts import CountSettings
from cartflow.pipeline.gate import LabGating
from cartflow.pipeline.identity import Manifest
from cartflow.pipeline.kinetics import KineticsOptions
from cartflow.pipeline.outcomes import OutcomeConfig
from cartflow.report.pages import WrittenReport, write_report
from cartflow.run.batch.inputs import RunInputs, read_run_inputs
from cartflow.run.batch.steps import (
    FollowUp,
    follow_up,
    outcomes_stage,
    quarantine_lost_workers,
    review_state,
)
from cartflow.run.batch.work import GateWork, pending_gating
from cartflow.run.batch.workers import gate_batch
from cartflow.run.batch_outliers import flag_batch_outliers
from cartflow.run.ingest import IngestReport, ingest_batch, scan_batch, write_quarantine_report
from cartflow.run.review import write_batch_workspace
from cartflow.store import Store

Advance = Callable[[], None]
StageProgress = Callable[[str, int], Advance]


def _silent(_stage: str, _total: int) -> Advance:
    return lambda: None


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs besides the batch folder and the store."""

    out: Path
    manifest: Manifest | None = None
    rules: IdentityRules = IdentityRules()
    clinical: Path | None = None
    kinetics: KineticsOptions = KineticsOptions()
    counts: CountSettings = CountSettings()
    workers: int = 1
    scheduler: str | None = None
    html_report: bool = True
    analysis: OutcomeConfig = field(default_factory=OutcomeConfig)
    """The analysis settings, as read."""
    haematology: Path | None = None
    file_names: bool = False  # show file names in the HTML report (they may carry PHI)
    config: LabConfig | None = None
    """The lab configuration (None: the shipped one)."""
    review: bool = False
    """Write OUT/review: one FlowJo 10 workspace of the batch, Gating-ML per sample."""
    lab_gates: Mapping[str, LabGating] = field(default_factory=dict)
    """Tube → a lab's fixed gates that gate it instead of its template."""
    hematotox: HematotoxTable | None = None
    """The lab configuration's ALL-Hematotox table as read (None: the shipped one)."""
    inputs: RunInputs | None = None
    """``clinical`` and ``haematology`` as read at the run's start (None: :func:`run_batch`
    reads them)."""


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    ingest: IngestReport
    gated: tuple[GateWork, ...]
    already_gated: int
    follow: FollowUp
    report: Path | None
    quarantine_report: Path | None
    outcomes: object | None = None
    outcome_error: str | None = None
    review: Path | None = None
    figures_drawn: int = 0
    """Patients' kinetics figures the report drew (the others were unchanged)."""
    review_queue: tuple = ()
    """The review queue of the store after this run (every sample, not only this run's)."""

    @property
    def failed(self) -> list[GateWork]:
        return [w for w in self.gated if w.error]

    @property
    def plots_drawn(self) -> int:
        """Samples whose report plots this run drew (the others' were drawn before)."""
        return sum(w.plots_drawn for w in self.gated)

    @property
    def flagged(self) -> list[GateWork]:
        return [w for w in self.gated if w.flags and not w.error]

    @property
    def exit_code(self) -> int:
        return self.ingest.exit_code


def run_batch(
    batch_dir: Path,
    store: Store,
    settings: RunSettings,
    progress: StageProgress = _silent,
    only: list[Path] | None = None,
) -> RunSummary:
    """ingest → gate → counts → kinetics → report for every new file of a batch (or for the
    files ``only`` names). Each input table is read once, here or by the caller
    (``settings.inputs``), and handed down."""
    inputs = settings.inputs or _read_inputs(settings)
    ingest = _ingest(batch_dir, store, inputs, settings, progress, only)
    quarantine_report = write_quarantine_report(ingest, settings.out)
    files = _files_to_gate(ingest)
    with store.recording("run", _run_parameters(batch_dir, settings)) as run_id:
        gated = _gate(store, run_id, files, settings, progress)
        review = _review_workspace(store, gated, batch_dir, settings)
        if quarantine_lost_workers(store, run_id, ingest, gated):
            quarantine_report = write_quarantine_report(ingest, settings.out)
        follow = follow_up(
            store,
            run_id,
            settings.out,
            clinical=inputs.clinical,
            options=settings.kinetics,
            haematology=inputs.haematology,
            count_settings=settings.counts,
        )
        outcomes, outcome_error = _outcomes(follow, inputs, settings, progress)
        queue = review_state(
            store, follow.timepoints, settings.kinetics, settings.counts, config=settings.config
        )
        with_outcomes = outcomes is not None
        written = _report(store, follow, queue, inputs, with_outcomes, settings, progress)
    return RunSummary(
        run_id,
        ingest,
        tuple(gated),
        len(files) - len(gated),  # before this run, or by another run meanwhile
        follow,
        written.index if written else None,
        quarantine_report,
        outcomes,
        inputs.clinical_error or outcome_error,
        review,
        written.figures_drawn if written else 0,
        tuple(queue),
    )


def _read_inputs(settings: RunSettings) -> RunInputs:
    """The run's tables read from the paths its settings name."""
    return read_run_inputs(settings.clinical, settings.haematology)


def _ingest(
    batch_dir: Path, store: Store, inputs: RunInputs, settings: RunSettings,
    progress: StageProgress, only: list[Path] | None,
) -> IngestReport:  # fmt: skip
    """Ingest the batch's new files (or those ``only`` names), dated against the clinical
    table's infusion dates when it could be read (else its problems are reported with the
    outcomes)."""
    candidates = scan_batch(batch_dir) if only is None else sorted(only)
    advance = progress("ingest", len(candidates))
    infusion, _ = infusion_dates(inputs.clinical)
    return ingest_batch(
        batch_dir,
        store,
        settings.manifest,
        settings.rules,
        on_file=lambda _o: advance(),
        files=candidates,
        infusion=infusion,
        config=settings.config,
    )


def _files_to_gate(ingest: IngestReport) -> list[tuple[Path, str]]:
    """(path, sha256) of each stored file content the batch holds, under its first name: a
    copy under another name is gated once, if at all."""
    first_path: dict[str, Path] = {}
    for outcome in ingest.outcomes:
        if outcome.status in ("accepted", "known", "duplicate"):
            first_path.setdefault(outcome.sha256, outcome.path)
    return [(path, sha) for sha, path in first_path.items()]


def _run_parameters(batch_dir: Path, settings: RunSettings) -> dict:
    """What the store records of the run's settings."""
    return {
        "batch": str(batch_dir),
        "clinical": str(settings.clinical) if settings.clinical else None,
        "kinetics": settings.kinetics.__dict__,
        "counts": settings.counts.__dict__,
        "workers": settings.workers,
        "scheduler": settings.scheduler,
        **(settings.config.provenance() if settings.config else {}),
        "lab_gates": {t: f"{g.path} sha256:{g.sha256}" for t, g in settings.lab_gates.items()},
    }


def _gate(
    store: Store, run_id: int, files: list[tuple[Path, str]], settings: RunSettings,
    progress: StageProgress,
) -> list[GateWork]:  # fmt: skip
    """Gate and store the files without current counts; then flag the batch's outlying cuts."""
    pending = pending_gating(
        store,
        files,
        settings.out / "report" if settings.html_report else None,
        settings.config,
        settings.out / "review" if settings.review else None,
        settings.lab_gates,
    )
    advance = progress("gate", len(pending))
    gated = gate_batch(
        store,
        run_id,
        pending,
        lambda _work: advance(),
        workers=settings.workers,
        scheduler=settings.scheduler,
    )
    return flag_batch_outliers(store, gated)


def _review_workspace(
    store: Store, gated: list[GateWork], batch_dir: Path, settings: RunSettings
) -> Path | None:
    """The batch's FlowJo workspace for review, when asked for."""
    if not settings.review:
        return None
    return write_batch_workspace(gated, settings.out / "review", batch_dir.resolve().name, store)


def _outcomes(
    follow: FollowUp, inputs: RunInputs, settings: RunSettings, progress: StageProgress
) -> tuple[object | None, str | None]:
    """The outcome stage into OUT/outcomes (an earlier run's outcomes removed first, so they
    never mix with this run's): its report and None, or None and why it failed."""
    outcome_dir = settings.out / "outcomes"
    remove_folder(outcome_dir)
    if inputs.clinical is None or not len(follow.kinetics):
        return None, None
    progress("outcomes", 1)
    try:
        report = outcomes_stage(
            follow, inputs.clinical, outcome_dir, settings.analysis, settings.hematotox
        )
    except CartflowError as exc:
        remove_folder(outcome_dir)
        return None, str(exc)
    return report, None


def _report(
    store: Store, follow: FollowUp, queue, inputs: RunInputs, with_outcomes: bool,
    settings: RunSettings, progress: StageProgress,
) -> WrittenReport | None:  # fmt: skip
    """The HTML report, when asked for."""
    if not settings.html_report:
        return None
    progress("report", 1)
    return write_report(
        store,
        settings.out / "report",
        follow.timepoints,
        follow.kinetics,
        settings.out / "outcomes" if with_outcomes else None,
        file_names=settings.file_names,
        review=queue,
        clinical=inputs.clinical,
        config=settings.config,
    )
