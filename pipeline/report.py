"""The static HTML report: opens from disk, no network resources.

index.html (batch summary, quarantine, QC flags), samples/<id>.html (gate plots and counts),
patients.html (kinetics curve with LOD/LLOQ shading and the summary numbers per patient),
cohort.html (figures and tables of the outcome stage when there is one).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pipeline import __version__
from pipeline.plots import kinetics_figure
from pipeline.store import Store

TEMPLATES = Path(__file__).resolve().parent / "report_templates"
SAMPLE_IMAGE_DIR = "samples"
READABLE_FLAGS = {"below_lod": "below LOD", "below_lloq": "below LLOQ"}


def overview_path(report_dir: Path, sha256: str) -> Path:
    """Where the gating overview PNG of a sample goes (written while gating)."""
    return report_dir / SAMPLE_IMAGE_DIR / f"{sha256[:16]}.png"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


def write_report(
    store: Store,
    report_dir: Path,
    timepoints: pd.DataFrame | None = None,
    kinetics: pd.DataFrame | None = None,
    outcomes_dir: Path | None = None,
) -> Path:
    """Write the report into ``report_dir``; returns the path of index.html."""
    (report_dir / SAMPLE_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    env = _environment()
    common = {
        "version": __version__,
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "store": store.display_url,
    }
    flags = store.sample_flags()
    samples = store.samples()
    timepoints = timepoints if timepoints is not None else pd.DataFrame()
    for sample in samples:
        sample["flags"] = flags.get(sample["sample_id"], [])
        image = overview_path(report_dir, sample["sha256"])
        rows = (
            timepoints[timepoints.sample_id == sample["sample_id"]]
            if len(timepoints)
            else pd.DataFrame()
        )
        if not image.is_file() and rows.empty:
            sample["page"] = None
            continue
        page = f"{SAMPLE_IMAGE_DIR}/{sample['sha256'][:16]}.html"
        sample["page"] = page
        (report_dir / page).write_text(
            env.get_template("sample.html").render(
                title=f"{sample['patient']} {sample['timepoint']} {sample['tube']}",
                root="../",
                sample=sample,
                image=image.name if image.is_file() else "",
                rows=[_population_row(r) for r in rows.itertuples(index=False)],
                **common,
            ),
            encoding="utf-8",
        )
    quarantine = [
        {"file": Path(q["path"]).name, "kind": q["kind"], "reason": q["reason"]}
        for q in store.quarantined()
    ]
    patients = _patients(report_dir, timepoints, kinetics)
    (report_dir / "patients.html").write_text(
        env.get_template("patients.html").render(
            title="Patients", root="", patients=patients, **common
        ),
        encoding="utf-8",
    )
    figures, tables, fragments = _outcomes(report_dir, outcomes_dir)
    (report_dir / "cohort.html").write_text(
        env.get_template("cohort.html").render(
            title="Cohort", root="", figures=figures, tables=tables, fragments=fragments, **common
        ),
        encoding="utf-8",
    )
    summary = {
        "files": len(samples),
        "gated": sum(1 for s in samples if s["page"]),
        "patients": len({s["patient"] for s in samples}),
    }
    index = report_dir / "index.html"
    index.write_text(
        env.get_template("index.html").render(
            title="Batch report",
            root="",
            summary=summary,
            quarantine=quarantine,
            flagged=[s for s in samples if s["flags"]],
            samples=sorted(samples, key=lambda s: (s["patient"], s["nominal_day"], s["tube"])),
            **common,
        ),
        encoding="utf-8",
    )
    return index


def _population_row(row) -> dict:
    ci = ""
    if row.cells_ci_low is not None and not pd.isna(row.cells_ci_low):
        ci = f"{_fmt(row.cells_ci_low)} – {_fmt(row.cells_ci_high)}"
    raw = "" if pd.isna(row.count_flags) else row.count_flags
    flags = [READABLE_FLAGS.get(flag, flag) for flag in raw.split(";") if flag]
    if "below LOD" in flags and "below LLOQ" in flags:  # below the LOD says it all
        flags.remove("below LLOQ")
    return {
        "population": row.population,
        "parent": row.parent,
        "events": row.events,
        "percent": _fmt(row.percent_of_parent) if row.percent_evaluable else "not evaluable",
        "cells": _fmt(row.cells_per_ul),
        "ci": ci,
        "flags": ", ".join(flags),
    }


def _patients(report_dir: Path, timepoints: pd.DataFrame, kinetics: pd.DataFrame | None):
    if timepoints is None or timepoints.empty:
        return []
    kinetics = kinetics if kinetics is not None else pd.DataFrame()
    patients = []
    for patient, rows in timepoints.groupby("patient", sort=True):
        image = kinetics_figure(rows, patient, report_dir / "patients" / f"{patient}.png")
        summary = []
        if len(kinetics):
            record = kinetics[kinetics.patient == patient]
            if len(record):
                summary = [
                    (column, _fmt(value))
                    for column, value in record.iloc[0].items()
                    if column != "patient" and _summary_column(column)
                ]
        patients.append({"patient": patient, "image": f"patients/{image.name}", "summary": summary})
    return patients


def _summary_column(column: str) -> bool:
    return column.startswith(("car_t_", "b_cell")) or "pct" in column or column == "expanded"


OUTCOME_FRAGMENTS = ("summary", "table1", "table2_aplasia", "table3_expansion")


def _outcomes(report_dir: Path, outcomes_dir: Path | None):
    if outcomes_dir is None or not outcomes_dir.is_dir():
        return [], [], []
    fragments = [
        (outcomes_dir / f"{name}.html").read_text(encoding="utf-8")
        for name in OUTCOME_FRAGMENTS
        if (outcomes_dir / f"{name}.html").is_file()
    ]
    figures = sorted(outcomes_dir.glob("*.png"))
    tables = []
    for csv in sorted(outcomes_dir.glob("*.csv")):
        try:
            frame = pd.read_csv(csv, dtype={"patient": str})  # '001' stays '001'
        except pd.errors.EmptyDataError:  # an analysis with nothing to report
            frame = pd.DataFrame()
        tables.append(
            (csv.stem, frame.head(200).to_html(index=False, na_rep="", float_format="%.4g"))
        )
    return [os.path.relpath(f, report_dir) for f in figures], tables, fragments
