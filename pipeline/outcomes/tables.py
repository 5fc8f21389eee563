"""The outcome stage's CSV tables and outcomes.json."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.outcomes.common import _jsonable
from pipeline.outcomes.cox import CoxResult
from pipeline.outcomes.groups import CountTest, GroupComparison
from pipeline.outcomes.roc import CutPoint
from pipeline.outcomes.survival import KmSummary
from pipeline.outputs import write_csv, write_text

if TYPE_CHECKING:
    from pipeline.outcomes.stage import OutcomeReport


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


def _km_tables(survival: Iterable[KmSummary]) -> tuple[pd.DataFrame, pd.DataFrame]:
    survival = list(survival)
    estimates = [
        {"endpoint": k.endpoint, "grouping": k.grouping, **asdict(g)}
        for k in survival
        for g in k.groups
    ]
    tests = [
        {"endpoint": k.endpoint, "grouping": k.grouping, **asdict(k.logrank)}
        for k in survival
        if k.logrank is not None
    ]
    return pd.DataFrame(estimates), pd.DataFrame(tests)


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
            "note": r.note,
        }
        rows += [{**base, **asdict(t)} for t in r.terms] or [base]
    return pd.DataFrame(rows)


def _patients_table(data: pd.DataFrame) -> pd.DataFrame:
    return data.apply(lambda c: c.astype(object) if isinstance(c.dtype, pd.CategoricalDtype) else c)


def write_tables(report: OutcomeReport) -> dict[str, Path]:
    """Write every result table as CSV into the report's folder; name → path."""
    km, logranks = _km_tables(report.survival)
    frames = {
        "patients": _patients_table(report.patients),
        "group_summary": _summary_table(report.comparisons),
        "group_tests": pd.DataFrame(_rows(report.comparisons, ("groups",))),
        "count_tests": pd.DataFrame(_rows(report.count_tests, ("counts",))),
        "count_table": _count_table(report.count_tests),
        "cutpoints": _cut_table(report.cutpoints),
        "km_estimates": km,
        "logrank": logranks,
        "followup": pd.DataFrame([asdict(report.followup)]),
        "cox": _cox_table([*report.cox_univariable, *report.cox_multivariable]),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = report.out_dir / f"{name}.csv"
        write_csv(frame, paths[name])
    return paths


def _software() -> dict[str, str]:
    import lifelines
    import scipy
    import sklearn

    return {
        "lifelines": lifelines.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
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
            "figures": [p.name for p in report.figures],
        }
    )


def write_json(report: OutcomeReport, hematotox: Mapping, clinical_source: str) -> Path:
    """Write outcomes.json (strict JSON: no NaN)."""
    payload = report_dict(report, hematotox, clinical_source)
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    write_text(report.json_path, text + "\n")
    return report.json_path
