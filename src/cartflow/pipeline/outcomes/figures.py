"""Figures of the outcome stage (matplotlib, Agg): Kaplan-Meier curves with numbers at risk,
CAR-T expansion per group (median and IQR, log scale), box/strip plots with p-values and ROC
curves. Each figure is written as PNG and SVG; the numbers drawn come from the report."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.io.outputs import write_csv
from cartflow.pipeline.outcomes.common import ENDPOINTS, EXPLORATORY, as_groups
from cartflow.pipeline.outcomes.config import TIME_UNITS
from cartflow.pipeline.outcomes.groups import GroupComparison
from cartflow.pipeline.outcomes.results import OutcomeReport
from cartflow.pipeline.outcomes.survival import KmSummary, fit_km, landmark_frame

TIMEPOINT_COLUMNS = ("patient", "nominal_day", "car_t_per_ul")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "cartflow"
    return plt


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def save_figure(fig, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write a figure in each format (SVG without a date, for reproducible files); close it."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        metadata = {"Date": None} if fmt == "svg" else None
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    _pyplot().close(fig)
    return paths


# --- Kaplan-Meier -----------------------------------------------------------------------------


def km_figure(
    data: pd.DataFrame,
    summary: KmSummary,
    stem: Path,
    formats: Sequence[str] = ("png", "svg"),
    confidence: float = 0.95,
) -> list[Path]:
    """Kaplan-Meier curves of one endpoint per group, numbers at risk below, log-rank p."""
    from lifelines.plotting import add_at_risk_counts

    plt = _pyplot()
    days, event = ENDPOINTS[summary.endpoint]
    scale = TIME_UNITS.get(summary.time_unit, 1.0)
    data = landmark_frame(data, days, summary.landmark_day)
    overall = summary.grouping == "overall"
    groups = as_groups(pd.Series("all", index=data.index) if overall else data[summary.grouping])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fitters = []
    for level in summary.groups:
        mask = (groups == level.level) & data[days].notna()
        kmf = fit_km(
            data.loc[mask, days].to_numpy(float) / scale,
            data.loc[mask, event].to_numpy(bool),
            level.level,
            confidence,
        )
        kmf.plot_survival_function(ax=ax, ci_show=overall, show_censors=True)
        fitters.append(kmf)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    test = f", log-rank {_p_text(summary.logrank.p)}" if summary.logrank else ""
    title = f"{summary.endpoint.upper()} by {summary.grouping}{test}"
    if summary.grouping.endswith("_cut"):
        title += f"\n{EXPLORATORY} cut-off"
    start = f"day {summary.landmark_day:g} (landmark)" if summary.landmark_day else "infusion"
    if summary.landmark_day:
        title += f"; patients at risk on day {summary.landmark_day:g}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{summary.time_unit} since {start}")
    ax.set_ylabel(f"{summary.endpoint.upper()} probability")
    ax.set_ylim(0, 1.05)
    return save_figure(fig, stem, formats)


# --- group comparisons ------------------------------------------------------------------------


def _strip(ax, samples: list[np.ndarray], rng: np.random.Generator) -> None:
    for i, values in enumerate(samples, start=1):
        jitter = rng.uniform(-0.12, 0.12, len(values))
        ax.scatter(np.full(len(values), i) + jitter, values, s=12, alpha=0.7, zorder=3)


def box_figure(
    data: pd.DataFrame,
    comparisons: Sequence[GroupComparison],
    stem: Path,
    formats: Sequence[str] = ("png", "svg"),
    log_variables: Sequence[str] = (),
) -> list[Path]:
    """Box and strip plots of each variable across one grouping, each with its test's p."""
    plt = _pyplot()
    n = len(comparisons)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, comparison in zip(axes.flat, comparisons, strict=False):
        groups = as_groups(data[comparison.grouping])
        values = data[comparison.variable]
        levels = [g.level for g in comparison.groups]
        samples = [values[(groups == lv) & values.notna()].to_numpy(float) for lv in levels]
        ax.boxplot(samples, showfliers=False, widths=0.5)
        _strip(ax, samples, rng)
        ax.set_xticks(
            range(1, len(levels) + 1),
            [f"{lv}\n(n={len(s)})" for lv, s in zip(levels, samples, strict=True)],
            fontsize=8,
        )
        positive = all((s > 0).all() for s in samples if len(s))
        if comparison.variable in log_variables and positive:
            ax.set_yscale("log")
        ax.set_title(
            f"{comparison.variable}\n{comparison.test or 'no test'}, {_p_text(comparison.p)}",
            fontsize=9,
        )
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"by {comparisons[0].grouping}")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


# --- ROC --------------------------------------------------------------------------------------


def roc_figure(report: OutcomeReport, stem: Path, formats: Sequence[str] = ("png", "svg")):
    """ROC curves of every cut-point variable against the EFS event within the horizon."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for cut in (c for c in report.cutpoints if c.roc):
        r = cut.roc
        interval = f"[{r.auc_ci_low:.2f}–{r.auc_ci_high:.2f}]"
        label = f"{cut.variable} ({r.direction}) AUC {r.auc:.2f} {interval}"
        ax.plot(r.fpr, r.tpr, drawstyle="steps-post", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"EFS event ≤ {report.config.horizon_days:g} days — {EXPLORATORY}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, stem, formats)


# --- expansion --------------------------------------------------------------------------------


def car_t_points(timepoints: pd.DataFrame) -> pd.DataFrame:
    """CAR-T cells/µL per patient and nominal day from a timepoint table (or as given)."""
    if "population" not in timepoints or "car_t_per_ul" in timepoints:
        return timepoints
    car = timepoints[(timepoints.tube == "memory") & (timepoints.population == "CAR")]
    return car.rename(columns={"cells_per_ul": "car_t_per_ul"})


def expansion_summary(timepoints: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Median and IQR of CAR-T/µL per group and nominal day (patient medians first)."""
    per_patient = timepoints.groupby(["patient", "nominal_day"], as_index=False)[
        "car_t_per_ul"
    ].median()
    labelled = per_patient.assign(level=per_patient["patient"].map(groups)).dropna(
        subset=["level", "car_t_per_ul"]
    )
    grouped = labelled.groupby(["level", "nominal_day"], observed=True)["car_t_per_ul"]
    return grouped.agg(
        n="count",
        median="median",
        q1=lambda v: v.quantile(0.25),
        q3=lambda v: v.quantile(0.75),
    ).reset_index()


def expansion_figure(
    summary: pd.DataFrame, grouping: str, stem: Path, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """CAR-T cells/µL over days per group: median line with IQR band, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for level, part in summary.groupby("level", observed=True, sort=False):
        part = part.sort_values("nominal_day")
        ax.plot(part["nominal_day"], part["median"], marker="o", label=str(level))
        ax.fill_between(part["nominal_day"], part["q1"], part["q3"], alpha=0.2)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("days since infusion (nominal)")
    ax.set_ylabel("CAR-T cells/µL (median, IQR)")
    ax.set_title(f"CAR-T expansion by {grouping}")
    ax.legend(fontsize=8)
    return save_figure(fig, stem, formats)


def _expansion(report, groupings, timepoints, tables, notes) -> list[Path]:
    timepoints = car_t_points(timepoints)
    missing = [c for c in TIMEPOINT_COLUMNS if c not in timepoints.columns]
    if missing:
        notes.append(f"timepoints table lacks {missing}: expansion figures skipped")
        return []
    points = timepoints.assign(
        patient=timepoints["patient"].astype(str),
        nominal_day=pd.to_numeric(timepoints["nominal_day"], errors="coerce"),
        car_t_per_ul=pd.to_numeric(timepoints["car_t_per_ul"], errors="coerce"),
    )
    data = report.patients.set_index("patient")
    paths, frames = [], []
    for grouping in groupings:
        summary = expansion_summary(points, as_groups(data[grouping]))
        if summary.empty:
            continue
        frames.append(summary.assign(grouping=grouping))
        stem = report.out_dir / f"expansion_{_slug(grouping)}"
        paths += expansion_figure(summary, grouping, stem, report.config.figure_formats)
    if frames:
        tables["expansion_summary"] = report.out_dir / "expansion_summary.csv"
        write_csv(pd.concat(frames), tables["expansion_summary"])
    return paths


def write_figures(
    report: OutcomeReport,
    timepoints: pd.DataFrame | None,
    tables: dict[str, Path],
    notes: list[str],
) -> list[Path]:
    """Every figure of a report into its folder; adds the expansion table to ``tables``."""
    formats, out, groupings = report.config.figure_formats, report.out_dir, report.groupings
    paths: list[Path] = []
    for summary in report.survival:
        if summary.groups:
            landmark = f"_landmark{summary.landmark_day:g}" if summary.landmark_day else ""
            stem = out / f"km_{summary.endpoint}_{_slug(summary.grouping)}{landmark}"
            paths += km_figure(report.patients, summary, stem, formats, report.config.confidence)
    for grouping in groupings:
        comparisons = [c for c in report.comparisons if c.grouping == grouping]
        if comparisons:
            stem = out / f"box_{_slug(grouping)}"
            paths += box_figure(
                report.patients, comparisons, stem, formats, report.config.log10_variables
            )
    if any(c.roc for c in report.cutpoints):
        paths += roc_figure(report, out / "roc_efs", formats)
    if timepoints is not None:
        paths += _expansion(report, groupings, timepoints, tables, notes)
    return paths
