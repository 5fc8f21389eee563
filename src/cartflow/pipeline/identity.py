"""Who and when a file is: patient, timepoint and tube, from a manifest or from rules.

A manifest CSV names each file explicitly. Without one, configurable rules read FCS
keywords first and the file name second. Timepoint labels map to nominal days after
infusion: ``D5``, ``d+7``, ``Day 11`` → 5, 7, 11; ``M3``, ``month 6`` → 90, 180.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from cartflow.io.errors import IdentityError, ManifestError
from cartflow.panels.identity_rules import IdentityRules

DAYS_PER_MONTH = 30
MONTH_DAYS = {3: 90, 6: 180, 12: 365}
LEUKAPHERESIS_DAY = -30
MAX_FOLLOW_UP_DAYS = 30 * 366
"""Thirty years after infusion: beyond the longest follow-up a timepoint can name."""
MANIFEST_COLUMNS = ("file", "patient", "timepoint", "tube")
MANIFEST_OPTIONAL = ("blood_volume_ul", "beads_per_tube", "sample_date", "bead_lot")
PLAUSIBLE = {"blood_volume_ul": (1.0, 5_000.0), "beads_per_tube": (100.0, 1e8)}
"""Bounds of a manifest number: a blood volume of 1 µL to 5 mL, 100 to 10⁸ beads per tube."""
EARLIEST_SAMPLE = date(1990, 1, 1)
"""No CAR-T monitoring sample is older (the first infusions were in 2010)."""
ACQUIRED_WITHIN_DAYS = 3
"""A sample is acquired on the day it is drawn or up to this many days later."""

_TIMEPOINT = re.compile(
    r"""^\s*(?:
        (?P<day_unit>d|day|days|tag)\s*\+?\s*(?P<day>-?\d+)
      | (?P<month_unit>m|mo|month|months|monat)\s*\+?\s*(?P<month>\d+)
      | (?P<leuka>la|leukapheresis|apheresis|product|pre)
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Timepoint:
    label: str
    nominal_day: int


@dataclass(frozen=True)
class SampleIdentity:
    """Identity of one file, and where each part of it came from."""

    patient: str
    timepoint: Timepoint
    tube: str | None
    source: str
    blood_volume_ul: float | None = None
    beads_per_tube: float | None = None
    bead_lot: str | None = None
    sample_date: date | None = None


def parse_timepoint(label: str, source: str | Path | None = None) -> Timepoint:
    """Map a timepoint label to its nominal day; unparseable labels raise IdentityError."""
    match = _TIMEPOINT.match(label or "")
    if not match:
        raise IdentityError(source, f"timepoint label {label!r} is not understood")
    if match["day"] is not None:
        timepoint = Timepoint(f"D{int(match['day'])}", int(match["day"]))
    elif match["month"] is not None:
        months = int(match["month"])
        if months == 0:
            raise IdentityError(source, f"timepoint label {label!r} names month 0")
        timepoint = Timepoint(f"M{months}", MONTH_DAYS.get(months, months * DAYS_PER_MONTH))
    else:
        return Timepoint("LA", LEUKAPHERESIS_DAY)
    if not -MAX_FOLLOW_UP_DAYS <= timepoint.nominal_day <= MAX_FOLLOW_UP_DAYS:
        raise IdentityError(source, f"timepoint label {label!r} lies beyond 30 years of follow-up")
    return timepoint


@dataclass(frozen=True)
class ManifestRow:
    patient: str
    timepoint: Timepoint
    tube: str
    blood_volume_ul: float | None
    beads_per_tube: float | None
    bead_lot: str | None
    sample_date: date | None
    line: int


@dataclass
class Manifest:
    """Manifest rows keyed by file name (the name, not the directory)."""

    path: Path
    rows: dict[str, ManifestRow] = field(default_factory=dict)

    def lookup(self, file: Path) -> ManifestRow | None:
        return self.rows.get(file.name)


def _optional_float(value: str, path: Path, where: str, column: str) -> float | None:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(path, f"{where}, column {column}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ManifestError(path, f"{where}, column {column}: {value!r} is not finite")
    if number <= 0:
        raise ManifestError(path, f"{where}, column {column}: {value!r} must be positive")
    low, high = PLAUSIBLE[column]
    if not low <= number <= high:
        raise ManifestError(
            path, f"{where}, column {column}: {value!r} is implausible (not {low:g}–{high:g})"
        )
    return number


def _optional_date(value: str, path: Path, where: str, column: str) -> date | None:
    if value == "":
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ManifestError(
            path, f"{where}, column {column}: {value!r} is not a yyyy-mm-dd date"
        ) from None
    latest = date.today() + timedelta(days=1)
    if not EARLIEST_SAMPLE <= day <= latest:
        raise ManifestError(
            path, f"{where}, column {column}: {value!r} is implausible "
            f"(before {EARLIEST_SAMPLE.isoformat()} or in the future)"
        )  # fmt: skip
    return day


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest (CSV separated by ',', ';' or tab, in UTF-8, UTF-16 or
    cp1252, or an Excel sheet: read as clinical tables are); every problem names the line
    and column. Blank rows (trailing Excel rows) are skipped."""
    from cartflow.pipeline.clinical import read_clinical

    raw = read_clinical(path)
    if raw.problems:
        raise ManifestError(path, "; ".join(str(p) for p in raw.problems))
    cells = raw.cells
    header = list(cells.columns)
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise ManifestError(path, f"missing column(s): {', '.join(missing)}")
    manifest = Manifest(path)
    for index, raw_row in enumerate(cells.to_dict("records"), start=1):
        row = {k: v.replace(",", ".") if raw.decimal_comma and k in PLAUSIBLE else v
               for k, v in raw_row.items()}  # fmt: skip
        if not any(row.values()):
            continue
        line = raw.line(index) or index
        where = f"{raw.line_kind} {line}"
        for column in MANIFEST_COLUMNS:
            if not row.get(column):
                raise ManifestError(path, f"{where}, column {column}: empty")
        name = Path(row["file"]).name
        if name in manifest.rows:
            raise ManifestError(path, f"{where}, column file: {name!r} listed twice")
        timepoint = parse_timepoint(row["timepoint"], f"{path} {where}")
        manifest.rows[name] = ManifestRow(
            patient=row["patient"],
            timepoint=timepoint,
            tube=row["tube"],
            blood_volume_ul=_optional_float(
                row.get("blood_volume_ul", ""), path, where, "blood_volume_ul"
            ),
            beads_per_tube=_optional_float(
                row.get("beads_per_tube", ""), path, where, "beads_per_tube"
            ),
            bead_lot=row.get("bead_lot") or None,
            sample_date=_optional_date(row.get("sample_date", ""), path, where, "sample_date"),
            line=line,
        )
    if not manifest.rows:
        raise ManifestError(path, "no data rows")
    return manifest


def identify(
    file: Path,
    keywords: Mapping[str, str],
    manifest: Manifest | None = None,
    rules: IdentityRules = IdentityRules(),
) -> SampleIdentity:
    """Identity from the manifest when it lists the file, else keywords, else the file name."""
    if manifest is not None:
        row = manifest.lookup(file)
        if row is None:
            raise IdentityError(file, f"not listed in manifest {manifest.path.name}")
        return SampleIdentity(
            patient=row.patient,
            timepoint=row.timepoint,
            tube=row.tube,
            source=f"manifest line {row.line}",
            blood_volume_ul=row.blood_volume_ul,
            beads_per_tube=row.beads_per_tube,
            bead_lot=row.bead_lot,
            sample_date=row.sample_date,
        )

    def first_keyword(names: tuple[str, ...]) -> str | None:
        for name in names:
            value = keywords.get(name.upper(), "").strip()
            if value:
                return value
        return None

    found = {
        "patient": first_keyword(rules.patient_keywords),
        "timepoint": first_keyword(rules.timepoint_keywords),
        "tube": first_keyword(rules.tube_keywords),
    }
    sources = {k: "keyword" for k, v in found.items() if v}
    for pattern in rules.filename_patterns:
        match = re.match(pattern, file.stem)
        if not match:
            continue
        for key, value in match.groupdict().items():
            if key in found and found[key] is None and value:
                found[key] = value.strip()
                sources[key] = "file name"
        break
    if not found["patient"]:
        raise IdentityError(file, "no patient: no manifest row, keyword or file-name match")
    if not found["timepoint"]:
        raise IdentityError(file, "no timepoint: no manifest row, keyword or file-name match")
    return SampleIdentity(
        patient=found["patient"],
        timepoint=parse_timepoint(found["timepoint"], file),
        tube=found["tube"],
        source=", ".join(f"{k} from {v}" for k, v in sources.items()),
    )


@dataclass(frozen=True)
class Disagreement:
    """One source of a file's identity contradicting the identity the file was given."""

    part: str  # patient, timepoint or date
    given: str
    found: str

    def __str__(self) -> str:
        return f"{self.part}: {self.given}, but {self.found}"


def _patient_key(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _name_parts(stem: str, rules: IdentityRules) -> dict[str, str]:
    for pattern in rules.filename_patterns:
        match = re.match(pattern, stem)
        if match:
            return {k: v.strip() for k, v in match.groupdict().items() if v}
    return {}


def _nominal_day(label: str) -> int | None:
    try:
        return parse_timepoint(label).nominal_day
    except IdentityError:
        return None


def plausible_day(day: int, nominal_day: int) -> bool:
    """Whether a sample drawn ``day`` days after infusion can be the timepoint of
    ``nominal_day``: after infusion (before it for leukapheresis) and within half the
    nominal day of it (at least 14 days either way)."""
    if nominal_day < 0:
        return day <= 0
    return day >= 0 and abs(day - nominal_day) <= max(14, nominal_day // 2)


def cross_check(
    file: Path,
    keywords: Mapping[str, str],
    identity: SampleIdentity,
    rules: IdentityRules = IdentityRules(),
    acquired: date | None = None,
    infusion: date | None = None,
) -> tuple[Disagreement, ...]:
    """Every independent source of identity that contradicts ``identity``: the patient and
    timepoint keywords, the file name and ``$FIL`` (read with the file-name patterns), the
    acquisition date (``$DATE``) against the sample date, and the sample's day after
    ``infusion`` against its timepoint."""
    evidence: list[tuple[str, str, str]] = []  # part, value, where
    for part, names in (("patient", rules.patient_keywords),
                        ("timepoint", rules.timepoint_keywords)):  # fmt: skip
        for name in names:
            value = keywords.get(name.upper(), "").strip()
            if value:
                evidence.append((part, value, f"keyword {name}"))
    stored_name = Path(keywords.get("$FIL", "").strip().replace("\\", "/")).stem
    for where, stem in (("file name", file.stem), ("$FIL", stored_name)):
        parts = _name_parts(stem, rules) if stem else {}
        evidence += [(p, parts[p], where) for p in ("patient", "timepoint") if p in parts]
    given = f"({identity.source})"
    found: list[Disagreement] = []
    for part, value, where in evidence:
        if part == "patient" and _patient_key(value) != _patient_key(identity.patient):
            found.append(
                Disagreement(part, f"{identity.patient!r} {given}", f"{value!r} ({where})")
            )
        if part == "timepoint":
            day = _nominal_day(value)
            if day is not None and day != identity.timepoint.nominal_day:
                found.append(Disagreement(
                    part, f"{identity.timepoint.label!r} {given}", f"{value!r} ({where})"
                ))  # fmt: skip
    drawn = identity.sample_date or acquired
    if identity.sample_date and acquired:
        lag = (acquired - identity.sample_date).days
        if not 0 <= lag <= ACQUIRED_WITHIN_DAYS:
            found.append(Disagreement(
                "date", f"sample_date {identity.sample_date.isoformat()} {given}",
                f"acquired {acquired.isoformat()} ($DATE)"
            ))  # fmt: skip
    if infusion and drawn:
        day = (drawn - infusion).days
        if not plausible_day(day, identity.timepoint.nominal_day):
            source = "sample_date" if identity.sample_date else "acquired ($DATE)"
            found.append(Disagreement(
                "date",
                f"{identity.patient} {identity.timepoint.label} "
                f"(day {identity.timepoint.nominal_day}) {given}",
                f"{source} {drawn.isoformat()} is day {day} after {identity.patient}'s "
                f"infusion on {infusion.isoformat()}",
            ))  # fmt: skip
    return tuple(dict.fromkeys(found))
