"""What the outcome stage hands on: its report (:class:`OutcomeReport`), the prepared
per-patient data (:class:`PreparedPatients`) and who an analysis left out and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cartflow.pipeline.clinical import ClinicalTable, HematotoxTable
from cartflow.pipeline.outcomes.config import OutcomeConfig
from cartflow.pipeline.outcomes.cox import CoxResult
from cartflow.pipeline.outcomes.groups import CountTest, GroupComparison
from cartflow.pipeline.outcomes.roc import CutPoint
from cartflow.pipeline.outcomes.survival import FollowUp, KmSummary


def left_out(
    data: pd.DataFrame,
    reasons: pd.DataFrame | None,
    columns: Iterable[str],
    rows: pd.Index | None = None,
) -> str:
    """'patient: why' for each patient (of ``rows``) missing any of ``columns``."""
    frame = data if rows is None else data.loc[rows]
    columns = [c for c in columns if c in frame]
    parts = []
    for index, row in frame[columns].iterrows():
        missing = [c for c in columns if pd.isna(row[c])]
        if not missing:
            continue
        patient = data.at[index, "patient"]
        why = []
        for c in missing:
            reason = None
            if reasons is not None and c in reasons and patient in reasons.index:
                reason = reasons.at[patient, c]
            why.append(f"{c} {reason}" if isinstance(reason, str) else f"{c} missing")
        parts.append(f"{patient}: {', '.join(why)}")
    return "; ".join(parts)


@dataclass(frozen=True)
class OutcomeReport:
    """Everything the outcome stage computed, where it wrote it, and what it skipped."""

    out_dir: Path
    n_patients: int
    patients: pd.DataFrame
    comparisons: tuple[GroupComparison, ...]
    count_tests: tuple[CountTest, ...]
    cutpoints: tuple[CutPoint, ...]
    survival: tuple[KmSummary, ...]
    followup: FollowUp
    cox_univariable: tuple[CoxResult, ...]
    cox_multivariable: tuple[CoxResult, ...]
    tables: Mapping[str, Path]
    figures: tuple[Path, ...]
    json_path: Path
    notes: tuple[str, ...]
    config: OutcomeConfig
    groupings: tuple[str, ...] = ()
    reasons: pd.DataFrame | None = None  # patient × column: why a value is missing
    study_tables: Mapping[str, pd.DataFrame] | None = None

    def left_out(self, columns: Iterable[str], rows: pd.Index | None = None) -> str:
        """Who lacks any of ``columns`` (among ``rows``) and why, e.g. 'P1: no samples'."""
        return left_out(self.patients, self.reasons, columns, rows)

    def comparison(self, grouping: str, variable: str) -> GroupComparison:
        return next(
            c for c in self.comparisons if c.grouping == grouping and c.variable == variable
        )

    def km(self, endpoint: str, grouping: str = "overall", landmark_day: float | None = None):
        return next(
            k
            for k in self.survival
            if k.endpoint == endpoint
            and k.grouping == grouping
            and landmark_day in (None, k.landmark_day)
        )

    def cut(self, variable: str) -> CutPoint:
        return next(c for c in self.cutpoints if c.variable == variable)

    def cox(self, endpoint: str, covariate: str, model: str = "univariable") -> CoxResult:
        pool = self.cox_univariable if model == "univariable" else self.cox_multivariable
        return next(r for r in pool if r.endpoint == endpoint and covariate in r.covariates)


@dataclass(frozen=True)
class PreparedPatients:
    """Per-patient analysis data with the clinical table and point table it came from."""

    data: pd.DataFrame
    clinical: ClinicalTable
    hematotox: HematotoxTable
    reasons: pd.DataFrame | None = None
