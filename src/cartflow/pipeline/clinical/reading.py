"""Reading a clinical table from CSV, Excel or a data frame into cells of text."""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cartflow.io.errors import first_line
from cartflow.pipeline.clinical.table import (
    EXCEL_SUFFIXES,
    ClinicalProblem,
    ClinicalTableError,
    RawTable,
    SourceKind,
)


def _normalise_header(name: object) -> str:
    return re.sub(r"\s+", "_", str(name).strip().lower())


def _cell_text(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp | np.datetime64 | datetime | date):
        return pd.Timestamp(value).date().isoformat()
    return str(value).strip()


def _as_cells(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame.map(_cell_text) if len(frame.columns) else frame.astype(str)
    cells.columns = [_normalise_header(c) for c in frame.columns]
    return cells.reset_index(drop=True)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _split_csv(path: Path) -> tuple[list[list[str]], list[int], bool]:
    """Records of a CSV file (cells separated by ',', ';' or a tab, whichever the header
    uses most) with the line each ends on, and whether ';' separates cells."""
    text = _read_text(path)
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    semicolon = delimiter == ";"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, lines = [], []
    for record in reader:
        records.append([cell.strip() for cell in record])
        lines.append(reader.line_num)
    return records, lines, semicolon


def _read_csv(path: Path) -> RawTable:
    records, lines, semicolon = _split_csv(path)
    empty = RawTable(pd.DataFrame(), str(path), "csv")
    if not records or not any(records[0]):
        return _with_problem(empty, "file has no header row")
    header, body = records[0], records[1:]
    width = len(header)
    problems = []
    for i, record in enumerate(body):
        while len(record) > width and record[-1] == "":
            record.pop()
        if len(record) > width:
            message = f"has {len(record)} cells, the header has {width}"
            problems.append(ClinicalProblem(message, i + 1, None, lines[i + 1]))
            body[i] = []
    cells = pd.DataFrame([r + [""] * (width - len(r)) for r in body], columns=header, dtype=str)
    lines_of_rows = tuple(lines[1:])
    return RawTable(_as_cells(cells), str(path), "csv", semicolon, tuple(problems), lines_of_rows)


def _read_excel(path: Path, sheet: str | int) -> RawTable:
    try:
        import openpyxl  # noqa: F401
    except ImportError as exc:
        raise ClinicalTableError(path, "reading Excel files needs openpyxl installed") from exc
    frame = pd.read_excel(path, sheet_name=sheet, dtype=object, engine="openpyxl")
    return RawTable(_as_cells(frame), str(path), "excel")


def read_clinical(source: Path | str | pd.DataFrame, sheet: str | int = 0) -> RawTable:
    """Read a clinical CSV, Excel sheet or DataFrame into stripped strings (no validation).

    File-level problems (missing, empty, unreadable, ragged rows) come back in ``problems``.
    """
    if isinstance(source, pd.DataFrame):
        return RawTable(_as_cells(source), "<table>", "frame")
    path = Path(source)
    kind: SourceKind = "excel" if path.suffix.lower() in EXCEL_SUFFIXES else "csv"
    empty = RawTable(pd.DataFrame(), str(path), kind)
    if not path.is_file():
        return _with_problem(empty, "file does not exist")
    if path.stat().st_size == 0:
        return _with_problem(empty, "file is empty")
    try:
        return _read_excel(path, sheet) if kind == "excel" else _read_csv(path)
    except ClinicalTableError:
        raise
    except Exception as exc:  # any reader failure (csv, zip, openpyxl) is a problem, not a crash
        return _with_problem(empty, f"cannot be read: {first_line(exc)}")


def _with_problem(table: RawTable, message: str) -> RawTable:
    problems = (*table.problems, ClinicalProblem(message))
    return replace(table, problems=problems)
