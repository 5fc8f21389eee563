"""Reading an FCS file: its HEADER, TEXT and DATA checked and decoded into an FcsFile."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cartflow.io.errors import FcsError, FcsUnsupportedError
from cartflow.io.fcs.checks import _check_events, _check_integer_words
from cartflow.io.fcs.data import (
    _data_span,
    _event_layout,
    _head_and_tail,
    _probe_events,
    _read_events,
    _scale_in_place,
)
from cartflow.io.fcs.model import FcsFile
from cartflow.io.fcs.spill import _spillover
from cartflow.io.fcs.text import (
    HEADER_BYTES,
    _channels,
    _int_keyword,
    _keyword,
    _parse_header,
    _read_text,
    _supplemental_text_span,
)


def read_fcs(path: str | Path, *, events: bool = True, scale: bool = True) -> FcsFile:
    """Read the first data set of an FCS file.

    ``events=False`` validates the layout but skips reading DATA; ``scale=False`` returns
    values as stored (what fcsparser gives), otherwise $PnE/$PnG/$TIMESTEP are applied.
    Raises :class:`FcsError` naming the file and the problem.
    """
    path = Path(path)
    try:
        size = require_regular_file(path).st_size
        with path.open("rb") as fh:
            return _read(fh, path, size, read_events=events, scale=scale)
    except FcsError:
        raise
    except IsADirectoryError as exc:
        raise FcsError(path, "is a directory, not an FCS file") from exc
    except OSError as exc:
        raise FcsError(path, f"cannot be read: {exc.strerror or exc}") from exc


def require_regular_file(path: Path) -> os.stat_result:
    """The file's status, or FcsError when it is not a regular file: opening a FIFO would
    block until something writes to it, and a folder or device is no FCS file."""
    status = path.stat()
    if stat.S_ISREG(status.st_mode):
        return status
    kind = (
        "a directory" if stat.S_ISDIR(status.st_mode)
        else "a FIFO (named pipe)" if stat.S_ISFIFO(status.st_mode)
        else "a socket" if stat.S_ISSOCK(status.st_mode)
        else "a device"
    )  # fmt: skip
    raise FcsError(path, f"is {kind}, not a regular file")


def _read(fh, path: Path, size: int, *, read_events: bool, scale: bool) -> FcsFile:
    notes: list[str] = []
    header = _parse_header(fh.read(HEADER_BYTES), path, size)
    text = _read_text(fh, path, size, header.text, notes)
    supplemental = _supplemental_text_span(text, path, size)
    if supplemental:
        try:
            extra = _read_text(fh, path, size, supplemental, notes, primary=False)
        except FcsError as exc:
            notes.append(f"supplemental TEXT ignored: {exc.problem}")
        else:
            for key, value in extra.items():
                text.setdefault(key, value)
    if _int_keyword(text, "$NEXTDATA", path, default=0):
        notes.append("file holds more than one data set; the first was read")

    channels = _channels(text, path)
    datatype = _keyword(text, "$DATATYPE", path).upper()
    mode = text.get("$MODE", "L").upper()
    if mode != "L":
        raise FcsUnsupportedError(path, f"$MODE {mode} (histogram data) is not list-mode data")
    if datatype not in {"I", "F", "D"}:
        raise FcsUnsupportedError(path, f"$DATATYPE {datatype!r} is not supported (I, F or D)")
    byte_order, dtype = _event_layout(text, channels, datatype, path)
    byte_count, start = _data_span(text, header, dtype.itemsize, size, path, notes)
    event_count = byte_count // dtype.itemsize

    if datatype == "I":
        _check_integer_words(fh, start, event_count, dtype, byte_order, channels, path)
    matrix = None
    if read_events:
        matrix = _read_events(fh, start, event_count, dtype, byte_order, channels, datatype)
        probe = _head_and_tail(matrix)
    else:
        probe = _probe_events(fh, start, event_count, dtype, byte_order, channels, datatype)
    _check_events(probe, channels, text, datatype, path)
    if read_events and scale:
        _scale_in_place(matrix, channels, text)
    spillover, spillover_problem = _spillover(text, channels, notes)
    return FcsFile(
        path=path,
        version=header.version,
        text=text,
        channels=channels,
        event_count=event_count,
        events=matrix,
        scaled=bool(read_events and scale),
        spillover=spillover,
        warnings=notes,
        spillover_problem=spillover_problem,
    )


_DATE_FORMATS = ("%d-%b-%Y", "%Y-%m-%d", "%d-%m-%Y", "%m/%d/%Y", "%d.%m.%Y")


def acquisition_date(fcs: FcsFile) -> str | None:
    """$DATE as an ISO date, when it parses."""
    from datetime import datetime

    raw = fcs.keyword("$DATE")
    if not raw:
        return None
    cleaned = re.sub(r"\s+", "", raw)
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt).date().isoformat()
        except ValueError:
            continue
    return None
