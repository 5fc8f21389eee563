"""HEADER and TEXT segments: offsets, keyword parsing, typed keywords and the $Pn channels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cartflow.io.errors import FcsError, FcsUnsupportedError
from cartflow.io.fcs.model import Channel

HEADER_BYTES = 58


MAX_TEXT_BYTES = 32 * 2**20


MAX_PARAMETERS = 1000


SUPPORTED_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")


_ALLOWED_CONTROL = {"\t", "\n", "\r"}


@dataclass(frozen=True)
class _Header:
    version: str
    text: tuple[int, int]
    data: tuple[int, int]


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
