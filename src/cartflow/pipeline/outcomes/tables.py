"""The outcome stage's CSV tables and outcomes.json."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cartflow.io.outputs import write_csv, write_text
from cartflow.pipeline.outcomes.common import EXPLORATORY, _jsonable
from cartflow.pipeline.outcomes.cox import CoxResult
from cartflow.pipeline.outcomes.groups import CountTest, GroupComparison
from cartflow.pipeline.outcomes.multiplicity import METHOD, number_of_tests, with_q
from cartflow.pipeline.outcomes.roc import CutPoint
from cartflow.pipeline.outcomes.study_tables import formatted
from cartflow.pipeline.outcomes.survival import KmSummary

if TYPE_CHECKING:
    from cartflow.pipeline.outcomes.results import OutcomeReport


def _rows(items: Iterable[Any], drop: Collection[str] = ()) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(item).items() if k not in drop} for item in items]


def _summary_table(comparisons: Iterable[GroupComparison]) -> pd.DataFrame:
    rows = [
        {"grouping": c.grouping, "variable": c.variable, **asdict(g)}
        for c in comparisons
        for g in c.groups
    ]
    return pd.DataFrame(rows)


def _count_table(tests: Iterable[CountTest]) -> pd.DataFrame:
    rows = [
        {
            "grouping": t.grouping,
            "grouping_level": g,
            "variable": t.variable,
            "variable_level": v,
            "count": n,
        }
        for t in tests
        for g, row in t.counts.items()
        for v, n in row.items()
    ]
    return pd.DataFrame(rows)


def _cut_row(cut: CutPoint) -> dict[str, Any]:
    row = {k: v for k, v in asdict(cut).items() if k != "roc"}
    curve = asdict(cut.roc) if cut.roc else {}
    row |= {f"roc_{k}": v for k, v in curve.items() if k not in ("fpr", "tpr")}
    return row | {"high_group": cut.high_label, "low_group": cut.low_label}


def _cut_table(cuts: Iterable[CutPoint]) -> pd.DataFrame:
    return pd.DataFrame([_cut_row(c) for c in cuts])


def _km_tables(report: OutcomeReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    survival = list(report.survival)

    def base(k: KmSummary) -> dict:
        label = EXPLORATORY if k.grouping.endswith("_cut") else None
        return {"endpoint": k.endpoint, "grouping": k.grouping, "landmark_day": k.landmark_day,
                "time_unit": k.time_unit, "label": label}  # fmt: skip

    estimates = [{**base(k), **asdict(g)} for k in survival for g in k.groups]
    tests = [
        {
            **base(k),
            "n": sum(g.n for g in k.groups),
            **asdict(k.logrank),
            "left_out": _km_left_out(report, k),
        }
        for k in survival
        if k.logrank is not None
    ]
    return pd.DataFrame(estimates), pd.DataFrame(tests)


def _km_left_out(report: OutcomeReport, k: KmSummary) -> str:
    days = f"{k.endpoint}_days"
    data = report.patients
    early = data[days].astype(float) <= k.landmark_day if k.landmark_day else data[days].isna()
    text = [f"{p}: not at risk on day {k.landmark_day:g}" for p in data.loc[early, "patient"]]
    text.append(report.left_out([k.grouping], data.index[~early]))
    return "; ".join(t for t in text if t)


def _cox_table(results: Iterable[CoxResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        base = {
            "endpoint": r.endpoint,
            "model": r.model,
            "covariates": " + ".join(r.covariates),
            "n": r.n,
            "events": r.events,
            "concordance": r.concordance,
            "likelihood_ratio_p": r.likelihood_ratio_p,
            "ties": r.ties,
            "landmark_day": r.landmark_day,
            "note": r.note,
        }
        rows += [{**base, **asdict(t)} for t in r.terms] or [base]
    return pd.DataFrame(rows)


def _patients_table(data: pd.DataFrame) -> pd.DataFrame:
    return data.apply(lambda c: c.astype(object) if isinstance(c.dtype, pd.CategoricalDtype) else c)


def _with_n(report: OutcomeReport, frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Add n and who was left out (and why) for the analysis on each row."""
    if frame.empty:
        return frame
    left = [report.left_out(columns(row)) for row in frame.itertuples()]
    n = [report.n_patients - (len(t.split("; ")) if t else 0) for t in left]
    return frame.assign(n=n, left_out=left)


TEST_FAMILIES = ("group_tests", "count_tests", "logrank", "cox_univariable", "table1",
                 "table2_aplasia", "table3_expansion")  # fmt: skip


def multiplicity(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """How many tests each family ran, and the adjustment used."""
    rows = []
    for name in TEST_FAMILIES:
        frame = frames.get(name)
        if frame is None or "p" not in frame:
            continue
        keys = [c for c in ("section", "variable") if name.startswith("table") and c in frame]
        tests = frame.drop_duplicates(keys) if keys else frame
        rows.append({"family": name, "tests": number_of_tests(tests), "adjustment": METHOD})
    return pd.DataFrame(rows)


def write_tables(report: OutcomeReport, hematotox: Mapping | None = None) -> dict[str, Path]:
    """Write every result table as CSV into the report's folder (q-values beside every p,
    n and who was left out beside every test), the study's tables also as HTML; name → path."""
    km, logranks = _km_tables(report)
    cox_table = _cox_table([*report.cox_univariable, *report.cox_multivariable])
    univariable = cox_table[cox_table["model"] == "univariable"] if len(cox_table) else cox_table
    group_tests = _with_n(report, pd.DataFrame(_rows(report.comparisons, ("groups",))),
                          lambda r: [r.variable, r.grouping])  # fmt: skip
    count_tests = _with_n(report, pd.DataFrame(_rows(report.count_tests, ("counts",))),
                          lambda r: [r.variable, r.grouping])  # fmt: skip
    frames = {
        "patients": _patients_table(report.patients),
        "group_summary": _summary_table(report.comparisons),
        "group_tests": with_q(group_tests),
        "count_tests": with_q(count_tests),
        "count_table": _count_table(report.count_tests),
        "cutpoints": _cut_table(report.cutpoints),
        "km_estimates": km,
        "logrank": with_q(logranks),
        "followup": pd.DataFrame([asdict(report.followup)]),
        "cox": pd.concat([with_q(univariable), cox_table.drop(univariable.index)]),
        **(report.study_tables or {}),
    }
    frames["multiplicity"] = multiplicity(frames | {"cox_univariable": univariable})
    paths = {}
    for name, frame in frames.items():
        paths[name] = report.out_dir / f"{name}.csv"
        write_csv(frame, paths[name])
    paths |= _fragments(report, frames, hematotox or {})
    return paths


TITLES = {
    "table1": "Table 1. Baseline characteristics by bridging",
    "table2_aplasia": "Table 2. B-cell aplasia",
    "table3_expansion": "Table 3. CAR-T expansion at the peak",
}


def _fragments(report: OutcomeReport, frames, hematotox: Mapping) -> dict[str, Path]:
    """HTML fragments the report shows first: study tables, caveats, notes, multiplicity."""
    from html import escape

    paths = {}
    for name, title in TITLES.items():
        if name in frames:
            paths[f"{name}_html"] = report.out_dir / f"{name}.html"
            write_text(paths[f"{name}_html"], formatted(frames[name], title))
    counts = frames["multiplicity"]
    tests = ", ".join(f"{r.family}: {r.tests}" for r in counts.itertuples())
    lines = [f"<p>{escape(str(sum(counts['tests'])) if len(counts) else '0')} tests ({tests}); "
             f"q: {escape(METHOD)} within each family. Cut-points chosen on these data are "
             f"{EXPLORATORY}.</p>"]  # fmt: skip
    if hematotox and not hematotox.get("verified", False):
        name, caveat = escape(str(hematotox.get("name"))), escape(str(hematotox.get("caveat", "")))
        lines.insert(0, f"<p class='warning'><b>{name}: unverified.</b> {caveat}</p>")
    lines.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    paths["summary_html"] = report.out_dir / "summary.html"
    write_text(paths["summary_html"], "<h2>Analysis notes</h2>" + "".join(lines))
    return paths


def _software() -> dict[str, str]:
    import lifelines
    import scipy
    import sklearn
    import statsmodels

    return {
        "lifelines": lifelines.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "statsmodels": statsmodels.__version__,
        "pandas": pd.__version__,
    }


def report_dict(report: OutcomeReport, hematotox: Mapping, clinical_source: str) -> dict:
    """Every number of a report as JSON-safe values, with the configuration and provenance."""
    return _jsonable(
        {
            "schema": "cartflow-outcomes/1",
            "clinical_source": clinical_source,
            "n_patients": report.n_patients,
            "config": report.config,
            "hematotox_table": hematotox,
            "software": _software(),
            "notes": report.notes,
            "patients": _patients_table(report.patients).to_dict(orient="records"),
            "followup": report.followup,
            "group_comparisons": report.comparisons,
            "count_tests": report.count_tests,
            "cutpoints": report.cutpoints,
            "survival": report.survival,
            "cox": {
                "univariable": report.cox_univariable,
                "multivariable": report.cox_multivariable,
            },
            "tables": {k: p.name for k, p in report.tables.items()},
            "multiplicity": METHOD,
            "figures": [p.name for p in report.figures],
        }
    )


def write_json(report: OutcomeReport, hematotox: Mapping, clinical_source: str) -> Path:
    """Write outcomes.json (strict JSON: no NaN)."""
    payload = report_dict(report, hematotox, clinical_source)
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    write_text(report.json_path, text + "\n")
    return report.json_path
