"""The study's tables: Table 1 (baseline by bridging), Table 2 (B-cell aplasia) and Table 3
(CAR-T expansion at the peak: overall, by bridging, within subgroups).

Each is a long CSV (one row per variable × level × column, with the numbers and the formatted
cell) and an HTML fragment for the report. Continuous: median (IQR; range), Mann-Whitney for
two groups, Kruskal-Wallis beyond. Categorical: n (%), Fisher exact (2×2) or the exact
Fisher–Freeman–Halton test (r×c). p-values get Benjamini-Hochberg q-values within each table.
Quartiles are numpy's linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cartflow.pipeline.outcomes.common import as_groups
from cartflow.pipeline.outcomes.config import known_names
from cartflow.pipeline.outcomes.groups import compare_counts, compare_groups
from cartflow.pipeline.outcomes.multiplicity import q_values
from cartflow.pipeline.outcomes.subsets import parse_where
from cartflow.pipeline.outcomes.survival import km_summary

if TYPE_CHECKING:
    from cartflow.pipeline.outcomes.results import OutcomeReport, PreparedPatients

OVERALL = "overall"
APLASIA_CATEGORIES = (
    "early B-cell recovery in remission",
    "later B-cell recovery in remission",
    "CD19-negative relapse during aplasia",
    "CD19-positive relapse during aplasia",
    "HSCT during aplasia",
    "persistent aplasia",
    "no B-cell aplasia",
    "no B-cell counts",
)


def _continuous_rows(values: pd.Series, groups: pd.Series, name: str) -> list[dict]:
    rows = []
    columns = [(OVERALL, values.notna())] + [(lv, groups == lv) for lv in groups.cat.categories]
    for column, mask in columns:
        x = values[mask & values.notna()].to_numpy(float)
        missing = int((mask & values.isna()).sum())
        if len(x):
            q1, median, q3 = np.percentile(x, [25, 50, 75])
            text = f"{median:.3g} ({q1:.3g}–{q3:.3g}; {x.min():.3g}–{x.max():.3g})"
            stats = {"median": median, "q1": q1, "q3": q3, "min": x.min(), "max": x.max()}
        else:
            text, stats = "–", {}
        rows.append({"variable": name, "kind": "continuous", "level": None, "column": column,
                     "n": len(x), "missing": missing, **stats, "text": text})  # fmt: skip
    return rows


def _categorical_rows(values: pd.Series, groups: pd.Series, name: str) -> list[dict]:
    labels = as_groups(values)
    rows = []
    columns = [(OVERALL, pd.Series(True, index=values.index))] + [
        (lv, groups == lv) for lv in groups.cat.categories
    ]
    for column, mask in columns:
        present = labels[mask & labels.notna()]
        for level in labels.cat.categories:
            count = int((present == level).sum())
            percent = 100 * count / len(present) if len(present) else math.nan
            text = f"{count} ({percent:.0f} %)" if len(present) else "–"
            rows.append({"variable": name, "kind": "categorical", "level": level,
                         "column": column, "n": len(present),
                         "missing": int((mask & labels.isna()).sum()), "count": count,
                         "percent": percent, "text": text})  # fmt: skip
    return rows


def _is_categorical(values: pd.Series) -> bool:
    if isinstance(values.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(values):
        return True
    present = values.dropna()
    return len(present) > 0 and not all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in present
    )


def describe(
    data: pd.DataFrame, variables: Sequence[str], grouping: str, section: str = "all"
) -> pd.DataFrame:
    """Long table: each variable per column (overall, each group) with its test and p."""
    groups = as_groups(data[grouping]) if grouping in data else None
    if groups is None:
        groups = pd.Series(pd.Categorical([None] * len(data), categories=[]), index=data.index)
    frames = []
    for name in (v for v in variables if v in data):
        values = data[name]
        if _is_categorical(values):
            rows = _categorical_rows(values, groups, name)
            test = compare_counts(values, groups, name, grouping)
        else:
            values = pd.to_numeric(values, errors="coerce").astype(float)
            rows = _continuous_rows(values, groups, name)
            test = compare_groups(values, groups, name, grouping)
        frame = pd.DataFrame(rows).assign(test=test.test, p=test.p, note=test.note)
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "section", section)
    table.insert(1, "grouping", grouping)
    return table


def _with_q(table: pd.DataFrame) -> pd.DataFrame:
    """One q per tested variable and section (the family: this table)."""
    if table.empty:
        return table
    tests = table.drop_duplicates(["section", "variable"])[["section", "variable", "p"]]
    tests = tests.assign(q=q_values(tests["p"].to_numpy(float)))
    table = table.merge(tests[["section", "variable", "q"]], on=["section", "variable"])
    columns = list(table.columns)
    columns.insert(columns.index("p") + 1, columns.pop(columns.index("q")))
    return table[columns]


def table1(report: OutcomeReport) -> pd.DataFrame:
    config = report.config
    return _with_q(describe(report.patients, config.table1_variables, config.table_grouping))


def table3(report: OutcomeReport, notes: list[str]) -> pd.DataFrame:
    """Table 3 overall and within each of ``table3_subgroups``; a subgroup on a known column
    that this clinical table does not give (e.g. no tumour burden) is skipped with a note."""
    config, data = report.config, report.patients
    parts = [describe(data, config.table3_variables, config.table_grouping, "all")]
    for name in config.table3_subgroups:
        where = parse_where(config.subgroups[name], "subgroups")
        if where.column not in data and where.column in known_names(config):
            notes.append(f"Table 3 within {name} ({where}) not computed: no {where.column} data")
            continue
        inside = data[where.mask(data)]
        parts.append(describe(inside, config.table3_variables, config.table_grouping, str(where)))
    return _with_q(pd.concat([p for p in parts if not p.empty], ignore_index=True))


# --- Table 2: B-cell aplasia ------------------------------------------------------------------


def _day(dates: pd.Series, infusion: pd.Series) -> pd.Series:
    return (dates - infusion).dt.days.astype(float)


def aplasia_patients(
    timepoints: pd.DataFrame | None, prepared: PreparedPatients, early_days: float
) -> pd.DataFrame:
    """Per patient: aplasia onset and loss from the counts; relapse, HSCT, CD19 status and
    follow-up from the clinical table; the category, the censored duration and any flag."""
    from cartflow.pipeline.kinetics import B_CELLS, _observations, b_cell_aplasia

    clinical = prepared.clinical.data
    infusion = clinical["infusion_date"]
    day = {c: _day(clinical[c], infusion) if c in clinical else pd.Series(np.nan, clinical.index)
           for c in ("relapse_date", "hsct_date", "last_followup_date")}  # fmt: skip
    cd19neg = clinical.get("cd19_negative_relapse", pd.Series(pd.NA, index=clinical.index))
    has_counts = timepoints is not None and {"tube", "population"} <= set(timepoints.columns)
    points = timepoints if has_counts else pd.DataFrame()  # e.g. a CAR-T-only table: no B cells
    if len(points):
        points = points[(points.tube == B_CELLS.tube) & (points.population == B_CELLS.population)]
        points = points[points.nominal_day >= 0]
    rows = []
    for i, patient in clinical["patient"].items():
        mine = points[points.patient.astype(str) == patient] if len(points) else points
        relapse, hsct, follow = (day[c][i] for c in day)
        row = {"patient": patient, "relapse_day": relapse, "hsct_day": hsct,
               "followup_day": follow, "cd19_negative_relapse": cd19neg[i]}  # fmt: skip
        if mine.empty:
            rows.append(row | {"category": "no B-cell counts"})
            continue
        mine = mine.sort_values("sample_id").drop_duplicates("nominal_day", keep="last")
        aplasia = b_cell_aplasia(_observations(mine))
        aplastic = [s.nominal_day for s in aplasia.statuses if s.aplastic]
        aplasia = _Aplasia(aplasia.onset_day, aplasia.loss_day, max(aplastic, default=None))
        row |= {"onset_day": aplasia.onset_day, "loss_day": aplasia.loss_day}
        rows.append(row | _classify(aplasia, relapse, hsct, follow, cd19neg[i], early_days))
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class _Aplasia:
    onset_day: float | None
    loss_day: float | None
    last_aplastic_day: float | None


def _classify(aplasia: _Aplasia, relapse, hsct, follow, cd19neg, early_days) -> dict:
    if aplasia.onset_day is None:
        return {"category": "no B-cell aplasia"}
    ends = {"relapse": relapse, "HSCT": hsct, "last follow-up": follow}
    ends = {k: v for k, v in ends.items() if pd.notna(v)}
    reason, end = min(ends.items(), key=lambda kv: kv[1]) if ends else ("last sample", math.nan)
    loss, onset = aplasia.loss_day, aplasia.onset_day
    flag = None
    negative = bool(cd19neg) if pd.notna(cd19neg) else None
    if negative and loss is not None and pd.notna(relapse) and loss <= relapse:
        flag = (
            f"clinical CD19-negative relapse on day {relapse:g}, "
            f"counts: B cells back on day {loss:g}"
        )
    if loss is not None and (math.isnan(end) or loss <= end):
        early = loss <= early_days
        category = f"{'early' if early else 'later'} B-cell recovery in remission"
        return {"category": category, "duration_days": loss - onset, "recovered": True,
                "censored_at": None, "flag": flag}  # fmt: skip
    if reason == "relapse":
        recent = aplasia.last_aplastic_day is not None and relapse - aplasia.last_aplastic_day <= 60
        if negative is False and recent:
            flag = f"CD19-positive relapse on day {relapse:g} while the counts show aplasia"
        category = ("CD19-negative" if negative else "CD19-positive") + " relapse during aplasia"
        if negative is None:
            category = "CD19-negative relapse during aplasia"
            flag = "CD19 status of relapse not given"
    elif reason == "HSCT":
        category = "HSCT during aplasia"
    else:
        category = "persistent aplasia"
    return {"category": category, "duration_days": end - onset, "recovered": False,
            "censored_at": reason, "flag": flag}  # fmt: skip


def table2(report: OutcomeReport, patients: pd.DataFrame) -> pd.DataFrame:
    """Categories (n, % per bridging group) and the Kaplan-Meier aplasia duration."""
    config = report.config
    groups = report.patients.set_index("patient")[config.table_grouping] \
        if config.table_grouping in report.patients else None  # fmt: skip
    data = patients.assign(
        category=pd.Categorical(patients["category"], categories=APLASIA_CATEGORIES),
        **{config.table_grouping: patients["patient"].map(groups) if groups is not None else None},
    )
    table = describe(data, ["category"], config.table_grouping, "categories")
    with_aplasia = data[data["duration_days"].notna()] if "duration_days" in data else data[:0]
    rows = []
    if len(with_aplasia):
        km = km_summary(with_aplasia["duration_days"], with_aplasia["recovered"].astype(bool),
                        with_aplasia[config.table_grouping], endpoint="aplasia duration",
                        grouping=config.table_grouping)  # fmt: skip
        overall = km_summary(with_aplasia["duration_days"], with_aplasia["recovered"].astype(bool))
        for column, group in [(OVERALL, overall.groups[0]), *((g.level, g) for g in km.groups)]:
            median, low, high = (
                f"{v:.4g}" if math.isfinite(v) else "not reached"
                for v in (group.median, group.median_ci_low, group.median_ci_high)
            )
            text = f"{median} ({low}–{high})"
            rows.append({"section": "duration (Kaplan-Meier, days)", "grouping":
                         config.table_grouping, "variable": "aplasia_duration_days",
                         "kind": "time to event", "level": "median (95% CI)", "column": column,
                         "n": group.n, "events": group.events, "median": group.median,
                         "q1": group.median_ci_low, "q3": group.median_ci_high, "text": text,
                         "test": "log-rank" if km.logrank else None,
                         "p": km.logrank.p if km.logrank else math.nan})  # fmt: skip
    return _with_q(pd.concat([table, pd.DataFrame(rows)], ignore_index=True))


def study_tables(
    report: OutcomeReport,
    prepared: PreparedPatients,
    timepoints: pd.DataFrame | None,
    notes: list[str],
) -> dict[str, pd.DataFrame]:
    """Tables 1-3 and the per-patient aplasia table; flags become notes."""
    aplasia = aplasia_patients(timepoints, prepared, report.config.early_recovery_days)
    flagged = aplasia[aplasia["flag"].notna()] if "flag" in aplasia else aplasia[:0]
    for row in flagged.itertuples():
        notes.append(f"aplasia: {row.patient}: {row.flag} (clinical table and counts disagree)")
    notes.append(
        "Table 2: aplasia from the B-cell counts, relapse/HSCT/CD19 status from the clinical "
        "table; duration censored at relapse, HSCT or last follow-up"
    )
    return {
        "table1": table1(report),
        "table2_aplasia": table2(report, aplasia),
        "table3_expansion": table3(report, notes),
        "aplasia_patients": aplasia,
    }


def formatted(table: pd.DataFrame, title: str) -> str:
    """The long table as one readable HTML table: a row per variable (and level), a column
    per group, then test, p and q."""
    if table.empty:
        return f"<h2>{title}</h2><p>No data.</p>"
    parts = [f"<h2>{title}</h2>"]
    for section, part in table.groupby("section", sort=False):
        n = part[part["column"] == OVERALL].groupby("variable")["n"].max()
        keys = ["variable", "level"]
        part = part.assign(level=part["level"].fillna(""))
        wide = part.pivot_table(index=keys, columns="column", values="text", aggfunc="first",
                                sort=False)  # fmt: skip
        order = [c for c in dict.fromkeys(part["column"]) if c in wide.columns]
        wide = wide[order]
        tests = part.drop_duplicates("variable").set_index("variable")[["test", "p", "q"]]
        wide = wide.join(tests, on="variable")
        wide.insert(0, "n", [n.get(v, "") for v in wide.index.get_level_values(0)])
        html = wide.to_html(na_rep="", float_format=lambda v: f"{v:.3g}")
        parts.append(f"<h3>{section}</h3>{html}")
    return "".join(parts)
