"""Orchestration of a batch: ingest → gate → counts → kinetics, results into the store and
tables into the output folder. Each stage is a module of its own; this one only wires them."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed as as_completed_futures
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from pipeline.config import LabConfig
from pipeline.counts import CountSettings
from pipeline.errors import CartflowError
from pipeline.gate import gate_file, gate_records, template_for
from pipeline.identity import IdentityRules, Manifest
from pipeline.ingest import IngestReport, ingest_batch, scan_batch, write_quarantine_report
from pipeline.kinetics import KineticsOptions, patient_kinetics
from pipeline.report import overview_path, write_report
from pipeline.store import GateRecord, PopulationRecord, Store
from pipeline.timepoints import TimepointSettings, timepoint_table


@dataclass(frozen=True)
class GateWork:
    """What gating one file produced, ready to be written by the process that owns the store."""

    path: Path
    sha256: str
    sample_id: int
    template_id: str
    template_sha256: str
    populations: tuple[PopulationRecord, ...] = ()
    gates: tuple[GateRecord, ...] = ()
    flags: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class PendingFile:
    path: Path
    sha256: str
    sample_id: int
    tube: str
    overview: Path | None = None
    config: LabConfig | None = None
    """The lab configuration to gate with (None: the shipped one)."""


def _template(tube: str, config: LabConfig | None):
    return config.template(tube) if config else template_for(tube)


def gate_one(item: PendingFile) -> GateWork:
    """Gate one file; any problem becomes the work's error, never an exception."""
    base = {"path": item.path, "sha256": item.sha256, "sample_id": item.sample_id}
    try:
        template = _template(item.tube, item.config)
    except CartflowError as exc:
        return GateWork(**base, template_id="", template_sha256="", error=exc.problem)
    base |= {"template_id": template.id, "template_sha256": template.sha256}
    try:
        gated = gate_file(item.path, template=template, tube=item.tube, config=item.config)
    except CartflowError as exc:
        return GateWork(**base, error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, error=f"unexpected {type(exc).__name__}: {exc}")
    populations, gates = gate_records(gated)
    if item.overview is not None:
        from pipeline.plots import sample_overview

        sample_overview(gated, item.overview)
    return GateWork(
        **base, populations=tuple(populations), gates=tuple(gates), flags=gated.placed.flags
    )


def pending_gating(
    store: Store,
    files: Sequence[tuple[Path, str]],
    report_dir: Path | None = None,
    config: LabConfig | None = None,
) -> list[PendingFile]:
    """Stored samples among ``files`` (path, sha256) without counts from their current
    template (with the path of their overview plot when a report is wanted)."""
    by_sha = {s["sha256"]: s for s in store.samples()}
    pending = []
    for path, sha in files:
        sample = by_sha.get(sha)
        if sample is None:
            continue
        try:
            done = store.has_gating(sample["sample_id"], _template(sample["tube"], config).sha256)
        except CartflowError:
            done = False  # gating will say what is missing
        if not done:
            overview = overview_path(report_dir, sha) if report_dir else None
            pending.append(
                PendingFile(path, sha, sample["sample_id"], sample["tube"], overview, config)
            )
    return pending


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
    )


def _one_thread_each() -> None:
    """Worker initialiser: one BLAS/OpenMP thread per process (the pool is the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def gate_parallel(
    pending: Sequence[PendingFile], workers: int = 1, scheduler: str | None = None
) -> Iterator[GateWork]:
    """Gate files as they finish: in this process, a local process pool, or on a Dask
    distributed cluster (``scheduler`` = ``tcp://host:port``)."""
    if not pending:
        return
    if scheduler:
        from dask.distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.map(gate_one, list(pending), pure=False)
            for future in as_completed(futures):
                yield future.result()
        return
    if workers <= 1 or len(pending) == 1:
        yield from map(gate_one, pending)
        return
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_each)
    try:
        futures = [pool.submit(gate_one, item) for item in pending]
        for future in as_completed_futures(futures):
            yield future.result()
    finally:  # interrupted: the files not started are dropped, not gated on the way out
        pool.shutdown(wait=True, cancel_futures=True)


def gate_batch(
    store: Store,
    run_id: int,
    pending: Sequence[PendingFile],
    on_file: Callable[[GateWork], None] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> list[GateWork]:
    """Gate pending files (in parallel when asked) and store each as it finishes; returns
    those this run stored (not those another run stored first meanwhile)."""
    done = []
    for work in gate_parallel(pending, workers, scheduler):
        if write_gating(store, run_id, work):
            done.append(work)
        if on_file:
            on_file(work)
    return done


@dataclass(frozen=True)
class FollowUp:
    """The tables of the counts and kinetics stages and where they were written."""

    timepoints: pd.DataFrame
    kinetics: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def infusion_dates(clinical: Path | None) -> tuple[dict[str, date], dict[str, float]]:
    """Infusion dates and relapse days (from infusion) per patient, from the validated
    clinical table (raises ClinicalTableError listing its problems)."""
    if clinical is None:
        return {}, {}
    from pipeline.clinical import load_clinical

    data = load_clinical(clinical).data
    known = data[data["infusion_date"].notna()]
    infusion = {p: d.date() for p, d in zip(known["patient"], known["infusion_date"], strict=True)}
    relapse = {}
    if "relapse_date" in known:
        relapsed = known[known["relapse_date"].notna()]
        days = (relapsed["relapse_date"] - relapsed["infusion_date"]).dt.days
        relapse = dict(zip(relapsed["patient"], days.astype(float), strict=True))
    return infusion, relapse


def follow_up(
    store: Store,
    run_id: int,
    out_dir: Path,
    *,
    clinical: Path | None = None,
    options: KineticsOptions = KineticsOptions(),
    haematology: Path | None = None,
    count_settings: CountSettings = CountSettings(),
) -> FollowUp:
    """Counts per timepoint and kinetics per patient from the store; written as CSV and
    Parquet, and the kinetic summaries stored under ``run_id``. A haematology table gives
    dual-platform counts for tubes without beads."""
    from pipeline.timepoints import load_haematology

    infusion, relapse = infusion_dates(clinical)
    counts = load_haematology(haematology) if haematology else None
    settings = TimepointSettings(counts=count_settings)
    timepoints = timepoint_table(store.latest_counts(), infusion, counts, settings)
    kinetics, long_rows = patient_kinetics(timepoints, options=options, relapse_days=relapse)
    store.record_kinetics(run_id, long_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, table in (("timepoints", timepoints), ("kinetics", kinetics)):
        csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
        table.to_csv(csv_path, index=False)
        table.to_parquet(parquet_path, index=False)
        files[name] = csv_path
        files[f"{name}_parquet"] = parquet_path
    return FollowUp(timepoints, kinetics, files)


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
    analysis: Path | None = None
    haematology: Path | None = None
    config: LabConfig | None = None
    """The lab configuration (None: the shipped one)."""


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

    @property
    def failed(self) -> list[GateWork]:
        return [w for w in self.gated if w.error]

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
    files ``only`` names)."""
    candidates = scan_batch(batch_dir) if only is None else sorted(only)
    advance = progress("ingest", len(candidates))
    ingest = ingest_batch(
        batch_dir,
        store,
        settings.manifest,
        settings.rules,
        on_file=lambda _o: advance(),
        files=candidates,
        config=settings.config,
    )
    quarantine_report = write_quarantine_report(ingest, settings.out)
    first_path: dict[str, Path] = {}  # a copy under another name is gated once, if at all
    for outcome in ingest.outcomes:
        if outcome.status in ("accepted", "known", "duplicate"):
            first_path.setdefault(outcome.sha256, outcome.path)
    files = [(path, sha) for sha, path in first_path.items()]
    parameters = {
        "batch": str(batch_dir),
        "clinical": str(settings.clinical) if settings.clinical else None,
        "kinetics": settings.kinetics.__dict__,
        "counts": settings.counts.__dict__,
        "workers": settings.workers,
        "scheduler": settings.scheduler,
        **(settings.config.provenance() if settings.config else {}),
    }
    with store.recording("run", parameters) as run_id:
        report_dir = settings.out / "report"
        pending = pending_gating(
            store, files, report_dir if settings.html_report else None, settings.config
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
        outcomes, outcome_error = None, None
        clinical = settings.clinical
        try:
            infusion_dates(clinical)
        except CartflowError as exc:  # a bad clinical table must not stop the batch
            outcome_error, clinical = str(exc), None
        follow = follow_up(
            store,
            run_id,
            settings.out,
            clinical=clinical,
            options=settings.kinetics,
            haematology=settings.haematology,
            count_settings=settings.counts,
        )
        outcome_dir = settings.out / "outcomes"
        if clinical is not None and len(follow.kinetics):
            progress("outcomes", 1)
            try:
                lab_table = settings.config.hematotox if settings.config else None
                outcomes = outcomes_stage(
                    follow, clinical, outcome_dir, settings.analysis, None, lab_table
                )
            except CartflowError as exc:
                outcome_error = str(exc)
        index = None
        if settings.html_report:
            progress("report", 1)
            index = write_report(
                store,
                report_dir,
                follow.timepoints,
                follow.kinetics,
                outcome_dir if outcomes is not None else None,
            )
    return RunSummary(
        run_id,
        ingest,
        tuple(gated),
        len(files) - len(gated),  # before this run, or by another run meanwhile
        follow,
        index,
        quarantine_report,
        outcomes,
        outcome_error,
    )


@dataclass
class ArrivalWatch:
    """Which files of a folder are complete: same size on two looks and readable (or, when
    unreadable, unchanged for ``settle`` looks, so that ingest can quarantine them). A file
    handed over is looked at again when it changes (a copy that stalled, then finished)."""

    folder: Path
    settle: int = 3
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    handed_over: dict[Path, tuple[int, int]] = field(default_factory=dict)  # size, mtime

    def complete(self) -> list[Path]:
        from pipeline.fcs import read_fcs

        ready = []
        for path in scan_batch(self.folder):
            try:
                stat = path.stat()
            except OSError:
                continue
            size = stat.st_size
            if self.handed_over.get(path) == (size, stat.st_mtime_ns):
                continue
            previous, stable = self.sizes.get(path, (-1, 0))
            stable = stable + 1 if size == previous else 0
            self.sizes[path] = (size, stable)
            if stable == 0:
                continue
            try:
                read_fcs(path, events=False)
            except CartflowError:
                if stable < self.settle:
                    continue
            ready.append(path)
            self.handed_over[path] = (size, stat.st_mtime_ns)
        return ready


def outcome_inputs(follow: FollowUp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-patient table (kinetics.csv's columns, under the same names) and the timepoint
    table the outcome stage reads."""
    return follow.kinetics, follow.timepoints


def outcomes_stage(
    follow: FollowUp,
    clinical: Path,
    out_dir: Path,
    config_path: Path | None,
    known_patients: set[str] | None = None,
    hematotox: Path | None = None,
):
    """The outcome-correlation stage on this store's patients. With ``known_patients`` a
    clinical row naming anyone else is an error (a batch run passes None: its store may not
    hold every patient of the clinical table yet). ``hematotox`` is the lab configuration's
    point table, used unless the analysis settings name one."""
    from dataclasses import replace

    from pipeline.outcomes import load_outcome_config, run_outcomes

    patients, points = outcome_inputs(follow)
    settings = load_outcome_config(config_path)
    if settings.hematotox_table is None and hematotox is not None:
        settings = replace(settings, hematotox_table=hematotox)
    return run_outcomes(
        clinical,
        patients,
        out_dir,
        settings,
        points if len(points) else None,
        known_patients=known_patients,
    )
