"""``cartflow ingest``, ``run`` and ``watch``: a batch through the chain, with progress bars."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cartflow.cli.app import (
    OUT_MARK,
    _claim_out,
    _fail,
    _lab_config,
    _lab_setup,
    _load_context,
    _progress,
    _writable,
    app,
    console,
)
from cartflow.cli.gating import _lab_gates
from cartflow.cli.options import (
    AnchorOption,
    BelowLodOption,
    ClinicalOption,
    ConfigOption,
    DbOption,
    ForceOption,
    HaematologyOption,
    LloqOption,
    LodOption,
    LogDownOption,
    ManifestOption,
    OutOption,
    RulesOption,
    _analysis_settings,
    _count_settings,
    _kinetics_options,
)
from cartflow.io.errors import CartflowError


def _print_ingest(report, store_url: str, quarantine_report: Path | None) -> None:
    counts = {
        s: len(report.with_status(s)) for s in ("accepted", "known", "duplicate", "quarantined")
    }
    console.print(
        f"ingest: {counts['accepted']} accepted, {counts['known']} already known, "
        f"{counts['duplicate']} duplicate, {counts['quarantined']} quarantined "
        f"(store {store_url})"
    )
    for outcome in report.outcomes:
        if outcome.detail.startswith("identity corrected"):
            console.print(f"  {outcome.path.name}: {outcome.detail}", markup=False)
    for outcome in report.with_status("duplicate"):
        console.print(f"  duplicate: {outcome.path.name}: {outcome.detail}")
    for outcome in report.with_status("quarantined"):
        console.print(f"  quarantined: {outcome.path.name}: {outcome.detail}")
    for outcome in report.for_review:
        console.print(f"  stored for review: {outcome.path.name}: {outcome.review}")
    if quarantine_report:
        console.print(f"quarantine report: {quarantine_report}")


def run_ingest(
    batch_dir: Path,
    db: str | None,
    manifest: Path | None,
    rules: Path | None,
    out: Path,
    config: Path | None = None,
):
    """Ingest with a progress bar and a summary; returns the report."""
    from cartflow.run.ingest import ingest_batch, scan_batch, write_quarantine_report
    from cartflow.store import Store

    if not batch_dir.is_dir():
        raise _fail(f"{batch_dir}: not a folder")
    _writable(out, folder=True, create=False)  # only quarantine goes there
    lab = _lab_config(config)
    try:
        loaded_manifest, loaded_rules = _load_context(manifest, rules, lab)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    store = Store(db)
    try:
        total = len(scan_batch(batch_dir))
        with _progress() as progress:
            task = progress.add_task("ingest", total=total)
            report = ingest_batch(
                batch_dir,
                store,
                loaded_manifest,
                loaded_rules,
                on_file=lambda _outcome: progress.advance(task),
                config=lab,
            )
    finally:
        store.close()
    _print_ingest(report, store.display_url, write_quarantine_report(report, out))
    return report


@app.command()
def ingest(
    batch_dir: Annotated[
        Path, typer.Argument(help="Folder of FCS exports (searched recursively).")
    ],
    manifest: ManifestOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Where the quarantine/ report is written.")
    ] = Path("cartflow-out"),
    force: ForceOption = False,
    config: ConfigOption = None,
) -> None:
    """Scan, identify, validate and record a batch; bad files go to quarantine (exit 2)."""
    existed = out.is_dir()
    if existed:
        _claim_out(out, force)
    report = run_ingest(batch_dir, db, manifest, rules, out, config)
    if not existed and out.is_dir():  # made now, for the quarantine report
        (out / OUT_MARK).write_text("cartflow output folder\n", encoding="utf-8")
    raise typer.Exit(report.exit_code)


def _print_follow_up(follow) -> None:
    patients = len(follow.kinetics)
    console.print(
        f"kinetics: {patients} patient(s), {len(follow.timepoints)} timepoint rows; "
        + ", ".join(str(p) for k, p in follow.files.items() if not k.endswith("_parquet"))
    )


@app.command()
def run(
    batch_dir: Annotated[
        Path, typer.Argument(help="Folder of FCS exports (searched recursively).")
    ],
    manifest: ManifestOption = None,
    clinical: ClinicalOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: OutOption = Path("cartflow-out"),
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    workers: Annotated[
        int, typer.Option(min=1, help="Local worker processes (default: all cores).")
    ] = os.cpu_count() or 1,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask distributed scheduler, e.g. tcp://host:8786.")
    ] = None,
    html_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report and its plots.")
    ] = True,
    analysis: Annotated[
        Path | None, typer.Option(help="analysis.yaml for the outcome stage.")
    ] = None,
    haematology: HaematologyOption = None,
    force: ForceOption = False,
    file_names: Annotated[
        bool, typer.Option("--show-file-names", help="Name files in the HTML report (PHI).")
    ] = False,
    config: ConfigOption = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Write OUT/review: a FlowJo 10 workspace of the batch (FCS paths relative "
            "to it) and Gating-ML per sample, for a cytometrist's review.",
        ),
    ] = False,
    lab_gates: Annotated[
        list[str] | None,
        typer.Option(
            "--gates",
            metavar="TUBE=FILE",
            help="Gate a tube with a lab's fixed gates (Gating-ML, FlowJo 10 workspace or "
            "FACSDiva export) instead of its template, e.g. --gates memory=lab.wsp "
            "(repeatable).",
        ),
    ] = None,
) -> None:
    """ingest → gate → counts → kinetics (→ outcomes with --clinical) → report for every new
    file of a batch (exit 2 if any file was quarantined)."""
    from cartflow.run.batch import RunSettings

    setup = _lab_setup(config)  # a bad configuration stops the run before any work
    lab = setup.config
    _claim_out(out, force)
    settings_read = _analysis_settings(analysis, setup.analysis)
    settings = RunSettings(
        out=out,
        clinical=clinical,
        kinetics=_kinetics_options(anchor_day0, log_down, settings_read),
        counts=_count_settings(lod_events, lloq_events, below_lod_interval),
        workers=workers,
        scheduler=scheduler,
        html_report=html_report,
        analysis=settings_read,
        haematology=haematology,
        file_names=file_names,
        config=lab,
        review=review,
        lab_gates=_lab_gates(lab_gates or [], lab),
        hematotox=setup.hematotox,
    )
    summary = _run_once(batch_dir, db, manifest, rules, settings)
    raise typer.Exit(summary.exit_code)


def _check_scheduler(address: str) -> None:
    """Fail before any work when no Dask scheduler answers at ``address``."""
    from dask.distributed import Client

    from cartflow.io.errors import first_line

    try:
        with Client(address, timeout="10s"):
            pass
    except (OSError, ValueError, TimeoutError) as exc:
        raise _fail(f"{address}: no Dask scheduler answers there: {first_line(exc)}") from None


def _run_once(batch_dir: Path, db, manifest, rules, settings, only=None):
    """One run with progress bars and a printed summary; its clinical and haematology tables
    are read once, now (a bad haematology table stops it before any work), and handed down."""
    from dataclasses import replace

    from cartflow.run.batch import read_run_inputs, run_batch
    from cartflow.store import Store

    if not batch_dir.is_dir():
        raise _fail(f"{batch_dir}: not a folder")
    _writable(settings.out, folder=True)
    if settings.config is None:
        setup = _lab_setup(None)
        settings = replace(settings, config=setup.config, hematotox=setup.hematotox)
    try:
        loaded_manifest, loaded_rules = _load_context(manifest, rules, settings.config)
        inputs = read_run_inputs(settings.clinical, settings.haematology)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    if settings.scheduler:
        _check_scheduler(settings.scheduler)
    settings = replace(settings, manifest=loaded_manifest, rules=loaded_rules, inputs=inputs)
    store = Store(db)
    try:
        with _progress() as progress:

            def stage(name: str, total: int):
                task = progress.add_task(name, total=total)
                return lambda: progress.advance(task)

            summary = run_batch(batch_dir, store, settings, stage, only)
    finally:
        store.close()
    _print_ingest(summary.ingest, store.display_url, summary.quarantine_report)
    failed = summary.failed
    console.print(
        f"gate: {len(summary.gated) - len(failed)} gated, {summary.already_gated} already "
        f"gated, {len(failed)} failed, {len(summary.flagged)} flagged in this run"
    )
    for work in failed:
        console.print(f"  gating failed: {work.path.name}: {work.error}")
    _print_review_summary(summary.review_queue)
    _print_follow_up(summary.follow)
    if summary.outcome_error:
        console.print(
            Text.assemble(("outcomes not computed:", "red"), f" {summary.outcome_error}")
        )
    elif summary.outcomes is not None:
        where = summary.follow.files["kinetics"].parent / "outcomes"
        console.print(f"outcomes: {len(summary.outcomes.figures)} figures and tables in {where}")
    if summary.report:
        console.print(
            f"report: {summary.report.resolve()} ({summary.plots_drawn} samples' plots and "
            f"{summary.figures_drawn} patient figures drawn, the rest unchanged)"
        )
    if summary.review:
        console.print(f"review workspace: {summary.review}")
    return summary


def _print_review_summary(queue) -> None:
    """One line on the store's review queue (its state, not only this run's files)."""
    samples = {(i.sample_id, i.file) for i in queue}
    console.print(
        f"review: {len(queue)} item(s) on {len(samples)} sample(s) or file(s) in the store "
        "need review" + (" (`cartflow review` lists them)" if queue else "")
    )


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder the cytometer exports into.")],
    manifest: ManifestOption = None,
    clinical: ClinicalOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    out: OutOption = Path("cartflow-out"),
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between looks.")] = 10.0,
    cycles: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many looks (default: never).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    html_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report and its plots.")
    ] = True,
    force: ForceOption = False,
    config: ConfigOption = None,
) -> None:
    """Process files as they arrive, each once it is complete; bad files are quarantined and
    watching goes on."""
    import time

    from cartflow.run.batch import ArrivalWatch, RunSettings

    setup = _lab_setup(config)
    lab = setup.config
    if not folder.is_dir():
        raise _fail(f"{folder}: not a folder")
    _claim_out(out, force)
    settings = RunSettings(  # each run reads the clinical table once (it may change meanwhile)
        out=out,
        clinical=clinical,
        workers=workers,
        html_report=html_report,
        analysis=setup.analysis,
        config=lab,
        lab_gates=_lab_gates([], lab),
        hematotox=setup.hematotox,
    )
    arrivals = ArrivalWatch(folder)
    look = 0
    console.print(f"watch: {folder} every {interval:g} s")
    while cycles is None or look < cycles:
        look += 1
        ready = arrivals.complete()
        if ready:
            console.print(f"watch: {len(ready)} new file(s)")
            _run_once(folder, db, manifest, rules, settings, only=ready)
        if cycles is None or look < cycles:
            time.sleep(interval)
