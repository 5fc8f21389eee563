"""Strict, bounded-memory reader for FCS 2.0, 3.0 and 3.1 list-mode files.

Every size the file claims is checked against the real file size before anything is
allocated, so a hostile $TOT or offset costs nothing. Events come back as one float32
matrix (events x parameters) read straight from disk with numpy; scaling ($PnE, $PnG,
$TIMESTEP) is applied in place, per column.

:mod:`.text` parses HEADER and TEXT, :mod:`.data` decodes DATA, :mod:`.checks` refuses
events that contradict their TEXT, :mod:`.spill` reads spillover matrices and
:mod:`.reader` puts them together.
"""

from cartflow.io.fcs.checks import IMPLAUSIBLE_SHARE, IMPLAUSIBLE_VALUE, TIME_BACKWARDS_SHARE
from cartflow.io.fcs.data import PROBE_EVENTS, READ_BLOCK
from cartflow.io.fcs.model import Channel, FcsFile, Spillover
from cartflow.io.fcs.reader import acquisition_date, read_fcs, require_regular_file
from cartflow.io.fcs.spill import SPILL_KEYWORDS, read_spillover
from cartflow.io.fcs.text import HEADER_BYTES, MAX_PARAMETERS, MAX_TEXT_BYTES, SUPPORTED_VERSIONS

__all__ = [
    "HEADER_BYTES",
    "IMPLAUSIBLE_SHARE",
    "IMPLAUSIBLE_VALUE",
    "MAX_PARAMETERS",
    "MAX_TEXT_BYTES",
    "PROBE_EVENTS",
    "READ_BLOCK",
    "SPILL_KEYWORDS",
    "SUPPORTED_VERSIONS",
    "TIME_BACKWARDS_SHARE",
    "Channel",
    "FcsFile",
    "Spillover",
    "acquisition_date",
    "read_fcs",
    "read_spillover",
    "require_regular_file",
]
