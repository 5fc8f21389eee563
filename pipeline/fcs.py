"""Strict, bounded-memory reader for FCS 2.0, 3.0 and 3.1 list-mode files.

Every size the file claims is checked against the real file size before anything is
allocated, so a hostile $TOT or offset costs nothing. Events come back as one float32
matrix (events x parameters) read straight from disk with numpy; scaling ($PnE, $PnG,
$TIMESTEP) is applied in place, per column.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import FcsError, FcsUnsupportedError

HEADER_BYTES = 58
MAX_TEXT_BYTES = 32 * 2**20
MAX_PARAMETERS = 1000
SUPPORTED_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
SPILL_KEYWORDS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP")
_ALLOWED_CONTROL = {"\t", "\n", "\r"}


@dataclass(frozen=True)
class Channel:
    """One FCS parameter as described by its $Pn* keywords (index is 1-based)."""

    index: int
    name: str
    marker: str | None
    bits: int
    range: float
    log_decades: float = 0.0
    log_offset: float = 0.0
    gain: float = 1.0

    @property
    def is_time(self) -> bool:
        return self.name.strip().lower() in {"time", "hdr-t"}

    @property
    def is_scatter(self) -> bool:
        return self.name.strip().upper()[:3] in {"FSC", "SSC"}

    @property
    def is_log(self) -> bool:
        return self.log_decades > 0


@dataclass(frozen=True)
class Spillover:
    """A spillover matrix with the $PnN names of its rows and columns."""

    channels: tuple[str, ...]
    matrix: np.ndarray
    keyword: str


@dataclass
class FcsFile:
    """One FCS data set: TEXT keywords, channels and (optionally) the event matrix."""

    path: Path
    version: str
    text: dict[str, str]
    channels: tuple[Channel, ...]
    event_count: int
    events: np.ndarray | None
    scaled: bool
    spillover: Spillover | None
    warnings: list[str] = field(default_factory=list)
    spillover_problem: str | None = None  # a matrix keyword present but unreadable

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def cytometer(self) -> str | None:
        return self.text.get("$CYT")

    def keyword(self, name: str) -> str | None:
        """A TEXT keyword, looked up case-insensitively."""
        return self.text.get(name.upper())


@dataclass(frozen=True)
class _Header:
    version: str
    text: tuple[int, int]
    data: tuple[int, int]


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


def _parse_header(raw: bytes, path: Path, size: int) -> _Header:
    if len(raw) < HEADER_BYTES:
        raise FcsError(path, f"truncated: {size} bytes, shorter than the 58-byte FCS HEADER")
    try:
        version = raw[:6].decode("ascii")
    except UnicodeDecodeError:
        version = ""
    if not version.startswith("FCS"):
        raise FcsError(path, "not an FCS file: HEADER does not start with 'FCS'")
    if version not in SUPPORTED_VERSIONS:
        raise FcsUnsupportedError(path, f"FCS version {version!r} is not supported")
    offsets = []
    for i, name in enumerate(("TEXT start", "TEXT end", "DATA start", "DATA end")):
        field_bytes = raw[10 + 8 * i : 18 + 8 * i]
        token = field_bytes.decode("ascii", errors="replace").strip()
        if token == "":
            offsets.append(0)
        elif token.isdigit():
            offsets.append(int(token))
        else:
            raise FcsError(path, f"garbled HEADER: {name} offset is {field_bytes!r}")
    text_span = (offsets[0], offsets[1])
    if not HEADER_BYTES <= text_span[0] < text_span[1]:
        raise FcsError(path, f"garbled HEADER: TEXT offsets {text_span} are not a valid range")
    return _Header(version=version, text=text_span, data=(offsets[2], offsets[3]))


def _read_text(
    fh, path: Path, size: int, span: tuple[int, int], notes: list[str], *, primary: bool = True
) -> dict[str, str]:
    start, end = span
    if end >= size:
        raise FcsError(path, f"TEXT segment ends at byte {end}, past the end of the file ({size})")
    if end - start + 1 > MAX_TEXT_BYTES:
        raise FcsError(path, f"TEXT segment claims {end - start + 1} bytes, over the limit")
    fh.seek(start)
    raw = fh.read(end - start + 1)
    return _parse_text(raw, path, notes, primary=primary)


def _parse_text(raw: bytes, path: Path, notes: list[str], *, primary: bool) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        notes.append("TEXT is not UTF-8; read as Latin-1")
    if len(text) < 2:
        raise FcsError(path, "TEXT segment is empty")
    delimiter = text[0]
    padded = text.rstrip("\0") if delimiter != "\0" else text
    if len(padded) != len(text):  # instruments pad TEXT to its HEADER end (FACSDiva 6)
        notes.append(f"TEXT is padded with {len(text) - len(padded)} NUL byte(s); ignored")
        text = padded
    bad = next(
        (
            (i, ch)
            for i, ch in enumerate(text)
            if (ord(ch) < 32 or ord(ch) == 127) and ch != delimiter and ch not in _ALLOWED_CONTROL
        ),
        None,
    )
    if bad is not None:
        raise FcsError(
            path, f"TEXT segment is not text: control byte 0x{ord(bad[1]):02x} at offset {bad[0]}"
        )
    body = text[1:].replace(delimiter * 2, "\0")
    tokens = [t.replace("\0", delimiter) for t in body.split(delimiter)]
    if tokens and tokens[-1] == "":
        tokens.pop()
    if len(tokens) % 2 and tokens[-1].strip() == "":
        tokens.pop()
    if len(tokens) % 2:
        notes.append(f"TEXT has a dangling keyword {tokens[-1][:40]!r}; ignored")
        tokens.pop()
    keywords: dict[str, str] = {}
    for key, value in zip(tokens[::2], tokens[1::2], strict=True):
        key = key.strip().upper()
        if key in keywords:
            notes.append(f"keyword {key} appears twice; the first value was kept")
            continue
        keywords[key] = value.strip()
    if primary and "$PAR" not in keywords:
        raise FcsError(path, "TEXT segment has no $PAR keyword")
    return keywords


def _supplemental_text_span(text: dict, path: Path, size: int) -> tuple[int, int] | None:
    start = _int_keyword(text, "$BEGINSTEXT", path, default=0)
    end = _int_keyword(text, "$ENDSTEXT", path, default=0)
    if start == 0 and end == 0:
        return None
    if not 0 < start < end < size:
        return None
    return start, end


def _keyword(text: dict, key: str, path: Path) -> str:
    value = text.get(key)
    if value is None or value == "":
        raise FcsError(path, f"required keyword {key} is missing")
    return value


def _int_keyword(text: dict, key: str, path: Path, default: int | None = None) -> int:
    value = text.get(key, "").strip()
    if value == "":
        if default is None:
            raise FcsError(path, f"required keyword {key} is missing")
        return default
    try:
        return int(value)
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            raise FcsError(path, f"keyword {key} is not a number: {value[:40]!r}") from None
        if not as_float.is_integer():
            raise FcsError(path, f"keyword {key} is not a whole number: {value[:40]!r}") from None
        return int(as_float)


def _float_keyword(text: dict, key: str, path: Path, default: float) -> float:
    value = text.get(key, "").strip()
    if value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise FcsError(path, f"keyword {key} is not a number: {value[:40]!r}") from None
    if not math.isfinite(number):
        raise FcsError(path, f"keyword {key} is not finite: {value[:40]!r}")
    return number


def _channels(text: dict, path: Path) -> tuple[Channel, ...]:
    count = _int_keyword(text, "$PAR", path)
    if not 0 < count <= MAX_PARAMETERS:
        raise FcsError(path, f"$PAR claims {count} parameters (expected 1 to {MAX_PARAMETERS})")
    channels = []
    for n in range(1, count + 1):
        bits_text = text.get(f"$P{n}B", "").strip()
        if bits_text == "*":
            raise FcsUnsupportedError(path, f"$P{n}B '*' (ASCII delimited data) is not supported")
        bits = _int_keyword(text, f"$P{n}B", path)
        decades, offset = 0.0, 0.0
        amplification = text.get(f"$P{n}E", "0,0").strip() or "0,0"
        try:
            decades, offset = (float(x) for x in amplification.split(","))
        except ValueError:
            raise FcsError(
                path, f"$P{n}E is not 'decades,offset': {amplification[:40]!r}"
            ) from None
        if decades > 0 and offset == 0:
            offset = 1.0  # common vendor error; the spec's intent is 10^0
        channels.append(
            Channel(
                index=n,
                name=text.get(f"$P{n}N", "").strip() or f"P{n}",
                marker=text.get(f"$P{n}S", "").strip() or None,
                bits=bits,
                range=_float_keyword(text, f"$P{n}R", path, default=0.0),
                log_decades=decades,
                log_offset=offset,
                gain=_gain(text, n, path),
            )
        )
    return tuple(channels)


def _gain(text: dict, n: int, path: Path) -> float:
    """$PnG, which divides the stored value: 0 (written by some instruments for 'none')
    reads as 1; a negative gain is no amplifier setting."""
    gain = _float_keyword(text, f"$P{n}G", path, default=1.0)
    if gain < 0:
        raise FcsError(path, f"$P{n}G is {gain:g}: a gain must be positive")
    return gain or 1.0


def _event_layout(text: dict, channels, datatype: str, path: Path) -> tuple[str, np.dtype]:
    """Byte order and a per-event numpy dtype (uniform array or structured record)."""
    byteord = text.get("$BYTEORD", "").replace(" ", "")
    if byteord in {"1,2,3,4", "1,2", "1", "1,2,3,4,5,6,7,8"}:
        order = "<"
    elif byteord in {"4,3,2,1", "2,1", "8,7,6,5,4,3,2,1"}:
        order = ">"
    else:
        raise FcsUnsupportedError(path, f"$BYTEORD {byteord or '(missing)'!r} is not supported")
    kind = {"I": "u", "F": "f", "D": "f"}[datatype]
    fields = []
    for channel in channels:
        bits = channel.bits
        if (datatype == "F" and bits != 32) or (datatype == "D" and bits != 64):
            raise FcsError(path, f"$P{channel.index}B is {bits} for $DATATYPE {datatype}")
        if datatype == "I" and (bits <= 0 or bits % 8 or bits > 64):
            raise FcsUnsupportedError(
                path, f"$P{channel.index}B {bits}-bit packed integers are not supported"
            )
        width = bits // 8
        fields.append((f"p{channel.index}", f"{order}{kind}{width}" if width != 3 else "V3"))
    if len({f[1] for f in fields}) == 1 and fields[0][1] != "V3":
        return order, np.dtype((np.dtype(fields[0][1]), (len(fields),)))
    return order, np.dtype(fields)


def _data_span(
    text: dict, header: _Header, row_bytes: int, size: int, path: Path, notes: list[str]
) -> tuple[int, int]:
    """Return (byte count, start offset) of the event data after checking every claim."""
    text_span = (
        _int_keyword(text, "$BEGINDATA", path, default=0),
        _int_keyword(text, "$ENDDATA", path, default=0),
    )
    candidates = [s for s in (header.data, text_span) if s[0] > 0 and s[1] >= s[0]]
    if not candidates:
        if text.get("$TOT", "").strip() == "0":
            raise FcsError(path, "holds no events ($TOT 0): nothing was acquired")
        raise FcsError(path, "neither HEADER nor TEXT gives a DATA segment")
    declared_total = text.get("$TOT", "").strip()
    total = _int_keyword(text, "$TOT", path) if declared_total else None
    if total is not None and total < 0:
        raise FcsError(path, f"$TOT is negative ({total})")

    def fits(span: tuple[int, int]) -> bool:
        length = span[1] - span[0] + 1
        if total is None:
            return span[1] < size + 1
        return (
            length in {total * row_bytes, total * row_bytes + 1}
            and span[0] + total * row_bytes <= size
        )

    chosen = next((s for s in candidates if fits(s)), candidates[0])
    if len(candidates) == 2 and candidates[0] != candidates[1]:
        notes.append(
            f"HEADER and TEXT disagree on DATA offsets {candidates[0]} vs {candidates[1]}; "
            f"used {chosen}, whose length fits $TOT"
        )
    start, end = chosen
    length = end - start + 1
    if total is None:
        total = length // row_bytes
        notes.append("no $TOT keyword; event count taken from the DATA length")
    needed = total * row_bytes
    if start + needed > size:
        raise FcsError(
            path,
            f"$TOT {total} x {row_bytes} bytes per event needs {needed} bytes from offset "
            f"{start}, but the file has {size} bytes",
        )
    if length < needed:
        raise FcsError(
            path, f"DATA segment holds {length} bytes but $TOT {total} events need {needed}"
        )
    if length - needed >= row_bytes:
        raise FcsError(
            path,
            f"DATA segment holds {length // row_bytes} events but $TOT says {total}: "
            "$TOT or the DATA offsets are wrong",
        )
    if length not in {needed, needed + 1}:
        notes.append(f"DATA segment has {length - needed} bytes beyond the $TOT events; ignored")
    return needed, start


READ_BLOCK = 1 << 15
"""Events read from disk at a time into the event matrix."""


def _read_events(fh, start: int, count: int, dtype, byte_order: str, channels, datatype: str):
    """The event matrix, float32 and column-major (each channel one contiguous column, so
    per-channel scaling, compensation and gating read it without copies)."""
    fh.seek(start)
    matrix = np.empty((count, len(channels)), dtype=np.float32, order="F")
    if dtype.names is None:
        buffer = np.empty(min(count, READ_BLOCK), dtype=dtype)
        for first in range(0, count, READ_BLOCK):
            rows = min(READ_BLOCK, count - first)
            block = buffer[:rows]
            if fh.readinto(block.reshape(-1).view(np.uint8)) != block.nbytes:
                raise OSError("the DATA segment ends early")
            stored = block.reshape(rows, len(channels))
            if datatype == "I":
                _mask_to_range(stored, channels)
            matrix[first : first + rows] = stored
        return matrix
    raw = np.fromfile(fh, dtype=dtype, count=count)
    octets = raw.view(np.uint8).reshape(count, raw.dtype.itemsize)
    for j, name in enumerate(raw.dtype.names):
        column = raw[name]
        if column.dtype.kind == "V":
            offset = raw.dtype.fields[name][1]
            column = _three_byte_ints(octets[:, offset : offset + 3], byte_order)
        if datatype == "I":
            column = column & _range_mask(channels[j])
        matrix[:, j] = column
    return matrix


IMPLAUSIBLE_VALUE = 1e20
IMPLAUSIBLE_SHARE = 0.01
PROBE_EVENTS = 4096
"""Events read from each end of DATA to judge it when the matrix itself is not read."""
TIME_BACKWARDS_SHARE = 0.05


def _head_and_tail(matrix: np.ndarray) -> np.ndarray:
    if matrix.shape[0] <= 2 * PROBE_EVENTS:
        return matrix
    return np.concatenate([matrix[:PROBE_EVENTS], matrix[-PROBE_EVENTS:]])


def _probe_events(fh, start, count, dtype, byte_order, channels, datatype) -> np.ndarray:
    """The first and last PROBE_EVENTS events, as the full read would give them."""
    if count <= 2 * PROBE_EVENTS:
        return _read_events(fh, start, count, dtype, byte_order, channels, datatype)
    head = _read_events(fh, start, PROBE_EVENTS, dtype, byte_order, channels, datatype)
    tail_start = start + (count - PROBE_EVENTS) * dtype.itemsize
    tail = _read_events(fh, tail_start, PROBE_EVENTS, dtype, byte_order, channels, datatype)
    return np.concatenate([head, tail])


def _check_integer_words(fh, start, count, dtype, byte_order, channels, path: Path) -> None:
    """Refuse $DATATYPE I on words that are floating-point numbers: their exponent bits put
    them far beyond $PnR, where masking would turn them into noise."""
    width = dtype.base.itemsize if dtype.names is None else 0
    if width not in {4, 8} or count == 0:
        return
    fh.seek(start)
    rows = min(count, PROBE_EVENTS)
    words = np.fromfile(fh, dtype=f"{byte_order}u{width}", count=rows * len(channels))
    words = words[: len(words) - len(words) % len(channels)].reshape(-1, len(channels))
    as_float = words.view(f"{byte_order}f{width}")
    ranges = np.array([c.range if c.range > 0 else np.inf for c in channels])
    with np.errstate(all="ignore"):
        magnitude = np.abs(as_float.astype(np.float64))
        floating = (magnitude > 1e-6) & (magnitude < 1e12) & (words > ranges)
    nonzero = words != 0
    if nonzero.sum() and floating.sum() > 0.5 * nonzero.sum():
        raise FcsError(
            path,
            f"$DATATYPE is I, but {floating.sum() / nonzero.sum():.0%} of the DATA words are "
            "floating-point numbers beyond $PnR: the file's $DATATYPE is wrong",
        )


def _check_events(probe: np.ndarray, channels, text: dict, datatype: str, path: Path) -> None:
    """Refuse event data that contradicts what the TEXT says about it, or holds nothing."""
    if probe.size == 0:
        return
    if datatype in {"F", "D"}:
        byteord = text.get("$BYTEORD", "")
        _check_finite(probe, path, f"the data or its $BYTEORD ({byteord}) is wrong")
    nonzero_rows = np.flatnonzero(np.any(probe != 0, axis=1))
    if nonzero_rows.size == 0:
        raise FcsError(path, "every DATA value is 0: the file holds no measurements")
    if probe.shape[0] > 1 and np.all(probe == probe[0]):
        raise FcsError(
            path, "every event is the same: DATA holds no measurements (constant values)"
        )
    trailing = probe.shape[0] - 1 - int(nonzero_rows[-1])
    if trailing >= 2:
        raise FcsError(
            path,
            f"DATA ends in {trailing}{'+' if trailing >= PROBE_EVENTS else ''} events of zeros "
            "where $TOT says there are events: the file is incomplete (still being copied?)",
        )
    _check_time_runs_forward(probe, channels, path)
    if datatype in {"F", "D"}:
        _check_float_log_channels(probe, channels, path)
    scaled = np.array(probe, dtype=np.float32, order="F")
    _scale_in_place(scaled, channels, text)
    _check_finite(scaled, path, "after $PnE/$PnG scaling: those keywords are wrong")


def _check_finite(matrix: np.ndarray, path: Path, cause: str) -> None:
    """Reject data that is mostly garbage, as a wrong $BYTEORD or scale keyword produces."""
    with np.errstate(all="ignore"):
        bad = ~np.isfinite(matrix) | (np.abs(matrix) > IMPLAUSIBLE_VALUE)
    share = float(bad.mean())
    if share > IMPLAUSIBLE_SHARE:
        raise FcsError(path, f"{share:.0%} of event values are not finite or beyond 1e20; {cause}")


def _check_time_runs_forward(probe: np.ndarray, channels, path: Path) -> None:
    """A time channel runs forward; one that mostly runs backwards holds another channel's
    values: the DATA offset or a $PnB is off and every value sits in the wrong column."""
    if probe.shape[0] < 100:
        return
    for j, channel in enumerate(channels):
        if channel.is_time:
            backwards = float((np.diff(probe[:, j]) < 0).mean())
            if backwards > TIME_BACKWARDS_SHARE:
                raise FcsError(
                    path,
                    f"the time channel {channel.name} runs backwards between {backwards:.0%} of "
                    "events: DATA is not laid out as the TEXT says (offset or $PnB wrong)",
                )


def _check_float_log_channels(probe: np.ndarray, channels, path: Path) -> None:
    """$PnE on float data says the values are channel numbers 0..$PnR to be decoded; values
    outside that span (negative, as linear data has) make the keyword nonsense."""
    for j, channel in enumerate(channels):
        if not channel.is_log or channel.range <= 0:
            continue
        column = probe[:, j]
        outside = float(((column < 0) | (column > channel.range * 1.0001)).mean())
        if outside > IMPLAUSIBLE_SHARE:
            raise FcsError(
                path,
                f"$P{channel.index}E says log channel numbers 0..{channel.range:g}, but "
                f"{outside:.0%} of the float values lie outside: the keyword is wrong",
            )


def _three_byte_ints(octets: np.ndarray, byte_order: str) -> np.ndarray:
    """Unsigned 24-bit integers from an (n, 3) byte array."""
    octets = octets.astype(np.uint32)
    if byte_order == ">":
        octets = octets[:, ::-1]
    return octets[:, 0] | (octets[:, 1] << 8) | (octets[:, 2] << 16)


def _range_mask(channel: Channel) -> int:
    """Bits above the next power of two of $PnR carry no data (FCS 3.1, 3.2.16)."""
    if channel.range <= 0:
        return (1 << channel.bits) - 1
    top = 1 << max(math.ceil(channel.range) - 1, 0).bit_length()
    return min(top, 1 << channel.bits) - 1


def _mask_to_range(stored: np.ndarray, channels) -> None:
    masks = np.array([_range_mask(c) for c in channels], dtype=stored.dtype)
    if np.any(masks != np.iinfo(stored.dtype).max):
        np.bitwise_and(stored, masks, out=stored)


def _scale_in_place(matrix: np.ndarray, channels, text: dict) -> None:
    timestep = text.get("$TIMESTEP", "").strip()
    for j, channel in enumerate(channels):
        column = matrix[:, j]
        if channel.is_log and channel.range > 0:
            np.multiply(column, np.float32(channel.log_decades / channel.range), out=column)
            np.power(np.float32(10.0), column, out=column)
            np.multiply(column, np.float32(channel.log_offset), out=column)
        elif channel.is_time and timestep:
            try:
                step = float(timestep)
            except ValueError:
                continue
            if math.isfinite(step) and step > 0:
                np.multiply(column, np.float32(step), out=column)
        elif channel.gain not in (0.0, 1.0):
            np.divide(column, np.float32(channel.gain), out=column)


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
