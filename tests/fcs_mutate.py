"""Helpers that rewrite real FCS files into hostile variants for reader tests."""

from __future__ import annotations

from pathlib import Path


def split_fcs(raw: bytes) -> tuple[bytes, dict[str, str], bytes, str]:
    """HEADER version, TEXT keywords (in order), DATA bytes and the delimiter of a valid file."""
    text_start, text_end = int(raw[10:18]), int(raw[18:26])
    text = raw[text_start : text_end + 1].decode("latin-1")
    delimiter = text[0]
    tokens = text[1:].replace(delimiter * 2, "\0").split(delimiter)
    if tokens and tokens[-1] == "":
        tokens.pop()
    if len(tokens) % 2:
        tokens.pop()
    keywords = {
        k.replace("\0", delimiter): v.replace("\0", delimiter)
        for k, v in zip(tokens[::2], tokens[1::2], strict=True)
    }
    data_start = int(raw[26:34]) or int(keywords.get("$BEGINDATA", "0"))
    data_end = int(raw[34:42]) or int(keywords.get("$ENDDATA", "0"))
    return raw[:6], keywords, raw[data_start : data_end + 1], delimiter


def build_fcs(version: bytes, keywords: dict[str, str], data: bytes, delimiter: str = "/") -> bytes:
    """Lay out HEADER, TEXT and DATA with consistent offsets (FCS 3.x style)."""
    keywords = dict(keywords)
    for key in ("$BEGINDATA", "$ENDDATA", "$BEGINANALYSIS", "$ENDANALYSIS"):
        keywords[key] = "0" * 12
    keywords.setdefault("$BEGINSTEXT", "0")
    keywords.setdefault("$ENDSTEXT", "0")

    def render(kw: dict[str, str]) -> bytes:
        esc = delimiter * 2
        body = "".join(
            f"{delimiter}{k.replace(delimiter, esc)}{delimiter}{v.replace(delimiter, esc)}"
            for k, v in kw.items()
        )
        return (body + delimiter).encode("latin-1")

    text_start = 256
    text_len = len(render(keywords))
    data_start = text_start + text_len
    data_end = data_start + len(data) - 1
    keywords["$BEGINDATA"] = f"{data_start:012d}"
    keywords["$ENDDATA"] = f"{data_end:012d}"
    text = render(keywords)
    assert len(text) == text_len
    header = (
        version
        + b"    "
        + b"".join(
            f"{n:>8d}".encode()
            for n in (
                text_start,
                text_start + text_len - 1,
                0 if data_end > 99_999_999 else data_start,
                0 if data_end > 99_999_999 else data_end,
                0,
                0,
            )
        )
    )
    return header.ljust(text_start, b" ") + text + data


def rewrite(source: Path, target: Path, **updates: str) -> Path:
    """Copy a real FCS file with some TEXT keywords changed (``P1B='24'`` sets $P1B)."""
    version, keywords, data, delimiter = split_fcs(source.read_bytes())
    for key, value in updates.items():
        keywords["$" + key.upper()] = value
    target.write_bytes(build_fcs(version, keywords, data, delimiter))
    return target


def with_data(source: Path, target: Path, data: bytes, **updates: str) -> Path:
    """Copy a real FCS file with its DATA replaced (and some TEXT keywords changed)."""
    version, keywords, _, delimiter = split_fcs(source.read_bytes())
    for key, value in updates.items():
        keywords["$" + key.upper()] = value
    target.write_bytes(build_fcs(version, keywords, data, delimiter))
    return target


def misalign_data(source: Path, target: Path, by: int = 4) -> Path:
    """Copy a real FCS file whose DATA offsets (HEADER and TEXT) point ``by`` bytes late,
    with ``by`` bytes after DATA (as a CRC would be) so that the claimed span still fits."""
    version, keywords, data, delimiter = split_fcs(source.read_bytes())
    raw = bytearray(build_fcs(version, keywords, data + b"0" * by, delimiter))
    start, end = int(raw[26:34]), int(raw[34:42])
    for old, new in ((start, start + by), (end, end)):
        raw[:] = raw.replace(f"{old:012d}".encode(), f"{new:012d}".encode(), 1)
    raw[26:42] = f"{start + by:>8d}{end:>8d}".encode()
    target.write_bytes(bytes(raw))
    return target
