"""Hostile and broken FCS files: a specific FcsError, bounded memory, never a crash."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartflow.io.errors import FcsError
from cartflow.io.fcs import read_fcs
from tests.conftest import QUIRKS, require_shared
from tests.fcs_mutate import rewrite

pytestmark = pytest.mark.skipif(
    not QUIRKS.is_dir(), reason=f"{QUIRKS} is not present beside the checkout"
)

SMALL = "variable_int_example.fcs"
FLOAT = "G11.fcs"


@pytest.fixture
def small(tmp_path) -> Path:
    return require_shared(QUIRKS / SMALL)


def _expect(path: Path, fragment: str) -> FcsError:
    with pytest.raises(FcsError) as caught:
        read_fcs(path)
    assert fragment in caught.value.problem, caught.value.problem
    assert str(path) in str(caught.value)
    return caught.value


def test_rewritten_file_still_reads_identically(small, tmp_path):
    copy = rewrite(small, tmp_path / "copy.fcs")
    np.testing.assert_array_equal(read_fcs(copy).events, read_fcs(small).events)


@pytest.mark.parametrize("keep", [0, 20, 57, 300, -10])
def test_truncated(small, tmp_path, keep):
    raw = small.read_bytes()
    target = tmp_path / "cut.fcs"
    target.write_bytes(raw[:keep])
    fragment = {0: "truncated", 20: "truncated", 57: "truncated", 300: "past the end"}.get(
        keep, "needs"
    )
    _expect(target, fragment)


def test_garbled_header(small, tmp_path):
    raw = bytearray(small.read_bytes())
    raw[10:18] = b"  12x4ab"
    (target := tmp_path / "garbled.fcs").write_bytes(raw)
    _expect(target, "garbled HEADER")


def test_not_fcs_at_all(tmp_path):
    (target := tmp_path / "notes.fcs").write_bytes(b"Hello, this is a text file." * 10)
    _expect(target, "not an FCS file")


def test_text_offset_past_end(small, tmp_path):
    raw = bytearray(small.read_bytes())
    raw[18:26] = f"{len(raw) + 5000:>8d}".encode()
    (target := tmp_path / "text_past_end.fcs").write_bytes(raw)
    _expect(target, "past the end of the file")


def test_data_offsets_past_end(small, tmp_path):
    target = rewrite(small, tmp_path / "x.fcs")
    raw = bytearray(target.read_bytes())
    raw[26:42] = f"{90_000_000:>8d}{99_000_000:>8d}".encode()
    target.write_bytes(raw)
    # TEXT's own offsets still fit, so the reader takes them and says why
    fcs = read_fcs(target)
    assert any("disagree on DATA offsets" in w for w in fcs.warnings)


def test_tot_claiming_gigabytes_costs_nothing(small, tmp_path):
    target = rewrite(small, tmp_path / "huge_tot.fcs", TOT="900000000000")
    tracemalloc.start()
    try:
        _expect(target, "needs")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20


def test_par_claiming_millions(small, tmp_path):
    _expect(rewrite(small, tmp_path / "par.fcs", PAR="5000000"), "$PAR claims 5000000")


def test_unsupported_byteord(small, tmp_path):
    _expect(rewrite(small, tmp_path / "bo.fcs", BYTEORD="3,4,1,2"), "$BYTEORD")


def test_wrong_byteord_on_float_data(tmp_path):
    source = require_shared(QUIRKS / FLOAT)
    fcs = read_fcs(source, events=False)
    flipped = "4,3,2,1" if fcs.text["$BYTEORD"] == "1,2,3,4" else "1,2,3,4"
    _expect(rewrite(source, tmp_path / "flip.fcs", BYTEORD=flipped), "$BYTEORD")


def test_missing_required_keyword(small, tmp_path):
    _expect(rewrite(small, tmp_path / "nodt.fcs", DATATYPE=""), "$DATATYPE is missing")


def test_non_numeric_keyword(small, tmp_path):
    _expect(rewrite(small, tmp_path / "tot.fcs", TOT="lots"), "$TOT is not a number")


def test_text_that_is_not_text(small, tmp_path):
    raw = bytearray(small.read_bytes())
    start = int(raw[10:18])
    raw[start + 5 : start + 9] = b"\x00\x01\x02\x03"
    (target := tmp_path / "binary_text.fcs").write_bytes(raw)
    _expect(target, "not text")


def test_latin1_text_is_read_with_a_warning():
    fcs = read_fcs(require_shared(QUIRKS / "data1.fcs"), events=False)
    assert any("Latin-1" in w for w in fcs.warnings)


# ---- property-based: random damage to real files ------------------------------------------

SOURCES = [SMALL, "B01 KC-A-W---91-US.fcs", "data1.fcs"]


@st.composite
def damaged(draw):
    name = draw(st.sampled_from(SOURCES))
    raw = bytearray((QUIRKS / name).read_bytes())
    text_end = int(raw[18:26])
    kind = draw(st.sampled_from(["flip", "truncate", "digits"]))
    if kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, min(text_end + 64, len(raw) - 1)))
            raw[pos] = draw(st.integers(0, 255))
    else:  # replace a run of the HEADER or TEXT with digits: offsets and counts go wild
        pos = draw(st.integers(10, text_end - 10))
        digits = draw(st.text("0123456789", min_size=1, max_size=10)).encode()
        raw[pos : pos + len(digits)] = digits
    return name, bytes(raw)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=damaged())
def test_damaged_files_read_or_fail_cleanly(case, tmp_path):
    name, raw = case
    target = tmp_path / "damaged.fcs"
    target.write_bytes(raw)
    tracemalloc.start()
    try:
        fcs = read_fcs(target)
    except FcsError as exc:
        assert exc.problem and str(target) in str(exc)
        fcs = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 8 * len(raw) + 4 * 2**20, f"{name}: peak {peak} bytes for {len(raw)}"
    if fcs is not None:
        assert fcs.events.dtype == np.float32
        assert fcs.events.shape == (fcs.event_count, len(fcs.channels))


def test_a_file_without_events_says_so(small, tmp_path):
    from tests.fcs_mutate import build_fcs, split_fcs

    version, keywords, _, delimiter = split_fcs(small.read_bytes())
    keywords["$TOT"] = "0"
    empty = tmp_path / "empty.fcs"
    empty.write_bytes(build_fcs(version, keywords, b"", delimiter))
    _expect(empty, "holds no events ($TOT 0)")


# Keyword lies: the TEXT says one thing, the DATA another; each is refused with the reason.


@pytest.fixture
def float_file() -> Path:
    return require_shared(QUIRKS / FLOAT)


def test_integer_datatype_on_float_data(float_file, tmp_path):
    lie = rewrite(float_file, tmp_path / "lie.fcs", DATATYPE="I")
    _expect(lie, "$DATATYPE is I, but")
    with pytest.raises(FcsError):  # the layout-only read ingest does refuses it too
        read_fcs(lie, events=False)


def test_log_decades_on_linear_float_data(float_file, tmp_path):
    decades = {f"P{n}E": "4,1" for n in range(1, 13)}
    _expect(rewrite(float_file, tmp_path / "lie.fcs", **decades), "the keyword is wrong")


@pytest.mark.parametrize(("gain", "fragment"), [("-2", "must be positive"),
                                                ("1e-30", "keywords are wrong")])  # fmt: skip
def test_nonsense_gain(float_file, tmp_path, gain, fragment):
    gains = {f"P{n}G": gain for n in range(2, 13)}
    _expect(rewrite(float_file, tmp_path / "lie.fcs", **gains), fragment)


def test_understated_tot(float_file, tmp_path):
    total = read_fcs(float_file).event_count
    lie = rewrite(float_file, tmp_path / "lie.fcs", TOT=str(total // 2))
    _expect(lie, f"DATA segment holds {total} events but $TOT says {total // 2}")


def test_data_offset_off_by_four_bytes(float_file, tmp_path):
    from tests.fcs_mutate import misalign_data

    _expect(misalign_data(float_file, tmp_path / "shifted.fcs"), "runs backwards")


def test_unreadable_spillover_is_reported_not_taken_for_none(float_file, tmp_path):
    lie = rewrite(float_file, tmp_path / "lie.fcs", SPILLOVER="5,BL1-A,YL2-A,VL1-A,1,0,x")
    fcs = read_fcs(lie)
    assert fcs.spillover is None
    assert "$SPILLOVER holds 7 fields" in fcs.spillover_problem
    assert read_fcs(float_file).spillover_problem is None


@pytest.mark.parametrize(("fill", "fragment"), [(0.0, "every DATA value is 0"),
                                                (512.0, "every event is the same")])  # fmt: skip
def test_all_zero_or_constant_data(float_file, tmp_path, fill, fragment):
    from tests.fcs_mutate import with_data

    original = read_fcs(float_file, scale=False).events
    data = np.full(original.shape, fill, dtype="<f4").tobytes()
    _expect(with_data(float_file, tmp_path / "flat.fcs", data), fragment)


def test_data_that_ends_in_zeros_is_incomplete(float_file, tmp_path):
    """A copy that sets the full size first and fills DATA later."""
    from tests.fcs_mutate import split_fcs, with_data

    _, _, data, _ = split_fcs(float_file.read_bytes())
    half = len(data) // 2
    partial = with_data(float_file, tmp_path / "partial.fcs", data[:half] + bytes(len(data) - half))
    _expect(partial, "the file is incomplete")
    with pytest.raises(FcsError, match="incomplete"):
        read_fcs(partial, events=False)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    _expect(fifo, "is a FIFO (named pipe), not a regular file")
