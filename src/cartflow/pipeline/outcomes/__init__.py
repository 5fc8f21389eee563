"""Outcome correlation: group comparisons, ROC cut-points, Kaplan-Meier, log-rank and Cox models.

The numerics come from scipy (Mann-Whitney U, Kruskal-Wallis, Fisher exact, chi-square),
scikit-learn (ROC) and lifelines (Kaplan-Meier, log-rank, Cox with Efron ties). Each building
block (:func:`compare_groups`, :func:`compare_counts`, :func:`cutpoint`, :func:`km_summary`,
:func:`cox`, :func:`median_followup`) takes plain columns and returns a frozen result;
:func:`run_outcomes` is the stage that derives per-patient endpoints from a clinical table,
runs every analysis its :class:`OutcomeConfig` names and writes CSV tables, figures and one
``outcomes.json``. Data-derived cut-points are labelled exploratory.

Modules: ``config`` (what is analysed), ``groups``, ``roc``, ``survival``, ``cox`` (the
analyses), ``results`` (what the stage hands on), ``study_tables``, ``tables`` and ``figures``
(what it writes), ``stage`` (the stage itself); each imports only those before it.
"""

from cartflow.pipeline.outcomes.common import ENDPOINTS, EXPLORATORY, OutcomeInputError, as_groups
from cartflow.pipeline.outcomes.config import OutcomeConfig, load_outcome_config, outcome_config
from cartflow.pipeline.outcomes.cox import CoxResult, CoxTerm, cox
from cartflow.pipeline.outcomes.groups import (
    CountTest,
    GroupComparison,
    GroupStats,
    compare_counts,
    compare_groups,
    median_ci,
)
from cartflow.pipeline.outcomes.results import OutcomeReport, PreparedPatients
from cartflow.pipeline.outcomes.roc import (
    CutPoint,
    Roc,
    bootstrap_auc_ci,
    cutpoint,
    horizon_outcome,
    roc,
)
from cartflow.pipeline.outcomes.stage import (
    analyse,
    prepare_patients,
    read_patient_table,
    run_outcomes,
    run_outcomes_from_files,
)
from cartflow.pipeline.outcomes.survival import (
    FollowUp,
    KmGroup,
    KmSummary,
    LogRank,
    fit_km,
    km_summary,
    logrank,
    median_followup,
)
from cartflow.pipeline.outcomes.tables import report_dict, write_json, write_tables

__all__ = [
    "ENDPOINTS",
    "EXPLORATORY",
    "CountTest",
    "CoxResult",
    "CoxTerm",
    "CutPoint",
    "FollowUp",
    "GroupComparison",
    "GroupStats",
    "KmGroup",
    "KmSummary",
    "LogRank",
    "OutcomeConfig",
    "OutcomeInputError",
    "OutcomeReport",
    "PreparedPatients",
    "Roc",
    "analyse",
    "as_groups",
    "bootstrap_auc_ci",
    "compare_counts",
    "compare_groups",
    "cox",
    "cutpoint",
    "fit_km",
    "horizon_outcome",
    "km_summary",
    "load_outcome_config",
    "logrank",
    "median_ci",
    "median_followup",
    "outcome_config",
    "prepare_patients",
    "read_patient_table",
    "report_dict",
    "roc",
    "run_outcomes",
    "run_outcomes_from_files",
    "write_json",
    "write_tables",
]
