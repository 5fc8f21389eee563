"""The clinical table's columns, its problems and error, and the table as read and as validated."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from cartflow.io.errors import CartflowError

REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient",
    "infusion_date",
    "relapse_date",
    "death_date",
    "last_followup_date",
)


DATE_COLUMNS: tuple[str, ...] = (
    "infusion_date",
    "relapse_date",
    "progression_date",
    "death_date",
    "hsct_date",
    "last_followup_date",
)


EVENT_DATE_COLUMNS: tuple[str, ...] = (
    "relapse_date",
    "progression_date",
    "death_date",
    "hsct_date",
)


PERCENT_COLUMNS: tuple[str, ...] = ("tumour_burden_before_pct", "tumour_burden_after_pct")


NUMERIC_COLUMNS: tuple[str, ...] = (
    *PERCENT_COLUMNS,
    "anc_per_nl",
    "platelets_per_nl",
    "haemoglobin_g_dl",
    "crp_mg_l",
)


BOOL_COLUMNS: tuple[str, ...] = ("cd19_negative_relapse",)


EXCEL_SUFFIXES = frozenset({".xlsx", ".xlsm"})


SourceKind = Literal["csv", "excel", "frame"]


class ClinicalTableError(CartflowError):
    """The clinical table has problems; ``problems`` lists each with its row and column."""

    code = "clinical"

    def __init__(
        self,
        source: str | Path | None,
        problem: str,
        problems: Iterable[ClinicalProblem] = (),
    ) -> None:
        super().__init__(source, problem)
        self.problems: tuple[ClinicalProblem, ...] = tuple(problems)


@dataclass(frozen=True)
class ClinicalProblem:
    """One problem of a clinical table: 1-based data row (and file line), column, message."""

    message: str
    row: int | None = None
    column: str | None = None
    line: int | None = None
    line_kind: str = "line"

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            extra = f" ({self.line_kind} {self.line})" if self.line is not None else ""
            where.append(f"row {self.row}{extra}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass(frozen=True)
class RawTable:
    """A clinical table as read: every cell a stripped string, and how rows map to lines."""

    cells: pd.DataFrame
    source: str
    kind: SourceKind
    decimal_comma: bool = False
    problems: tuple[ClinicalProblem, ...] = ()
    lines: tuple[int, ...] = ()  # CSV: the line each data row ends on

    def line(self, row: int) -> int | None:
        """The file line (CSV) or sheet row (Excel) of a 1-based data row."""
        if self.kind == "frame":
            return None
        return self.lines[row - 1] if self.lines else row + 1

    @property
    def line_kind(self) -> str:
        return "sheet row" if self.kind == "excel" else "line"


@dataclass(frozen=True)
class ClinicalTable:
    """A validated clinical table: typed columns, one row per patient."""

    data: pd.DataFrame
    source: str
    columns: tuple[str, ...]

    @property
    def patients(self) -> tuple[str, ...]:
        return tuple(self.data["patient"])
