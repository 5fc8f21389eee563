"""DATA segment decoding: event layout and span, block reads, integer masks, scaling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cartflow.io.errors import FcsError, FcsUnsupportedError
from cartflow.io.fcs.model import Channel
from cartflow.io.fcs.text import _Header, _int_keyword


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


PROBE_EVENTS = 4096
"""Events read from each end of DATA to judge it when the matrix itself is not read."""


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
