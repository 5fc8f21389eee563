"""Spillover matrices: from the file's keywords, or from a CSV that overrides them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cartflow.io.errors import FcsError
from cartflow.io.fcs.model import Spillover

SPILL_KEYWORDS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP")


def _spillover(text: dict, channels, notes: list[str]) -> tuple[Spillover | None, str | None]:
    """The first readable matrix keyword, and when none is readable although one is present,
    why (gating refuses to go on uncompensated then)."""
    problems = []
    for keyword in SPILL_KEYWORDS:
        value = text.get(keyword)
        if not value:
            continue
        try:
            return _parse_spill(value, keyword, {c.name for c in channels}), None
        except ValueError as exc:
            notes.append(f"{keyword} ignored: {exc}")
            problems.append(f"{keyword} {exc}")
    return None, "; ".join(problems) or None


def _parse_spill(value: str, keyword: str, names: set[str]) -> Spillover:
    parts = [p.strip() for p in value.split(",")]
    try:
        n = int(parts[0])
    except ValueError:
        raise ValueError("does not start with the channel count") from None
    if n <= 0 or len(parts) != 1 + n + n * n:
        raise ValueError(f"holds {len(parts)} fields, expected {1 + n + n * n} for {n} channels")
    channel_names = tuple(parts[1 : n + 1])
    unknown = [c for c in channel_names if c not in names]
    if unknown:
        raise ValueError(f"names channels not in the file: {', '.join(unknown)}")
    try:
        matrix = np.array(parts[n + 1 :], dtype=np.float64).reshape(n, n)
    except ValueError:
        raise ValueError("has values that are not numbers") from None
    if not np.all(np.isfinite(matrix)):
        raise ValueError("has values that are not finite")
    return Spillover(channels=channel_names, matrix=matrix, keyword=keyword)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_spillover(path: Path) -> Spillover:
    """A spillover matrix from CSV (a header of detector names, one row per detector, an
    optional first column of row names), to use instead of a file's own matrix."""
    import csv

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            rows = [
                [c.strip() for c in row] for row in csv.reader(fh) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FcsError(path, f"cannot be read as a spillover CSV: {exc}") from None
    if len(rows) < 2:
        raise FcsError(path, "a spillover CSV needs a header of detectors and one row each")
    header, body = rows[0], rows[1:]
    named_rows = all(row and not _is_number(row[0]) for row in body)  # a column of row names
    labelled = header[0] == "" or len(header) == len(body[0]) - 1 or named_rows
    corner = labelled and len(header) == len(body[0])  # the row-name column has a header cell
    names = tuple(header[1:] if header[0] == "" or corner else header)
    values = [row[1:] if labelled else row for row in body]
    if len(values) != len(names) or any(len(row) != len(names) for row in values):
        raise FcsError(path, f"spillover matrix is not square over its {len(names)} detectors")
    try:
        matrix = np.array(values, dtype=np.float64)
    except ValueError:
        raise FcsError(path, "spillover matrix has values that are not numbers") from None
    if not np.all(np.isfinite(matrix)) or not np.allclose(np.diag(matrix), 1.0, atol=0.05):
        raise FcsError(path, "spillover matrix needs finite values and 1 on its diagonal")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FcsError(path, f"spillover matrix names detector(s) {repeated} twice")
    if np.linalg.cond(matrix) > 1e12:
        raise FcsError(path, "spillover matrix is singular: it cannot be inverted to compensate")
    return Spillover(channels=names, matrix=matrix, keyword=f"override:{Path(path).name}")
