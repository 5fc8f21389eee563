"""``cartflow kinetics``, ``outcomes`` and ``export``: tables from the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cartflow.cli.app import (
    _claim_out,
    _fail,
    _lab_setup,
    _writable,
    app,
    console,
)
from cartflow.cli.batch import _print_follow_up
from cartflow.cli.options import (
    AnchorOption,
    BelowLodOption,
    ConfigOption,
    DbOption,
    ForceOption,
    HaematologyOption,
    LloqOption,
    LodOption,
    LogDownOption,
    OutOption,
    _analysis_settings,
    _clinical_table,
    _count_settings,
    _haematology,
    _kinetics_options,
)
from cartflow.io.errors import CartflowError


@app.command()
def kinetics(
    db: DbOption = None,
    out: OutOption = Path("cartflow-out"),
    clinical: Annotated[
        Path | None, typer.Option(help="Clinical table (infusion dates for actual days).")
    ] = None,
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    haematology: HaematologyOption = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    config: ConfigOption = None,
    force: ForceOption = False,
) -> None:
    """Counts per timepoint and kinetics per patient from the store (kinetics.csv/.parquet,
    timepoints.csv/.parquet); the configuration's analysis settings give the expansion
    threshold."""
    from cartflow.run.batch import follow_up
    from cartflow.store import Store

    setup = _lab_setup(config)
    lab = setup.config
    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    options = _kinetics_options(anchor_day0, log_down, setup.analysis)
    _claim_out(out, force)
    table, haematology_counts = _clinical_table(clinical), _haematology(haematology)
    store = Store(db, existing=True)
    parameters = {"anchor_day0": anchor_day0, "log_down": log_down, "counts": counts.__dict__,
                  "kinetics": options.__dict__, **lab.provenance()}  # fmt: skip
    try:
        with store.recording("kinetics", parameters) as run_id:
            follow = follow_up(
                store,
                run_id,
                out,
                clinical=table,
                options=options,
                haematology=haematology_counts,
                count_settings=counts,
            )
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    _print_follow_up(follow)


@app.command()
def outcomes(
    clinical: Annotated[Path, typer.Option(help="Clinical table (CSV or Excel).")],
    db: DbOption = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "cartflow-out/outcomes"
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CARTFLOW_CONFIG",
            help="Lab configuration folder (its analysis.yaml and hematotox.yaml), or an "
            "analysis.yaml file overriding the defaults.",
        ),
    ] = None,
    analysis: Annotated[
        Path | None, typer.Option(help="analysis.yaml (default: the configuration's).")
    ] = None,
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    haematology: HaematologyOption = None,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
) -> None:
    """Outcome correlation: group comparisons, ROC cut-points, Kaplan-Meier, log-rank, Cox.

    The per-patient variables come from the store with the same count and AUC options as
    `kinetics`; the timepoints and kinetics tables they come from are written into --out."""
    from cartflow.pipeline.clinical import load_clinical
    from cartflow.run.batch import follow_up, outcomes_stage
    from cartflow.store import Store

    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    hematotox = None
    if config is not None and config.is_dir():
        setup = _lab_setup(config)  # its analysis.yaml and hematotox.yaml read once, here
        settings = _analysis_settings(analysis, setup.analysis)
        analysis = analysis or setup.config.analysis
        hematotox = setup.hematotox
    else:  # config: an analysis.yaml, as before configuration folders
        analysis = analysis or config
        settings = _analysis_settings(analysis)
    options = _kinetics_options(anchor_day0, log_down, settings)
    _writable(out, folder=True)
    haematology_counts = _haematology(haematology)
    store = Store(db, existing=True)
    parameters = {"clinical": str(clinical), "config": str(config), "analysis": str(analysis),
                  "anchor_day0": anchor_day0, "log_down": log_down,
                  "counts": counts.__dict__}  # fmt: skip
    try:
        with store.recording("outcomes", parameters) as run_id:
            known = {s.patient for s in store.samples()}  # each clinical row needs results
            table = load_clinical(clinical, known)
            follow = follow_up(
                store,
                run_id,
                out,
                clinical=table,
                options=options,
                haematology=haematology_counts,
                count_settings=counts,
            )
            report = outcomes_stage(follow, table, out, settings, hematotox)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    console.print(f"outcomes: {len(report.figures)} figures, tables and outcomes.json in {out}")
    for note in report.notes:
        console.print(f"  note: {note}")


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the tables.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    db: DbOption = None,
    clinical: Annotated[
        Path | None, typer.Option(help="Clinical table (infusion dates for actual days).")
    ] = None,
    pseudonymise: Annotated[
        bool,
        typer.Option(
            help="Replace patient ids by keyed pseudonyms (key from CARTFLOW_PSEUDONYM_KEY)."
        ),
    ] = False,
    lod_events: LodOption = 20,
    lloq_events: LloqOption = 50,
    below_lod_interval: BelowLodOption = "zero",
    anchor_day0: AnchorOption = False,
    log_down: LogDownOption = False,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Also write OUT/review: one FlowJo 10 workspace per patient and Gating-ML "
            "per sample (each sample's gates placed again from its file, written only if "
            "they give the stored counts).",
        ),
    ] = False,
    config: ConfigOption = None,
    force: ForceOption = False,
) -> None:
    """Tidy tables (samples, populations, timepoints, kinetics) with a data dictionary; the
    configuration gives the analysis settings (expansion threshold) and, with --review, the
    templates and panels the gates are placed again with."""
    from cartflow.report.export import export as export_tables
    from cartflow.store import Store

    setup = _lab_setup(config)
    lab = setup.config
    counts = _count_settings(lod_events, lloq_events, below_lod_interval)
    kinetics = _kinetics_options(anchor_day0, log_down, setup.analysis)
    key = None
    if pseudonymise:
        key = os.environ.get("CARTFLOW_PSEUDONYM_KEY")
        if not key:
            raise _fail("--pseudonymise needs a key in the CARTFLOW_PSEUDONYM_KEY variable")
    if review and pseudonymise:
        raise _fail("--review with --pseudonymise: workspaces carry the files' own keywords")
    _claim_out(out, force)
    table = _clinical_table(clinical)
    store = Store(db, existing=True)
    try:
        written = export_tables(store, out, fmt, key, table, counts, kinetics)
        workspaces, notes = [], []
        if review:
            from cartflow.run.review import export_review

            workspaces, notes = export_review(store, out / "review", lab)
    except CartflowError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    console.print(f"export: {len(written)} files in {out}")
    if review:
        console.print(f"review: {len(workspaces)} FlowJo workspace(s) in {out / 'review'}")
        for note in notes:
            console.print(f"  left out: {note}")
