"""The typed records the stages hand to the store and read back from it, and what of a
file's keywords it keeps."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

IDENTITY_FIELDS = (
    "patient",
    "timepoint",
    "nominal_day",
    "tube",
    "blood_volume_ul",
    "beads_per_tube",
    "bead_lot",
    "sample_date",
)
"""A sample's identity as a manifest gives it (what a corrected manifest row may change)."""


STORED_KEYWORDS = re.compile(
    r"^(?:\$(?:P\d+[A-Z]+|BEGIN\w*|END\w*|NEXTDATA|BYTEORD|DATATYPE|MODE|PAR|TOT|CYT|CYTSN|"
    r"DATE|BTIM|ETIM|TIMESTEP|SPILLOVER|SPILL|VOL|ABRT|LOST|SYS|TR|FLOWRATE|ORIGINALITY|"
    r"LAST_MODIFIED|UNICODE|CSMODE|CSVBITS|CSV\d+FLAG)|SPILL)$"
)
"""TEXT keywords a file's row keeps: what describes the acquisition and the instrument.
Others ($SRC, $COM, $FIL, $OP, names, birth dates, sample ids) may identify a person."""


def stored_keywords(text: dict[str, str], also: Iterable[str] = ()) -> dict[str, str]:
    """The keywords of ``text`` the store keeps: :data:`STORED_KEYWORDS` and ``also``
    (the identity keywords and a lab's allow-list); every other keyword is dropped."""
    extra = {name.upper() for name in also}
    return {k: v for k, v in text.items() if k.upper() in extra or STORED_KEYWORDS.match(k)}


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    path: str
    size_bytes: int
    fcs_version: str
    cytometer: str | None
    event_count: int
    channel_count: int
    has_spillover: bool
    acquisition_date: date | None
    keywords: dict[str, str]
    reader_warnings: list[str]


@dataclass(frozen=True)
class SampleRecord:
    patient: str
    timepoint: str
    nominal_day: int
    tube: str
    panel_id: str
    panel_version: int
    panel_sha256: str
    identity_source: str
    blood_volume_ul: float | None
    beads_per_tube: float | None
    bead_lot: str | None
    sample_date: date | None


@dataclass(frozen=True)
class StoredSample:
    """A stored sample with its file's name and SHA-256, as the store lists it."""

    sample_id: int
    file: str
    sha256: str
    patient: str
    timepoint: str
    nominal_day: int
    tube: str
    panel_id: str
    blood_volume_ul: float | None
    beads_per_tube: float | None
    sample_date: date | None


@dataclass(frozen=True)
class PopulationCount:
    """One population's count from a sample's newest gating, with the sample's identity,
    file and the run and template that gated it (fields in the order of the tables)."""

    sample_id: int
    run_id: int
    file: str
    sha256: str
    patient: str
    timepoint: str
    nominal_day: int
    tube: str
    panel_id: str
    blood_volume_ul: float | None
    beads_per_tube: float | None
    bead_lot: str | None
    sample_date: date | None
    template_id: str
    template_sha256: str
    population: str
    parent: str | None
    count: int
    parent_count: int | None


@dataclass(frozen=True)
class PopulationRecord:
    population: str
    parent: str | None
    count: int
    parent_count: int | None


@dataclass(frozen=True)
class GateRecord:
    gate: str
    method: str
    value: float | None
    fallback: bool
    evidence: dict[str, Any]
