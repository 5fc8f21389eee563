"""Orchestration of a batch: ingest → gate → counts → kinetics, results into the store and
tables into the output folder. Each stage is a module of its own; this one only wires them."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

import pandas as pd

from gating.placement import ThresholdDecision
from pipeline.batch_outliers import flag_batch_outliers
from pipeline.config import DEFAULT_CONFIG_DIR, LabConfig, load_config
from pipeline.counts import CountSettings
from pipeline.errors import CartflowError
from pipeline.gate import (
    LabGating,
    gate_file,
    gate_fixed,
    gate_records,
    lab_gate_records,
    template_for,
)
from pipeline.identity import IdentityRules, Manifest
from pipeline.ingest import IngestReport, ingest_batch, scan_batch, write_quarantine_report
from pipeline.kinetics import KineticsOptions, patient_kinetics
from pipeline.outputs import remove_folder, write_csv, write_parquet
from pipeline.report import plots_dir, write_report
from pipeline.review import review_exports, write_batch_workspace
from pipeline.store import GateRecord, PopulationRecord, Store, corrections_key
from pipeline.timepoints import TimepointSettings, timepoint_table


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


def _gate_fixed_work(item: PendingFile, base: dict) -> GateWork:
    """Gate a file with a lab's gates set on its sample by hand (no placement), recorded as
    a tube's lab gates are, each gate's evidence naming the correction; gates that no longer
    fit the file give a failed gating flagged ``override_unfit:gates``."""
    import dataclasses
    import hashlib
    import tempfile

    fixed = item.fixed_gates
    unfit = f"override_unfit:gates={fixed.name}"
    file_name, _, group = Path(fixed.name).name.partition("#")
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / file_name
            path.write_text(fixed.content, encoding="utf-8")
            digest = hashlib.sha256(fixed.content.encode("utf-8")).hexdigest()
            lab = LabGating(Path(f"{path}#{group}") if group else path, digest)
            fcs, gate_set, result = gate_fixed(item.path, lab.load())
            populations, gates = lab_gate_records(lab, fcs, gate_set, result)
    except CartflowError as exc:
        return GateWork(**base, flags=(unfit,), error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, flags=(unfit,), error=f"unexpected {type(exc).__name__}: {exc}")
    gates = [
        dataclasses.replace(
            g, evidence=g.evidence | {"source": fixed.name, "correction": fixed.correction_id}
        )
        for g in gates
    ]
    flags = (f"override:gates={fixed.name}",)
    return GateWork(**base, populations=tuple(populations), gates=tuple(gates), flags=flags)


def _template(tube: str, config: LabConfig | None):
    return config.template(tube) if config else template_for(tube)


def gate_one(item: PendingFile) -> GateWork:
    """Gate one file; any problem becomes the work's error, never an exception."""
    base = {"path": item.path, "sha256": item.sha256, "sample_id": item.sample_id,
            "panel_sha256": item.panel_sha256, "corrections_key": item.corrections_key}  # fmt: skip
    if item.lab is not None and item.fixed_gates is None:
        return _gate_with_lab_gates(item, base)
    try:
        template = _template(item.tube, item.config)
    except CartflowError as exc:
        return GateWork(**base, template_id="", template_sha256="", error=exc.problem)
    base |= {"template_id": template.id, "template_sha256": template.sha256}
    if item.fixed_gates is not None:
        return _gate_fixed_work(item, base)
    given = {o.cut: o.decision() for o in item.overrides}
    try:
        gated = gate_file(
            item.path, template=template, tube=item.tube, config=item.config,
            fixed_cuts=given or None,
        )  # fmt: skip
    except CartflowError as exc:
        return GateWork(**base, error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, error=f"unexpected {type(exc).__name__}: {exc}")
    populations, gates = gate_records(gated)
    drawn = False
    if item.plots is not None:
        from pipeline.plots import render_sample_plots

        drawn = render_sample_plots(gated, item.sha256, item.plots)
    flowjo, flags = None, (*gated.placed.flags, *_override_flags(item, gated, given))
    if item.review is not None:
        try:
            flowjo = review_exports(gated, item.review)
        except CartflowError as exc:  # the counts stand; the review copy is said to be missing
            flags = (*flags, f"review_export_failed: {exc.problem}")
    return GateWork(
        **base,
        populations=tuple(populations),
        gates=tuple(gates),
        flags=flags,
        flowjo=flowjo,
        plots_drawn=drawn,
    )


def _override_flags(item: PendingFile, gated, given: dict) -> list[str]:
    """A flag per hand-set cut: applied, or no longer placed by the template (never dropped
    silently)."""
    decisions = gated.placed.decisions
    return [
        f"{'override' if decisions.get(o.cut) is given[o.cut] else 'override_unfit'}:"
        f"{o.cut}={o.value:.4g}"
        for o in item.overrides
    ]


def _gate_with_lab_gates(item: PendingFile, base: dict) -> GateWork:
    """Gate one file with its tube's fixed lab gates (no placement)."""
    lab = item.lab
    base |= {"template_id": lab.id, "template_sha256": lab.sha256}
    try:
        fcs, gate_set, result = gate_fixed(item.path, lab.load())
        populations, gates = lab_gate_records(lab, fcs, gate_set, result)
    except CartflowError as exc:
        return GateWork(**base, error=f"{exc.kind}: {exc.problem}")
    except Exception as exc:  # a bad file must never stop the batch
        return GateWork(**base, error=f"unexpected {type(exc).__name__}: {exc}")
    return GateWork(**base, populations=tuple(populations), gates=tuple(gates))


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
    tube's samples and no other."""
    lab_gates = lab_gates or {}
    resolving = config if config is not None else load_config(DEFAULT_CONFIG_DIR)
    panel_shas: dict[str, str] = {}
    by_sha = {s["sha256"]: s for s in store.samples()}
    trails: dict[int, list[dict[str, Any]]] = {}
    for entry in store.corrections():
        trails.setdefault(entry["sample_id"], []).append(entry)
    tried = store.gating_keys()
    pending = []
    for path, sha in files:
        sample = by_sha.get(sha)
        if sample is None:
            continue
        tube = sample["tube"]
        lab = lab_gates.get(tube)
        if lab is not None:
            panel_sha = ""
        elif tube not in panel_shas:
            panel_sha = panel_shas[tube] = resolving.panel_sha256(tube)
        else:
            panel_sha = panel_shas[tube]
        corrections = sample_corrections(trails.get(sample["sample_id"], []))
        try:
            gating_sha = lab.sha256 if lab else _template(tube, config).sha256
            done = (sample["sample_id"], gating_sha, panel_sha, corrections.key) in tried
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
                    sample["sample_id"],
                    tube,
                    plots,
                    config,
                    review,
                    lab,
                    panel_sha,
                    corrections.key,
                    corrections.cuts,
                    corrections.gates,
                )
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
        panel_sha256=work.panel_sha256,
        corrections_key=work.corrections_key,
    )


def _one_thread_each() -> None:
    """Worker set-up: one BLAS/OpenMP thread per process (the processes are the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


PR_SET_PDEATHSIG = 1
WORKER_ATTEMPTS = 2
"""A file whose worker process is killed is tried once more, then given up (quarantined)."""


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the process that started it dies, even by
    kill -9 (Linux); elsewhere, and if the parent is already gone, stop now."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's clean-up still stops workers
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
"""Held back while a worker is forked: a stop arriving mid-fork would land in the fork's
own hooks, where Python ignores the exception it raises, and the run would go on."""


def _gate_in_worker(item: PendingFile, sender, parent_pid: int) -> None:
    for stop in _STOP_SIGNALS:  # a stopped worker ends quietly, not with a traceback
        signal.signal(stop, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent_pid)
    _one_thread_each()
    sender.send(gate_one(item))
    sender.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        how = " (as the out-of-memory killer does)" if name == "SIGKILL" else ""
        return f"killed by {name}{how}"
    return f"ended with exit code {exitcode} before reporting"


def gate_in_processes(pending: Sequence[PendingFile], workers: int) -> Iterator[GateWork]:
    """Gate each file in a forked process of its own, ``workers`` at a time. A process that
    dies (kill -9, out of memory) costs only its file: tried once more, then reported as a
    failed work with ``worker_died``; workers die with this process."""
    context = multiprocessing.get_context("fork")
    if any(item.plots is not None for item in pending):
        from pipeline.density import load_png_writer

        load_png_writer()  # here once, not in each forked worker
    queue = deque((item, 1) for item in pending)
    running: dict = {}  # receiving end -> (process, item, attempt)
    try:
        while queue or running:
            while queue and len(running) < workers:
                item, attempt = queue.popleft()
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_gate_in_worker, args=(item, sender, os.getpid()), daemon=True
                )
                held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                try:
                    process.start()
                finally:  # a stop that came meanwhile is delivered here
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                sender.close()
                running[receiver] = (process, item, attempt)
            for receiver in wait_for(list(running)):
                process, item, attempt = running.pop(receiver)
                try:
                    work = receiver.recv()
                except (EOFError, OSError, ValueError, TypeError, AttributeError):
                    work = None  # died before or while reporting
                receiver.close()
                process.join()
                if work is not None:
                    yield work
                elif attempt < WORKER_ATTEMPTS:
                    queue.append((item, attempt + 1))
                else:
                    yield GateWork(
                        item.path, item.sha256, item.sample_id, "", "", worker_died=True,
                        error=f"worker process {_death(process.exitcode)}, "
                        f"{WORKER_ATTEMPTS} times",
                    )  # fmt: skip
    finally:  # interrupted: stop the workers still gating, without waiting on them long
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def gate_parallel(
    pending: Sequence[PendingFile], workers: int = 1, scheduler: str | None = None
) -> Iterator[GateWork]:
    """Gate files as they finish: in this process, in local worker processes, or on a Dask
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
    if workers <= 1:
        yield from map(gate_one, pending)
        return
    yield from gate_in_processes(pending, workers)


def gate_batch(
    store: Store,
    run_id: int,
    pending: Sequence[PendingFile],
    on_file: Callable[[GateWork], None] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> list[GateWork]:
    """Gate pending files (in parallel when asked) and store each as it finishes; returns
    those this run stored (not those another run stored first meanwhile) and those whose
    worker died."""
    done = []
    for work in gate_parallel(pending, workers, scheduler):
        # a file whose worker died is not stored as gated: a later run tries it again
        if work.worker_died or write_gating(store, run_id, work):
            done.append(work)
        if on_file:
            on_file(work)
    return done


def regate_sample(
    store: Store,
    run_id: int,
    sample_id: int,
    report_dir: Path | None = None,
    config: LabConfig | None = None,
):
    """Gate one stored sample again now, with its current corrections (a file found under
    one of its known paths); None when no path holds it any more (the next run that sees
    the file gates it)."""
    from pipeline.ingest import sha256_of

    sample = next((s for s in store.samples() if s["sample_id"] == sample_id), None)
    if sample is None:
        return None
    for name in store.sample_paths(sample_id):
        path = Path(name)
        try:
            if path.is_file() and sha256_of(path) == sample["sha256"]:
                break
        except OSError:
            continue
    else:
        return None
    [pending] = pending_gating(store, [(path, sample["sha256"])], report_dir, config) or [None]
    if pending is None:
        return None
    work = gate_one(pending)
    write_gating(store, run_id, work)
    return work


def review_state(
    store: Store,
    timepoints: pd.DataFrame,
    options: KineticsOptions = KineticsOptions(),
    counts: CountSettings = CountSettings(),
    patient: str | None = None,
    config: LabConfig | None = None,
):
    """The review queue of the store's current state (see :mod:`pipeline.triage`)."""
    from pipeline.kinetics import peak_days
    from pipeline.triage import review_queue

    peaks = peak_days(timepoints, options)
    return review_queue(
        store, timepoints, peaks, counts.lod_events, counts.lloq_events, patient, config
    )


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
        write_csv(table, csv_path)
        write_parquet(table, parquet_path)
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
    file_names: bool = False  # show file names in the HTML report (they may carry PHI)
    config: LabConfig | None = None
    """The lab configuration (None: the shipped one)."""
    review: bool = False
    """Write OUT/review: one FlowJo 10 workspace of the batch, Gating-ML per sample."""
    lab_gates: Mapping[str, LabGating] = field(default_factory=dict)
    """Tube → a lab's fixed gates that gate it instead of its template."""


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
    files ``only`` names)."""
    candidates = scan_batch(batch_dir) if only is None else sorted(only)
    advance = progress("ingest", len(candidates))
    try:
        infusion, _ = infusion_dates(settings.clinical)
    except CartflowError:  # reported with the outcomes; samples are not dated against it
        infusion = {}
    ingest = ingest_batch(
        batch_dir,
        store,
        settings.manifest,
        settings.rules,
        on_file=lambda _o: advance(),
        files=candidates,
        infusion=infusion,
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
        "lab_gates": {t: f"{g.path} sha256:{g.sha256}" for t, g in settings.lab_gates.items()},
    }
    with store.recording("run", parameters) as run_id:
        report_dir = settings.out / "report"
        review_dir = settings.out / "review" if settings.review else None
        pending = pending_gating(
            store,
            files,
            report_dir if settings.html_report else None,
            settings.config,
            review_dir,
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
        gated = flag_batch_outliers(store, gated)
        review = None
        if review_dir is not None:
            review = write_batch_workspace(gated, review_dir, batch_dir.resolve().name, store)
        if _quarantine_lost_workers(store, run_id, ingest, gated):
            quarantine_report = write_quarantine_report(ingest, settings.out)
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
        remove_folder(outcome_dir)  # an earlier run's outcomes never mix with this run's
        if clinical is not None and len(follow.kinetics):
            progress("outcomes", 1)
            try:
                lab_table = settings.config.hematotox if settings.config else None
                outcomes = outcomes_stage(
                    follow, clinical, outcome_dir, settings.analysis, None, lab_table
                )
            except CartflowError as exc:
                outcome_error = str(exc)
                remove_folder(outcome_dir)
        queue = review_state(
            store, follow.timepoints, settings.kinetics, settings.counts, config=settings.config
        )
        written = None
        if settings.html_report:
            progress("report", 1)
            written = write_report(
                store,
                report_dir,
                follow.timepoints,
                follow.kinetics,
                outcome_dir if outcomes is not None else None,
                file_names=settings.file_names,
                review=queue,
                clinical=clinical,
                config=settings.config,
            )
    return RunSummary(
        run_id,
        ingest,
        tuple(gated),
        len(files) - len(gated),  # before this run, or by another run meanwhile
        follow,
        written.index if written else None,
        quarantine_report,
        outcomes,
        outcome_error,
        review,
        written.figures_drawn if written else 0,
        tuple(queue),
    )


def _quarantine_lost_workers(
    store: Store, run_id: int, ingest: IngestReport, gated: Sequence[GateWork]
) -> bool:
    """Quarantine the files whose worker process died (the run goes on, exit 2); True when
    there were any."""
    from pipeline.ingest import FileOutcome

    lost = [work for work in gated if work.worker_died]
    for work in lost:
        reason = f"gating not done: {work.error}"
        store.quarantine(run_id, f"{work.sha256}:worker", str(work.path), work.sha256,
                         "worker", reason)  # fmt: skip
        ingest.outcomes.append(FileOutcome(work.path, "quarantined", work.sha256, reason, "worker"))
    return bool(lost)


@dataclass
class ArrivalWatch:
    """Which files of a folder are complete: the same size, modification time and content
    (SHA-256) on two looks, and readable with plausible DATA (no run of zero events where
    $TOT says there are events); an unreadable file is handed over once unchanged for
    ``settle`` looks, so that ingest can quarantine it. A file handed over is looked at
    again when it changes (a copy that stalled, then finished)."""

    folder: Path
    settle: int = 3
    looks: dict[Path, tuple[tuple[int, int, str], int]] = field(default_factory=dict)
    handed_over: dict[Path, tuple[int, int]] = field(default_factory=dict)  # size, mtime

    def complete(self) -> list[Path]:
        from pipeline.fcs import read_fcs
        from pipeline.ingest import sha256_of

        ready = []
        for path in scan_batch(self.folder):
            try:
                stat = path.stat()
                if not path.is_file():  # a FIFO or folder: ingest reports it, once
                    if path not in self.handed_over:
                        ready.append(path)
                        self.handed_over[path] = (-1, -1)
                    continue
                if self.handed_over.get(path) == (stat.st_size, stat.st_mtime_ns):
                    continue
                seen = (stat.st_size, stat.st_mtime_ns)
                previous, stable = self.looks.get(path, ((-1, -1, ""), 0))
                if previous[:2] != seen:  # still changing: hash it only once it holds still
                    self.looks[path] = ((*seen, ""), 0)
                    continue
                state = (*seen, sha256_of(path))
            except OSError:
                continue
            stable = stable + 1 if state == previous else 0
            self.looks[path] = (state, stable)
            if stable == 0:
                continue
            try:
                read_fcs(path, events=False)
            except CartflowError:
                if stable < self.settle:
                    continue
            ready.append(path)
            self.handed_over[path] = seen
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
