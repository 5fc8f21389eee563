"""Writing output files safely: whole or not at all, and spreadsheet-safe CSV.

Every file cartflow writes goes to a temporary file beside its target and is renamed over it
only once complete, so a full disk or a crash never leaves a partial file; a failure names
the path. CSV cells that a spreadsheet would run as a formula (text starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return) are prefixed with ``'`` as OWASP
recommends; numbers, and text that is a plain number such as ``-0.5``, stay as they are.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from cartflow.io.errors import CartflowError

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_RISKY = re.compile(r"^[=+\-@\t\r]")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


class OutputError(CartflowError):
    """An output file could not be written."""

    code = "output"


def neutralise(value: object) -> object:
    """A cell made safe for spreadsheets: formula-leading text gains a leading ``'``."""
    if isinstance(value, str) and _RISKY.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def restore(value: object) -> object:
    """A cell as it was before :func:`neutralise` (for reading a CSV cartflow wrote)."""
    if isinstance(value, str) and value.startswith("'") and _RISKY.match(value[1:]):
        return value[1:]
    return value


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every formula-leading text cell (and column name) neutralised;
    numeric columns are left untouched."""
    out = frame.copy()
    for column in out.columns:
        cells = out[column]
        if cells.dtype != object and not isinstance(cells.dtype, pd.StringDtype):
            continue
        out[column] = cells.map(neutralise)
    out.columns = [neutralise(c) for c in out.columns]
    return out


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block
    ends without error, removed otherwise. OS errors become an OutputError naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(handle)
    except OSError as exc:
        raise OutputError(path, f"cannot be written: {exc.strerror or exc}") from exc
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(path, f"cannot be written: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def write_csv(frame: pd.DataFrame, path: Path, **options) -> Path:
    """``frame`` as a spreadsheet-safe CSV, written atomically (``options`` as pandas'
    ``to_csv`` takes them)."""
    with atomic_path(path) as temporary:
        neutralise_frame(frame).to_csv(temporary, index=False, **options)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def remove_folder(target: Path) -> None:
    """Remove an output folder of an earlier run (first moved aside, so it goes whole)."""
    if not target.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    shutil.rmtree(aside, ignore_errors=True)
