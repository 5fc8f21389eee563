"""Who and when a file is: patient, timepoint and tube, from a manifest or from rules.

A manifest CSV names each file explicitly. Without one, configurable rules read FCS
keywords first and the file name second. Timepoint labels map to nominal days after
infusion: ``D5``, ``d+7``, ``Day 11`` → 5, 7, 11; ``M3``, ``month 6`` → 90, 180.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from pipeline.errors import IdentityError, ManifestError, YamlPlaces, yaml_problem

DAYS_PER_MONTH = 30
MONTH_DAYS = {3: 90, 6: 180, 12: 365}
LEUKAPHERESIS_DAY = -30
MAX_FOLLOW_UP_DAYS = 30 * 366
"""Thirty years after infusion: beyond the longest follow-up a timepoint can name."""
MANIFEST_COLUMNS = ("file", "patient", "timepoint", "tube")
MANIFEST_OPTIONAL = ("blood_volume_ul", "beads_per_tube", "sample_date", "bead_lot")

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
class IdentityRules:
    """Where to look for identity when no manifest names the file."""

    patient_keywords: tuple[str, ...] = ("PATIENT ID", "PATIENTID", "$PATIENTID", "SUBJECT ID")
    timepoint_keywords: tuple[str, ...] = ("TIMEPOINT", "VISIT", "TIME POINT")
    tube_keywords: tuple[str, ...] = ("TUBE NAME", "TUBE", "$TUBE")
    filename_patterns: tuple[str, ...] = (
        r"^(?P<patient>[A-Za-z]+[-_]?\d+)[ _-]+"
        r"(?P<timepoint>(?:LA|D\+?-?\d+|M\d+|Day ?\d+|Month ?\d+))"
        r"[ _-]+(?P<tube>.+?)(?:_\d{3})?$",
    )

    @classmethod
    def from_yaml(cls, path: Path) -> IdentityRules:
        """Rules from a YAML file; each problem names the file and line."""
        try:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError) as exc:
            problem = getattr(exc, "strerror", None) or exc
            raise IdentityError(path, f"identity rules cannot be read: {problem}") from exc
        except yaml.YAMLError as exc:
            raise IdentityError(*yaml_problem(path, exc)) from exc
        places = YamlPlaces.of_text(path, text)
        if not isinstance(raw, dict):
            problem = "identity rules must be a mapping of rule: [values]"
            raise IdentityError(places.where(), problem)
        known = ", ".join(cls.__dataclass_fields__)
        for name, values in raw.items():
            where = places.where(str(name))
            if name not in cls.__dataclass_fields__:
                raise IdentityError(where, f"unknown identity rule(s): {name} (known: {known})")
            texts = isinstance(values, list) and all(isinstance(v, str) and v for v in values)
            if not texts:
                raise IdentityError(where, f"{name}: expected a list of texts, not {values!r}")
        fields = {k: tuple(v) for k, v in raw.items()}
        for i, pattern in enumerate(fields.get("filename_patterns", ())):
            try:
                re.compile(pattern)
            except re.error as exc:
                where = places.where(f"filename_patterns[{i}]")
                raise IdentityError(where, f"filename pattern {pattern!r}: {exc}") from exc
        return cls(**fields)


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


def _optional_float(value: str, path: Path, line: int, column: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(
            path, f"line {line}, column {column}: {value!r} is not a number"
        ) from None
    if not math.isfinite(number):
        raise ManifestError(path, f"line {line}, column {column}: {value!r} is not finite")
    if number <= 0:
        raise ManifestError(path, f"line {line}, column {column}: {value!r} must be positive")
    return number


def _optional_date(value: str, path: Path, line: int, column: str) -> date | None:
    if value.strip() == "":
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ManifestError(
            path, f"line {line}, column {column}: {value!r} is not a yyyy-mm-dd date"
        ) from None


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest CSV; every problem names the line and column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, f"cannot be read: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise ManifestError(path, f"missing column(s): {', '.join(missing)}")
    manifest = Manifest(path)
    for line, raw in enumerate(reader, start=2):
        if None in raw:  # csv puts cells beyond the header under None
            cells = len(reader.fieldnames) + len(raw[None])
            raise ManifestError(path, f"line {line}: {cells} cells, the header has {len(header)}")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        for column in MANIFEST_COLUMNS:
            if not row.get(column):
                raise ManifestError(path, f"line {line}, column {column}: empty")
        name = Path(row["file"]).name
        if name in manifest.rows:
            raise ManifestError(path, f"line {line}, column file: {name!r} listed twice")
        timepoint = parse_timepoint(row["timepoint"], f"{path} line {line}")
        manifest.rows[name] = ManifestRow(
            patient=row["patient"],
            timepoint=timepoint,
            tube=row["tube"],
            blood_volume_ul=_optional_float(
                row.get("blood_volume_ul", ""), path, line, "blood_volume_ul"
            ),
            beads_per_tube=_optional_float(
                row.get("beads_per_tube", ""), path, line, "beads_per_tube"
            ),
            bead_lot=row.get("bead_lot") or None,
            sample_date=_optional_date(row.get("sample_date", ""), path, line, "sample_date"),
            line=line,
        )
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
