"""The clinical table of an outcome analysis: loading, validation and per-patient derivations.

A clinical table (CSV or Excel) has one row per patient: infusion date, bridging, marrow
blasts before and after bridging, blood counts before lymphodepletion, event dates and the
last follow-up. Loading collects every problem (row, column, what is wrong) and raises one
:class:`ClinicalTableError`; :func:`validate_clinical` returns the same list without raising.
Derived per patient: EFS and OS in days from infusion, tumour-burden classes and dynamics, and
the ALL-Hematotox score from a configurable point table.

:mod:`.table` holds the columns and records, :mod:`.reading` reads CSV and Excel,
:mod:`.validation` types and checks the cells, :mod:`.endpoints` derives per patient and
:mod:`.hematotox` scores ALL-Hematotox.
"""

from cartflow.pipeline.clinical.endpoints import (
    BURDEN_LEVELS,
    DYNAMICS_LEVELS,
    DeriveOptions,
    EndpointOptions,
    burden_class,
    burden_dynamics,
    derive_endpoints,
    derive_patients,
    infusion_dates,
)
from cartflow.pipeline.clinical.hematotox import (
    HEMATOTOX_PATH,
    HematotoxTable,
    RiskBand,
    ScoreItem,
    ScoreRule,
    hematotox_scores,
    load_hematotox,
    parse_hematotox,
    risk_group,
)
from cartflow.pipeline.clinical.reading import read_clinical
from cartflow.pipeline.clinical.table import (
    BOOL_COLUMNS,
    DATE_COLUMNS,
    EVENT_DATE_COLUMNS,
    EXCEL_SUFFIXES,
    NUMERIC_COLUMNS,
    PERCENT_COLUMNS,
    REQUIRED_COLUMNS,
    ClinicalProblem,
    ClinicalTable,
    ClinicalTableError,
    RawTable,
    SourceKind,
)
from cartflow.pipeline.clinical.validation import load_clinical, validate_clinical

__all__ = [
    "BOOL_COLUMNS",
    "BURDEN_LEVELS",
    "DATE_COLUMNS",
    "DYNAMICS_LEVELS",
    "EVENT_DATE_COLUMNS",
    "EXCEL_SUFFIXES",
    "HEMATOTOX_PATH",
    "NUMERIC_COLUMNS",
    "PERCENT_COLUMNS",
    "REQUIRED_COLUMNS",
    "ClinicalProblem",
    "ClinicalTable",
    "ClinicalTableError",
    "DeriveOptions",
    "EndpointOptions",
    "HematotoxTable",
    "RawTable",
    "RiskBand",
    "ScoreItem",
    "ScoreRule",
    "SourceKind",
    "burden_class",
    "burden_dynamics",
    "derive_endpoints",
    "derive_patients",
    "hematotox_scores",
    "infusion_dates",
    "load_clinical",
    "load_hematotox",
    "parse_hematotox",
    "read_clinical",
    "risk_group",
    "validate_clinical",
]
