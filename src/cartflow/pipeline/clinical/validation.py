"""Parsing and validating a clinical table: typed columns, every problem with its row and column."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.pipeline.clinical.reading import read_clinical
from cartflow.pipeline.clinical.table import (
    BOOL_COLUMNS,
    DATE_COLUMNS,
    EVENT_DATE_COLUMNS,
    NUMERIC_COLUMNS,
    PERCENT_COLUMNS,
    REQUIRED_COLUMNS,
    ClinicalProblem,
    ClinicalTable,
    ClinicalTableError,
    RawTable,
)

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]00:00(?::00(?:\.0+)?)?)?$")


_DOTTED_DATE = re.compile(r"^\d{1,2}\.\d{1,2}\.\d{4}$")


_TRUE = frozenset({"true", "yes", "y", "1", "ja"})


_FALSE = frozenset({"false", "no", "n", "0", "nein"})


_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


@dataclass
class _Collector:
    raw: RawTable
    problems: list[ClinicalProblem] = field(default_factory=list)

    def add(self, message: str, row_index: int | None = None, column: str | None = None) -> None:
        row = None if row_index is None else int(row_index) + 1
        line = None if row is None else self.raw.line(row)
        self.problems.append(ClinicalProblem(message, row, column, line, self.raw.line_kind))

    def add_many(self, mask: pd.Series, column: str, message) -> None:
        for index in mask[mask].index:
            self.add(message(index), index, column)


def _parse_dates(cells: pd.Series) -> pd.Series:
    iso = cells.str.match(_ISO_DATE)
    dotted = cells.str.match(_DOTTED_DATE)
    out = pd.Series(pd.NaT, index=cells.index, dtype="datetime64[ns]")
    day = cells.str.slice(0, 10)
    out[iso] = pd.to_datetime(day[iso], format="%Y-%m-%d", errors="coerce")
    out[dotted] = pd.to_datetime(cells[dotted], format="%d.%m.%Y", errors="coerce")
    return out


def _parse_numbers(cells: pd.Series, decimal_comma: bool) -> pd.Series:
    text = cells.str.replace(" ", "", regex=False)
    if decimal_comma:
        comma = text.str.match(_DECIMAL_COMMA)
        text = text.where(~comma, text.str.replace(",", ".", regex=False))
    numbers = pd.to_numeric(text, errors="coerce")
    return numbers.where(np.isfinite(numbers))


def _parse_bools(cells: pd.Series) -> pd.Series:
    lower = cells.str.lower()
    out = pd.Series(pd.NA, index=cells.index, dtype="boolean")
    out[lower.isin(_TRUE)] = True
    out[lower.isin(_FALSE)] = False
    return out


def _check_columns(raw: RawTable, sink: _Collector) -> None:
    columns = list(raw.cells.columns)
    for name in sorted({c for c in columns if columns.count(c) > 1}):
        sink.add("appears more than once in the header", column=name)
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            sink.add("required column is missing", column=name)


def _typed_column(raw: RawTable, name: str, sink: _Collector) -> pd.Series:
    cells = raw.cells[name]
    blank = cells == ""
    if name in DATE_COLUMNS:
        parsed = _parse_dates(cells)
        sink.add_many(
            parsed.isna() & ~blank,
            name,
            lambda i: f"{cells[i]!r} is not a date (use YYYY-MM-DD)",
        )
        return parsed
    if name in NUMERIC_COLUMNS:
        parsed = _parse_numbers(cells, raw.decimal_comma)
        sink.add_many(parsed.isna() & ~blank, name, lambda i: f"{cells[i]!r} is not a number")
        sink.add_many(parsed < 0, name, lambda i: f"{cells[i]} must not be negative")
        if name in PERCENT_COLUMNS:
            sink.add_many(parsed > 100, name, lambda i: f"{cells[i]} % is above 100 %")
        return parsed
    if name in BOOL_COLUMNS:
        parsed = _parse_bools(cells)
        sink.add_many(parsed.isna() & ~blank, name, lambda i: f"{cells[i]!r} is not yes/no")
        return parsed
    return cells.where(~blank, None)


def _check_patients(data: pd.DataFrame, known: Collection[str] | None, sink: _Collector) -> None:
    patient = data["patient"]
    sink.add_many(patient.isna(), "patient", lambda _i: "patient is empty")
    first_row = {}
    for index, name in patient.dropna().items():
        if name in first_row:
            sink.add(f"{name!r} repeats row {first_row[name] + 1}", index, "patient")
        else:
            first_row[name] = index
    if known is not None:
        known_set = set(known)
        unknown = patient.notna() & ~patient.isin(known_set)
        sink.add_many(unknown, "patient", lambda i: f"{patient[i]!r} has no results in the store")


def _date_text(value: pd.Timestamp) -> str:
    return value.date().isoformat()


def _check_dates(data: pd.DataFrame, sink: _Collector) -> None:
    for name in ("infusion_date", "last_followup_date"):
        if name in data:
            missing = data[name].isna() & (sink.raw.cells[name] == "")
            sink.add_many(missing, name, lambda _i: "required value is missing")
    infusion = data["infusion_date"]
    follow = data["last_followup_date"]
    for name in (c for c in EVENT_DATE_COLUMNS if c in data):
        event = data[name]
        sink.add_many(
            event < infusion,
            name,
            lambda i, e=event: (
                f"{_date_text(e[i])} is before infusion_date {_date_text(infusion[i])}"
            ),
        )
        sink.add_many(
            follow < event,
            "last_followup_date",
            lambda i, e=event, n=name: f"{_date_text(follow[i])} is before {n} {_date_text(e[i])}",
        )
    sink.add_many(
        follow < infusion,
        "last_followup_date",
        lambda i: f"{_date_text(follow[i])} is before infusion_date {_date_text(infusion[i])}",
    )
    for name in ("relapse_date", "progression_date", "hsct_date"):
        if name in data:
            sink.add_many(
                data[name] > data["death_date"],
                name,
                lambda i, n=name: (
                    f"{_date_text(data[n][i])} is after death_date "
                    f"{_date_text(data['death_date'][i])}"
                ),
            )


def _file_level(problems: list[ClinicalProblem]) -> bool:
    return any(p.row is None for p in problems)


def _parse(
    raw: RawTable, known: Collection[str] | None
) -> tuple[pd.DataFrame | None, list[ClinicalProblem]]:
    sink = _Collector(raw, list(raw.problems))
    if _file_level(sink.problems):
        return None, sink.problems
    if not len(raw.cells.columns):
        sink.add("table has no columns")
        return None, sink.problems
    blank_rows = (raw.cells == "").all(axis=1)
    if blank_rows.all():
        sink.add("table has no data rows")
    _check_columns(raw, sink)
    if _file_level(sink.problems):
        return None, sink.problems
    trimmed = replace(raw, cells=raw.cells[~blank_rows])
    sink.raw = trimmed
    data = pd.DataFrame(
        {name: _typed_column(trimmed, name, sink) for name in trimmed.cells.columns},
        index=trimmed.cells.index,
    )
    _check_patients(data, known, sink)
    _check_dates(data, sink)
    return data.reset_index(drop=True), sink.problems


def _problem_order(problem: ClinicalProblem) -> tuple[int, str]:
    return (problem.row or 0, problem.column or "")


def validate_clinical(
    source: Path | str | pd.DataFrame,
    known_patients: Collection[str] | None = None,
    sheet: str | int = 0,
) -> list[ClinicalProblem]:
    """Every problem of a clinical table, by row then column (empty: the table is valid)."""
    _, problems = _parse(read_clinical(source, sheet), known_patients)
    return sorted(problems, key=_problem_order)


def load_clinical(
    source: Path | str | pd.DataFrame,
    known_patients: Collection[str] | None = None,
    sheet: str | int = 0,
) -> ClinicalTable:
    """Read and validate a clinical table; raise one ClinicalTableError listing all problems."""
    raw = read_clinical(source, sheet)
    data, problems = _parse(raw, known_patients)
    if problems or data is None:
        problems = sorted(problems, key=_problem_order)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise ClinicalTableError(
            raw.source, f"{count}: " + "; ".join(str(p) for p in problems), problems
        )
    return ClinicalTable(data, raw.source, tuple(data.columns))
