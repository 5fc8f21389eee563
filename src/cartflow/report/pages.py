"""The static HTML report: opens from disk, no network resources.

index.html (batch summary, quarantine, QC flags), samples/<id>.html (gate plots and counts),
patients.html (kinetics curve with LOD/LLOQ shading and the summary numbers per patient),
cohort.html (figures and tables of the outcome stage when there is one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from cartflow import __version__
from cartflow.io.outputs import restore, write_bytes, write_text
from cartflow.pipeline.clinical import ClinicalTable
from cartflow.report.density import PLOT_CSS, panel_from_dict, panel_svg
from cartflow.report.plots import PLOTS_VERSION, kinetics_svg, unnumbered
from cartflow.report.sample_page import DENSITY_CSS
from cartflow.store import Store

TEMPLATES = Path(__file__).resolve().parent / "templates"
SAMPLE_IMAGE_DIR = "samples"
STYLE = "report.css"
"""The pages' one style sheet (the template's, with the plots' rules)."""
READABLE_FLAGS = {"below_lod": "below LOD", "below_lloq": "below LLOQ"}


@dataclass(frozen=True)
class WrittenReport:
    index: Path
    """index.html"""
    figures_drawn: int
    """Patients' kinetics figures drawn (the others were kept: same numbers)."""


def plots_dir(report_dir: Path) -> Path:
    """Where the samples' plots are drawn (while gating) and their pages written."""
    return report_dir / SAMPLE_IMAGE_DIR


def sample_plots(report_dir: Path, sha256: str) -> tuple[str, list[dict]]:
    """A sample's drawn plots, ready for its page: (heading, [{svg, title, …}]); nothing
    when none were drawn for it (or they were drawn by an older PLOTS_VERSION: drawn again
    when the sample is gated again)."""
    try:
        record = json.loads(
            (plots_dir(report_dir) / f"{sha256[:16]}.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return "", []
    drawn = plots_dir(report_dir) / record["image"]
    if record.get("version") != PLOTS_VERSION or not drawn.is_file():
        return "", []  # none, or drawn the way an older version drew them
    plots = []
    for data in record["panels"]:
        panel = panel_from_dict(unnumbered(data, record["notes"]))
        plots.append(
            {
                "name": panel.name,
                "svg": panel_svg(panel, record["image"], record["rows"]),
                "title": panel.title,
                "x_label": panel.x_label,
                "y_label": panel.y_label,
                "notes": panel.notes,
            }
        )
    return record["heading"], plots


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


def _content_label(sha256: str | None) -> str:
    return f"SHA-256 {sha256[:12]}…" if sha256 else "(unreadable file)"


def _item_label(item) -> str:
    """A review item's file named without its file name (which may carry PHI)."""
    return f"sample {item.sample_id}" if item.sample_id is not None else _content_label(item.sha256)


def write_report(
    store: Store,
    report_dir: Path,
    timepoints: pd.DataFrame | None = None,
    kinetics: pd.DataFrame | None = None,
    outcomes_dir: Path | None = None,
    file_names: bool = False,
    review: Sequence = (),
    clinical: ClinicalTable | None = None,
    config=None,
) -> WrittenReport:
    """Write the report into ``report_dir``: its pages, and the patients' figures whose
    numbers changed (the samples' plots are drawn while gating). File names (which may
    carry patient names) are shown only with ``file_names``; otherwise a file is named by
    the start of its SHA-256. ``review`` is the review queue (first on index.html and on
    review.html); ``clinical`` (the clinical table as read) marks infusion, relapse, HSCT
    and last follow-up on the patients' curves; ``config`` is the lab configuration whose
    templates define the populations shown."""
    (report_dir / SAMPLE_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    env = _environment()
    style = (TEMPLATES / STYLE).read_text(encoding="utf-8")
    write_text(report_dir / STYLE, f"{style}{PLOT_CSS}\n{DENSITY_CSS}\n")
    common = {
        "version": __version__,
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "store": store.display_url,
    }
    flags = store.sample_flags()
    samples = [asdict(s) for s in store.samples()]  # given their flags and page below
    timepoints = timepoints if timepoints is not None else pd.DataFrame()
    trails: dict[int, list[dict]] = {}  # the audit trail read once, then by sample
    for correction in store.corrections():
        trails.setdefault(correction["sample_id"], []).append(correction)
    counted: dict[int, list[dict]] = {}  # the timepoint rows read once, then by sample
    for row in timepoints.itertuples(index=False) if len(timepoints) else ():
        counted.setdefault(row.sample_id, []).append(_population_row(row))
    for sample in samples:
        sample["flags"] = flags.get(sample["sample_id"], [])
        heading, plots = sample_plots(report_dir, sample["sha256"])
        rows = counted.get(sample["sample_id"], [])
        if not plots and not rows:
            sample["page"] = None
            continue
        page = f"{SAMPLE_IMAGE_DIR}/{sample['sha256'][:16]}.html"
        sample["page"] = page
        write_text(
            report_dir / page,
            env.get_template("sample.html").render(
                title=f"{sample['patient']} {sample['timepoint']} {sample['tube']}",
                root="../",
                sample=sample,
                heading=heading,
                rows=rows,
                **_sample_evidence(
                    store, sample, rows, plots, config, trails.get(sample["sample_id"], [])
                ),
                **common,
            ),
        )
    quarantine = [
        {
            "file": Path(q["path"]).name if file_names else _content_label(q["sha256"]),
            "kind": q["kind"],
            "reason": q["reason"],
        }
        for q in store.quarantined()
    ]
    pages = {s["sample_id"]: s["page"] for s in samples}
    review_rows = [
        asdict(item)
        | {"page": pages.get(item.sample_id)}
        | ({} if file_names or not item.file else {"file": _item_label(item)})
        for item in review
    ]
    write_text(
        report_dir / "review.html",
        env.get_template("review.html").render(
            title="Review", root="", review=review_rows, **common
        ),
    )
    patients, figures_drawn = _patients(
        report_dir, timepoints, kinetics, _clinical_days(clinical), pages
    )
    write_text(
        report_dir / "patients.html",
        env.get_template("patients.html").render(
            title="Patients", root="", patients=patients, **common
        ),
    )
    figures, tables, fragments = _outcomes(report_dir, outcomes_dir)
    write_text(
        report_dir / "cohort.html",
        env.get_template("cohort.html").render(
            title="Cohort", root="", figures=figures, tables=tables, fragments=fragments, **common
        ),
    )
    summary = {
        "files": len(samples),
        "gated": sum(1 for s in samples if s["page"]),
        "patients": len({s["patient"] for s in samples}),
    }
    index = report_dir / "index.html"
    write_text(
        index,
        env.get_template("index.html").render(
            title="Batch report",
            root="",
            summary=summary,
            review=review_rows,
            quarantine=quarantine,
            flagged=[s for s in samples if s["flags"]],
            samples=sorted(samples, key=lambda s: (s["patient"], s["nominal_day"], s["tube"])),
            **common,
        ),
    )
    return WrittenReport(index, figures_drawn)


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


def _sample_evidence(
    store: Store,
    sample: dict,
    rows: list[dict],
    plots: list[dict],
    config=None,
    corrections: Sequence[dict] = (),
) -> dict:
    """A sample page's evidence: each population with its gate plots and defining cuts, the
    flags with their severity, the corrections of its audit trail (``corrections``)."""
    from cartflow.io.errors import CartflowError
    from cartflow.pipeline.gate import template_for
    from cartflow.pipeline.triage import reported_gates
    from cartflow.report.sample_page import density_symbols, flag_rows, population_sections

    try:
        template = config.template(sample["tube"]) if config else template_for(sample["tube"])
    except CartflowError:
        template = None
    sections = population_sections(template, rows, store.latest_cuts(sample["sample_id"]), plots)
    return {
        "sections": sections,
        "densities": density_symbols(sections),
        "flag_rows": flag_rows(sample["flags"], reported_gates(sample["tube"], config)),
        "corrections": corrections,
    }


CLINICAL_EVENTS = {
    "relapse": "relapse_date",
    "HSCT": "hsct_date",
    "last follow-up": "last_followup_date",
}
"""Clinical dates marked on a patient's curves (as days from infusion)."""


def _clinical_days(clinical: ClinicalTable | None) -> dict[str, dict[str, float]]:
    """Per patient: infusion (day 0) and the days of relapse, HSCT and last follow-up."""
    if clinical is None:
        return {}
    data = clinical.data
    days: dict[str, dict[str, float]] = {}
    for row in data[data["infusion_date"].notna()].itertuples(index=False):
        marks = {"infusion": 0.0}
        for label, column in CLINICAL_EVENTS.items():
            when = getattr(row, column, None)
            if when is not None and not pd.isna(when):
                marks[label] = float((when - row.infusion_date).days)
        days[str(row.patient)] = marks
    return days


def _patients(
    report_dir: Path,
    timepoints: pd.DataFrame,
    kinetics: pd.DataFrame | None,
    clinical_days: dict[str, dict[str, float]] | None = None,
    pages: dict[int, str | None] | None = None,
):
    links = {i: page for i, page in (pages or {}).items() if page}
    if timepoints is None or timepoints.empty:
        return [], 0
    kinetics = kinetics if kinetics is not None else pd.DataFrame()
    patients = []
    drawn = 0
    for patient, rows in timepoints.groupby("patient", sort=True):
        image, new = _kinetics_image(
            rows, patient, report_dir / "patients", (clinical_days or {}).get(patient), links
        )
        drawn += new
        summary = []
        if len(kinetics):
            record = kinetics[kinetics.patient == patient]
            if len(record):
                summary = [
                    (column, _fmt(value))
                    for column, value in record.iloc[0].items()
                    if column != "patient" and _summary_column(column)
                ]
        inline = image.read_text(encoding="utf-8")  # drawn here, from the store's numbers
        points = [
            {
                "day": r.nominal_day,
                "timepoint": r.timepoint,
                "population": r.population,
                "cells": _fmt(r.cells_per_ul),
                "page": links.get(r.sample_id),
            }
            for r in rows[rows.population.isin(["CAR", "B"])].itertuples(index=False)
        ]
        patients.append(
            {
                "patient": patient,
                "image": f"patients/{image.name}",
                "svg": Markup(inline),
                "summary": summary,
                "points": points,
            }
        )
    return patients, drawn


def _kinetics_image(
    rows: pd.DataFrame,
    patient: str,
    folder: Path,
    events: dict[str, float] | None = None,
    pages: dict[int, str] | None = None,
) -> tuple[Path, bool]:
    """A patient's kinetics figure (SVG), written only when it changed; returns its path and
    whether it was written now."""
    path = folder / f"{patient}.svg"
    drawn = kinetics_svg(rows, events, pages)
    try:
        if path.read_text(encoding="utf-8") == drawn:
            return path, False
    except OSError:
        pass
    write_bytes(path, drawn.encode())
    return path, True


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
            frame = pd.read_csv(csv, dtype={"patient": str}).map(restore)  # '001' stays '001'
        except pd.errors.EmptyDataError:  # an analysis with nothing to report
            frame = pd.DataFrame()
        tables.append(
            (csv.stem, frame.head(200).to_html(index=False, na_rep="", float_format="%.4g"))
        )
    return [os.path.relpath(f, report_dir) for f in figures], tables, fragments
