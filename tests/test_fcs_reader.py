"""The FCS reader against real files: every corpus file is read like the reference readers
or rejected with a specific error."""

from __future__ import annotations

import flowio
import numpy as np
import pytest

from cartflow.io.errors import FcsError
from cartflow.io.fcs import read_fcs
from tests import fcsparser_reference
from tests.conftest import FCSPARSER_DATA, QUIRKS, corpus_files, require_shared

# Files that must be refused, with a word the reason must contain.
REJECTED = {
    "corrupted.fcs": "truncated",  # 10 bytes of junk
    "sample_header.fcs": "needs",  # HEADER and TEXT of a file whose DATA was cut off
    "fcs1_cleaned.lmd": "every event is the same",  # a made-up file: 528 in every value
}
# fcsparser trusts HEADER offsets that do not fit $TOT here; FlowIO (reading TEXT) is right.
FLOWIO_REFERENCE = {"data_start_offset_discrepancy_example.fcs"}


def _fcsparser_events(path):
    return fcsparser_reference.events(path, batch=corpus_files())


def _flowio_events(path):
    data = flowio.FlowData(str(path), ignore_offset_error=True, ignore_offset_discrepancy=True)
    return np.reshape(np.asarray(data.events, dtype=np.float64), (-1, data.channel_count))


def test_corpus_is_present():
    fcsparser_reference.require()
    files = corpus_files()
    assert FCSPARSER_DATA.is_dir()
    assert len([f for f in files if FCSPARSER_DATA in f.parents]) >= 17


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_file_reads_like_reference_or_is_rejected(path):
    if path.name in REJECTED:
        with pytest.raises(FcsError) as caught:
            read_fcs(path)
        assert REJECTED[path.name] in caught.value.problem
        assert path.name in str(caught.value)
        return
    fcs = read_fcs(path, scale=False)
    reference = _flowio_events(path) if path.name in FLOWIO_REFERENCE else _fcsparser_events(path)
    assert fcs.events.dtype == np.float32
    assert fcs.events.shape == reference.shape == (fcs.event_count, len(fcs.channels))
    np.testing.assert_allclose(fcs.events, reference, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("fcs_name", "truth_name", "scaled"),
    [
        ("data1.fcs", "data1_original_events.npy", False),
        ("data1.fcs", "data1_preprocessed.npy", True),
        ("B01 KC-A-W---91-US.fcs", "B01 KC-A-W---91-US_preprocessed_events.npy", True),
    ],
)
def test_scaling_matches_flowio_truth(fcs_name, truth_name, scaled):
    """$PnE log decades, $PnG gains and $TIMESTEP applied as FlowIO preprocesses them."""
    truth = np.load(require_shared(QUIRKS / "flowio-truth" / truth_name))
    fcs = read_fcs(QUIRKS / fcs_name, scale=scaled)
    np.testing.assert_allclose(fcs.events, truth, rtol=1e-6, atol=0)


def test_log_channels_are_decoded_to_decades():
    fcs = read_fcs(require_shared(QUIRKS / "data1.fcs"))
    log_columns = [i for i, c in enumerate(fcs.channels) if c.is_log]
    assert log_columns, "data1.fcs has $PnE log channels"
    values = fcs.events[:, log_columns]
    assert values.min() >= 1.0 and values.max() <= 10_000.0 + 1e-3


def test_multiple_data_sets_read_the_first_and_warn():
    fcs = read_fcs(require_shared(QUIRKS / "coulter.lmd"))
    assert fcs.event_count == _fcsparser_events(QUIRKS / "coulter.lmd").shape[0]
    assert any("more than one data set" in w for w in fcs.warnings)


def test_offset_discrepancy_is_resolved_by_tot_and_reported():
    fcs = read_fcs(require_shared(QUIRKS / "data_stop_offset_discrepancy_example.fcs"))
    assert fcs.event_count == 2
    assert any("disagree on DATA offsets" in w for w in fcs.warnings)


def test_spillover_is_parsed_with_channel_names():
    fcs = read_fcs(require_shared(QUIRKS / "G11.fcs"))
    spill = fcs.spillover
    assert spill is not None and spill.keyword == "$SPILLOVER"
    assert spill.matrix.shape == (len(spill.channels),) * 2
    np.testing.assert_allclose(np.diag(spill.matrix), 1.0)
    assert set(spill.channels) <= set(fcs.channel_names)


def test_bd_spill_keyword_is_read():
    fcs = read_fcs(require_shared(QUIRKS / "100715.fcs"), events=False)
    assert fcs.spillover is not None and fcs.spillover.keyword in {"SPILL", "$SPILL"}


def test_full_text_segment_is_kept():
    fcs = read_fcs(require_shared(QUIRKS / "100715.fcs"), events=False)
    assert fcs.text["$PAR"] == "16"
    assert len(fcs.text) > 100
    assert fcs.events is None


def test_24_bit_integers_are_read():
    fcsparser_reference.require()
    path = FCSPARSER_DATA / "Cytek_xP5" / "Cytek_xP5.fcs"
    fcs = read_fcs(path, scale=False)
    assert {c.bits for c in fcs.channels} == {24}
    np.testing.assert_array_equal(fcs.events, _fcsparser_events(path))


def test_integer_data_is_masked_to_range():
    """Bits above the next power of two of $PnR carry no data (FCS 3.1 §3.2.16)."""
    path = require_shared(QUIRKS / "variable_int_example.fcs")
    fcs = read_fcs(path, scale=False)
    for j, channel in enumerate(fcs.channels):
        if channel.range > 0:
            top = 1 << max(int(np.ceil(channel.range)) - 1, 0).bit_length()
            assert fcs.events[:, j].max() < top


def test_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FcsError, match="is a directory"):
        read_fcs(tmp_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FcsError, match="cannot be read"):
        read_fcs(tmp_path / "absent.fcs")


def test_text_padded_with_nul_bytes_is_read_as_flowio_reads_it():
    """A FACSDiva 6 export pads its TEXT segment with NUL bytes: read, with a warning."""
    path = require_shared(QUIRKS.parent / "real-data" / "flowkit" / "test_comp_example.fcs")
    fcs = read_fcs(path, scale=False)
    assert fcs.event_count == 10_703
    assert any("NUL" in w for w in fcs.warnings)
    reference = _flowio_events(path)
    assert fcs.events.shape == reference.shape
    np.testing.assert_allclose(fcs.events, reference, rtol=1e-6, atol=0)


def test_a_nul_byte_inside_text_is_still_refused(tmp_path):
    path = require_shared(QUIRKS.parent / "real-data" / "flowkit" / "test_comp_example.fcs")
    data = bytearray(path.read_bytes())
    data[100] = 0  # inside TEXT, not padding at its end
    bad = tmp_path / "bad.fcs"
    bad.write_bytes(bytes(data))
    with pytest.raises(FcsError, match="control byte 0x00"):
        read_fcs(bad)
