"""The clinical table of an outcome analysis: loading, validation and per-patient derivations.

A clinical table (CSV or Excel) has one row per patient: infusion date, bridging, marrow
blasts before and after bridging, blood counts before lymphodepletion, event dates and the
last follow-up. Loading collects every problem (row, column, what is wrong) and raises one
:class:`ClinicalTableError`; :func:`validate_clinical` returns the same list without raising.
Derived per patient: EFS and OS in days from infusion, tumour-burden classes and dynamics, and
the ALL-Hematotox score from a configurable point table.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml

from panels import PANEL_DIR
from pipeline.errors import CartflowError, YamlPlaces, first_line, yaml_problem

REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient",
    "infusion_date",
    "relapse_date",
    "death_date",
    "last_followup_date",
)
DATE_COLUMNS: tuple[str, ...] = (
    "infusion_date",
    "relapse_date",
    "progression_date",
    "death_date",
    "hsct_date",
    "last_followup_date",
)
EVENT_DATE_COLUMNS: tuple[str, ...] = (
    "relapse_date",
    "progression_date",
    "death_date",
    "hsct_date",
)
PERCENT_COLUMNS: tuple[str, ...] = ("tumour_burden_before_pct", "tumour_burden_after_pct")
NUMERIC_COLUMNS: tuple[str, ...] = (
    *PERCENT_COLUMNS,
    "anc_per_nl",
    "platelets_per_nl",
    "haemoglobin_g_dl",
    "crp_mg_l",
)
BOOL_COLUMNS: tuple[str, ...] = ("cd19_negative_relapse",)
EXCEL_SUFFIXES = frozenset({".xlsx", ".xlsm"})

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]00:00(?::00(?:\.0+)?)?)?$")
_DOTTED_DATE = re.compile(r"^\d{1,2}\.\d{1,2}\.\d{4}$")
_TRUE = frozenset({"true", "yes", "y", "1", "ja"})
_FALSE = frozenset({"false", "no", "n", "0", "nein"})
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")

SourceKind = Literal["csv", "excel", "frame"]


class ClinicalTableError(CartflowError):
    """The clinical table has problems; ``problems`` lists each with its row and column."""

    code = "clinical"

    def __init__(
        self,
        source: str | Path | None,
        problem: str,
        problems: Iterable[ClinicalProblem] = (),
    ) -> None:
        super().__init__(source, problem)
        self.problems: tuple[ClinicalProblem, ...] = tuple(problems)


@dataclass(frozen=True)
class ClinicalProblem:
    """One problem of a clinical table: 1-based data row (and file line), column, message."""

    message: str
    row: int | None = None
    column: str | None = None
    line: int | None = None
    line_kind: str = "line"

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            extra = f" ({self.line_kind} {self.line})" if self.line is not None else ""
            where.append(f"row {self.row}{extra}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass(frozen=True)
class RawTable:
    """A clinical table as read: every cell a stripped string, and how rows map to lines."""

    cells: pd.DataFrame
    source: str
    kind: SourceKind
    decimal_comma: bool = False
    problems: tuple[ClinicalProblem, ...] = ()
    lines: tuple[int, ...] = ()  # CSV: the line each data row ends on

    def line(self, row: int) -> int | None:
        """The file line (CSV) or sheet row (Excel) of a 1-based data row."""
        if self.kind == "frame":
            return None
        return self.lines[row - 1] if self.lines else row + 1

    @property
    def line_kind(self) -> str:
        return "sheet row" if self.kind == "excel" else "line"


@dataclass(frozen=True)
class ClinicalTable:
    """A validated clinical table: typed columns, one row per patient."""

    data: pd.DataFrame
    source: str
    columns: tuple[str, ...]

    @property
    def patients(self) -> tuple[str, ...]:
        return tuple(self.data["patient"])


# --- reading ----------------------------------------------------------------------------------


def _normalise_header(name: object) -> str:
    return re.sub(r"\s+", "_", str(name).strip().lower())


def _cell_text(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp | np.datetime64 | datetime | date):
        return pd.Timestamp(value).date().isoformat()
    return str(value).strip()


def _as_cells(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame.map(_cell_text) if len(frame.columns) else frame.astype(str)
    cells.columns = [_normalise_header(c) for c in frame.columns]
    return cells.reset_index(drop=True)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _split_csv(path: Path) -> tuple[list[list[str]], list[int], bool]:
    """Records of a CSV file (cells separated by ',', ';' or a tab, whichever the header
    uses most) with the line each ends on, and whether ';' separates cells."""
    text = _read_text(path)
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    semicolon = delimiter == ";"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, lines = [], []
    for record in reader:
        records.append([cell.strip() for cell in record])
        lines.append(reader.line_num)
    return records, lines, semicolon


def _read_csv(path: Path) -> RawTable:
    records, lines, semicolon = _split_csv(path)
    empty = RawTable(pd.DataFrame(), str(path), "csv")
    if not records or not any(records[0]):
        return _with_problem(empty, "file has no header row")
    header, body = records[0], records[1:]
    width = len(header)
    problems = []
    for i, record in enumerate(body):
        while len(record) > width and record[-1] == "":
            record.pop()
        if len(record) > width:
            message = f"has {len(record)} cells, the header has {width}"
            problems.append(ClinicalProblem(message, i + 1, None, lines[i + 1]))
            body[i] = []
    cells = pd.DataFrame([r + [""] * (width - len(r)) for r in body], columns=header, dtype=str)
    lines_of_rows = tuple(lines[1:])
    return RawTable(_as_cells(cells), str(path), "csv", semicolon, tuple(problems), lines_of_rows)


def _read_excel(path: Path, sheet: str | int) -> RawTable:
    try:
        import openpyxl  # noqa: F401
    except ImportError as exc:
        raise ClinicalTableError(path, "reading Excel files needs openpyxl installed") from exc
    frame = pd.read_excel(path, sheet_name=sheet, dtype=object, engine="openpyxl")
    return RawTable(_as_cells(frame), str(path), "excel")


def read_clinical(source: Path | str | pd.DataFrame, sheet: str | int = 0) -> RawTable:
    """Read a clinical CSV, Excel sheet or DataFrame into stripped strings (no validation).

    File-level problems (missing, empty, unreadable, ragged rows) come back in ``problems``.
    """
    if isinstance(source, pd.DataFrame):
        return RawTable(_as_cells(source), "<table>", "frame")
    path = Path(source)
    kind: SourceKind = "excel" if path.suffix.lower() in EXCEL_SUFFIXES else "csv"
    empty = RawTable(pd.DataFrame(), str(path), kind)
    if not path.is_file():
        return _with_problem(empty, "file does not exist")
    if path.stat().st_size == 0:
        return _with_problem(empty, "file is empty")
    try:
        return _read_excel(path, sheet) if kind == "excel" else _read_csv(path)
    except ClinicalTableError:
        raise
    except Exception as exc:  # any reader failure (csv, zip, openpyxl) is a problem, not a crash
        return _with_problem(empty, f"cannot be read: {first_line(exc)}")


def _with_problem(table: RawTable, message: str) -> RawTable:
    problems = (*table.problems, ClinicalProblem(message))
    return replace(table, problems=problems)


# --- parsing and validation -------------------------------------------------------------------


@dataclass
class _Collector:
    raw: RawTable
    problems: list[ClinicalProblem] = field(default_factory=list)

    def add(self, message: str, row_index: int | None = None, column: str | None = None) -> None:
        row = None if row_index is None else int(row_index) + 1
        line = None if row is None else self.raw.line(row)
        self.problems.append(ClinicalProblem(message, row, column, line, self.raw.line_kind))

    def add_many(self, mask: pd.Series, column: str, message) -> None:
        for index in mask[mask].index:
            self.add(message(index), index, column)


def _parse_dates(cells: pd.Series) -> pd.Series:
    iso = cells.str.match(_ISO_DATE)
    dotted = cells.str.match(_DOTTED_DATE)
    out = pd.Series(pd.NaT, index=cells.index, dtype="datetime64[ns]")
    day = cells.str.slice(0, 10)
    out[iso] = pd.to_datetime(day[iso], format="%Y-%m-%d", errors="coerce")
    out[dotted] = pd.to_datetime(cells[dotted], format="%d.%m.%Y", errors="coerce")
    return out


def _parse_numbers(cells: pd.Series, decimal_comma: bool) -> pd.Series:
    text = cells.str.replace(" ", "", regex=False)
    if decimal_comma:
        comma = text.str.match(_DECIMAL_COMMA)
        text = text.where(~comma, text.str.replace(",", ".", regex=False))
    numbers = pd.to_numeric(text, errors="coerce")
    return numbers.where(np.isfinite(numbers))


def _parse_bools(cells: pd.Series) -> pd.Series:
    lower = cells.str.lower()
    out = pd.Series(pd.NA, index=cells.index, dtype="boolean")
    out[lower.isin(_TRUE)] = True
    out[lower.isin(_FALSE)] = False
    return out


def _check_columns(raw: RawTable, sink: _Collector) -> None:
    columns = list(raw.cells.columns)
    for name in sorted({c for c in columns if columns.count(c) > 1}):
        sink.add("appears more than once in the header", column=name)
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            sink.add("required column is missing", column=name)


def _typed_column(raw: RawTable, name: str, sink: _Collector) -> pd.Series:
    cells = raw.cells[name]
    blank = cells == ""
    if name in DATE_COLUMNS:
        parsed = _parse_dates(cells)
        sink.add_many(
            parsed.isna() & ~blank,
            name,
            lambda i: f"{cells[i]!r} is not a date (use YYYY-MM-DD)",
        )
        return parsed
    if name in NUMERIC_COLUMNS:
        parsed = _parse_numbers(cells, raw.decimal_comma)
        sink.add_many(parsed.isna() & ~blank, name, lambda i: f"{cells[i]!r} is not a number")
        sink.add_many(parsed < 0, name, lambda i: f"{cells[i]} must not be negative")
        if name in PERCENT_COLUMNS:
            sink.add_many(parsed > 100, name, lambda i: f"{cells[i]} % is above 100 %")
        return parsed
    if name in BOOL_COLUMNS:
        parsed = _parse_bools(cells)
        sink.add_many(parsed.isna() & ~blank, name, lambda i: f"{cells[i]!r} is not yes/no")
        return parsed
    return cells.where(~blank, None)


def _check_patients(data: pd.DataFrame, known: Collection[str] | None, sink: _Collector) -> None:
    patient = data["patient"]
    sink.add_many(patient.isna(), "patient", lambda _i: "patient is empty")
    first_row = {}
    for index, name in patient.dropna().items():
        if name in first_row:
            sink.add(f"{name!r} repeats row {first_row[name] + 1}", index, "patient")
        else:
            first_row[name] = index
    if known is not None:
        known_set = set(known)
        unknown = patient.notna() & ~patient.isin(known_set)
        sink.add_many(unknown, "patient", lambda i: f"{patient[i]!r} has no results in the store")


def _date_text(value: pd.Timestamp) -> str:
    return value.date().isoformat()


def _check_dates(data: pd.DataFrame, sink: _Collector) -> None:
    for name in ("infusion_date", "last_followup_date"):
        if name in data:
            missing = data[name].isna() & (sink.raw.cells[name] == "")
            sink.add_many(missing, name, lambda _i: "required value is missing")
    infusion = data["infusion_date"]
    follow = data["last_followup_date"]
    for name in (c for c in EVENT_DATE_COLUMNS if c in data):
        event = data[name]
        sink.add_many(
            event < infusion,
            name,
            lambda i, e=event: (
                f"{_date_text(e[i])} is before infusion_date {_date_text(infusion[i])}"
            ),
        )
        sink.add_many(
            follow < event,
            "last_followup_date",
            lambda i, e=event, n=name: f"{_date_text(follow[i])} is before {n} {_date_text(e[i])}",
        )
    sink.add_many(
        follow < infusion,
        "last_followup_date",
        lambda i: f"{_date_text(follow[i])} is before infusion_date {_date_text(infusion[i])}",
    )
    for name in ("relapse_date", "progression_date", "hsct_date"):
        if name in data:
            sink.add_many(
                data[name] > data["death_date"],
                name,
                lambda i, n=name: (
                    f"{_date_text(data[n][i])} is after death_date "
                    f"{_date_text(data['death_date'][i])}"
                ),
            )


def _file_level(problems: list[ClinicalProblem]) -> bool:
    return any(p.row is None for p in problems)


def _parse(
    raw: RawTable, known: Collection[str] | None
) -> tuple[pd.DataFrame | None, list[ClinicalProblem]]:
    sink = _Collector(raw, list(raw.problems))
    if _file_level(sink.problems):
        return None, sink.problems
    if not len(raw.cells.columns):
        sink.add("table has no columns")
        return None, sink.problems
    blank_rows = (raw.cells == "").all(axis=1)
    if blank_rows.all():
        sink.add("table has no data rows")
    _check_columns(raw, sink)
    if _file_level(sink.problems):
        return None, sink.problems
    trimmed = replace(raw, cells=raw.cells[~blank_rows])
    sink.raw = trimmed
    data = pd.DataFrame(
        {name: _typed_column(trimmed, name, sink) for name in trimmed.cells.columns},
        index=trimmed.cells.index,
    )
    _check_patients(data, known, sink)
    _check_dates(data, sink)
    return data.reset_index(drop=True), sink.problems


def _problem_order(problem: ClinicalProblem) -> tuple[int, str]:
    return (problem.row or 0, problem.column or "")


def validate_clinical(
    source: Path | str | pd.DataFrame,
    known_patients: Collection[str] | None = None,
    sheet: str | int = 0,
) -> list[ClinicalProblem]:
    """Every problem of a clinical table, by row then column (empty: the table is valid)."""
    _, problems = _parse(read_clinical(source, sheet), known_patients)
    return sorted(problems, key=_problem_order)


def load_clinical(
    source: Path | str | pd.DataFrame,
    known_patients: Collection[str] | None = None,
    sheet: str | int = 0,
) -> ClinicalTable:
    """Read and validate a clinical table; raise one ClinicalTableError listing all problems."""
    raw = read_clinical(source, sheet)
    data, problems = _parse(raw, known_patients)
    if problems or data is None:
        problems = sorted(problems, key=_problem_order)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise ClinicalTableError(
            raw.source, f"{count}: " + "; ".join(str(p) for p in problems), problems
        )
    return ClinicalTable(data, raw.source, tuple(data.columns))


# --- derivations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointOptions:
    """How EFS and OS are derived: which dates are EFS events, and whether HSCT censors EFS."""

    censor_at_hsct: bool = False
    efs_event_columns: tuple[str, ...] = ("relapse_date", "progression_date", "death_date")


def _days(dates: pd.Series, start: pd.Series) -> pd.Series:
    return (dates - start).dt.days.astype(float)


def derive_endpoints(
    data: pd.DataFrame, options: EndpointOptions = EndpointOptions()
) -> pd.DataFrame:
    """EFS and OS (days from infusion, event flags) per patient, censored at last follow-up."""
    infusion = data["infusion_date"]
    follow = _days(data["last_followup_date"], infusion)
    columns = [c for c in options.efs_event_columns if c in data]
    events = pd.DataFrame({c: _days(data[c], infusion) for c in columns}, index=data.index)
    first = events.min(axis=1, skipna=True)
    has_event = first.notna()
    kind = events.fillna(np.inf).idxmin(axis=1).str.removesuffix("_date")
    hsct = (
        _days(data["hsct_date"], infusion)
        if "hsct_date" in data
        else pd.Series(np.nan, index=data.index)
    )
    hsct_censors = options.censor_at_hsct & hsct.notna() & (~has_event | (hsct < first))
    efs_days = first.where(has_event, follow).where(~hsct_censors, hsct)
    death = _days(data["death_date"], infusion)
    return pd.DataFrame(
        {
            "patient": data["patient"],
            "efs_days": efs_days,
            "efs_event": has_event & ~hsct_censors,
            "efs_event_type": kind.where(has_event & ~hsct_censors, "none"),
            "efs_censored_at_hsct": hsct_censors,
            "os_days": death.where(death.notna(), follow),
            "os_event": death.notna(),
            "followup_days": follow,
            "hsct": hsct.notna(),
        },
        index=data.index,
    )


BURDEN_LEVELS: tuple[str, ...] = ("low", "high")
DYNAMICS_LEVELS: tuple[str, ...] = ("low→low", "high→low", "low→high", "high→high")


def burden_class(percent: pd.Series, threshold_pct: float = 5.0) -> pd.Series:
    """'high' (> threshold % marrow blasts) or 'low'; missing where the value is missing."""
    labels = np.where(percent > threshold_pct, "high", "low")
    return pd.Series(pd.Categorical(labels, categories=BURDEN_LEVELS), index=percent.index).where(
        percent.notna()
    )


def burden_dynamics(before: pd.Series, after: pd.Series) -> pd.Series:
    """Burden class before → after bridging, e.g. 'high→low'; missing if either is missing."""
    text = before.astype(str) + "→" + after.astype(str)
    dynamics = pd.Series(pd.Categorical(text, categories=DYNAMICS_LEVELS), index=before.index)
    return dynamics.where(before.notna() & after.notna())


# --- ALL-Hematotox ----------------------------------------------------------------------------

HEMATOTOX_PATH = PANEL_DIR / "hematotox.yaml"
"""The shipped point table (ALL-Hematotox, unverified: its file says so)."""


_RULE = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*$")
_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


@dataclass(frozen=True)
class ScoreRule:
    op: str
    limit: float
    points: int

    def matches(self, values: np.ndarray) -> np.ndarray:
        return _OPS[self.op](values, self.limit)


@dataclass(frozen=True)
class ScoreItem:
    """One input of the score: its column, unit and rules (first match wins)."""

    name: str
    column: str
    unit: str
    rules: tuple[ScoreRule, ...]
    otherwise: int = 0

    def points(self, values: pd.Series) -> pd.Series:
        array = values.to_numpy(dtype=float)
        conditions = [r.matches(array) for r in self.rules]
        choice = np.select(conditions, [r.points for r in self.rules], self.otherwise)
        return pd.Series(choice, index=values.index, dtype=float).where(values.notna())


@dataclass(frozen=True)
class RiskBand:
    label: str
    max: float | None = None


@dataclass(frozen=True)
class HematotoxTable:
    """A configurable point table (ALL-Hematotox by default) with its source and caveat."""

    id: str
    name: str
    source: str
    caveat: str
    verified: bool
    items: tuple[ScoreItem, ...]
    risk_groups: Mapping[str, tuple[RiskBand, ...]]
    origin: str = "<text>"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "caveat": self.caveat,
            "verified": self.verified,
            "origin": self.origin,
            "items": [
                {
                    "name": i.name,
                    "column": i.column,
                    "unit": i.unit,
                    "otherwise": i.otherwise,
                    "rules": [[f"{r.op} {r.limit:g}", r.points] for r in i.rules],
                }
                for i in self.items
            ],
            "risk_groups": {
                k: [{"label": b.label, "max": b.max} for b in v]
                for k, v in self.risk_groups.items()
            },
        }


def _hematotox_error(origin: str, problem: str) -> ClinicalTableError:
    return ClinicalTableError(origin, f"hematotox table: {problem}")


def _parse_rule(places: YamlPlaces, key: str, item: str, rule: object) -> ScoreRule:
    if not (isinstance(rule, list | tuple) and len(rule) == 2):
        raise _hematotox_error(places.where(key), f"item {item}: rule {rule!r} is not "
                               "[condition, points]")  # fmt: skip
    match = _RULE.match(str(rule[0]))
    if not match or not isinstance(rule[1], int):
        raise _hematotox_error(places.where(key), f"item {item}: rule {rule!r} is not "
                               "['< 1.5', points]")  # fmt: skip
    return ScoreRule(match[1], float(match[2]), int(rule[1]))


def _parse_item(places: YamlPlaces, key: str, raw: object) -> ScoreItem:
    if not isinstance(raw, dict) or not {"name", "column", "rules"} <= raw.keys():
        raise _hematotox_error(places.where(key), f"item {raw!r} needs name, column and rules")
    if not isinstance(raw["rules"], list):
        raise _hematotox_error(places.where(f"{key}.rules"),
                               f"item {raw['name']}: rules must be a list")  # fmt: skip
    rules = tuple(
        _parse_rule(places, f"{key}.rules[{i}]", raw["name"], r) for i, r in enumerate(raw["rules"])
    )
    otherwise = raw.get("otherwise", 0)
    if not isinstance(otherwise, int) or isinstance(otherwise, bool):
        raise _hematotox_error(places.where(f"{key}.otherwise"),
                               f"item {raw['name']}: otherwise must be whole points")  # fmt: skip
    return ScoreItem(str(raw["name"]), str(raw["column"]), str(raw.get("unit", "")), rules,
                     otherwise)  # fmt: skip


def _parse_bands(places: YamlPlaces, name: str, raw: object) -> tuple[RiskBand, ...]:
    key = f"risk_groups.{name}"
    if not isinstance(raw, list) or not raw or not all(isinstance(b, dict) for b in raw):
        raise _hematotox_error(places.where(key), f"risk group {name}: needs a list of "
                               "{max, label}")  # fmt: skip
    for i, band in enumerate(raw):
        if "label" not in band:
            raise _hematotox_error(places.where(f"{key}[{i}]"),
                                   f"risk group {name}: band {i + 1} has no label")  # fmt: skip
        limit = band.get("max")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)):
            raise _hematotox_error(places.where(f"{key}[{i}].max"),
                                   f"risk group {name}: max {limit!r} is not a number")  # fmt: skip
    bands = tuple(RiskBand(str(b["label"]), b.get("max")) for b in raw)
    if any(b.max is None for b in bands[:-1]) or bands[-1].max is not None:
        raise _hematotox_error(places.where(key),
                               f"risk group {name}: only the last band may lack 'max'")  # fmt: skip
    return bands


def parse_hematotox(text: str, origin: str = "<text>") -> HematotoxTable:
    """Parse a point table from YAML text (schema as in panels/hematotox.yaml); each problem
    names the origin and line."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _hematotox_error(*yaml_problem(origin, exc)) from exc
    places = YamlPlaces.of_text(origin, text)
    if not isinstance(raw, dict) or "items" not in raw or "source" not in raw:
        raise _hematotox_error(places.where(), "needs 'source' and 'items'")
    if not isinstance(raw["items"], list):
        raise _hematotox_error(places.where("items"), "items must be a list")
    groups = raw.get("risk_groups") or {}
    if not isinstance(groups, dict):
        raise _hematotox_error(places.where("risk_groups"),
                               "risk_groups must be a mapping of name: bands")  # fmt: skip
    return HematotoxTable(
        id=str(raw.get("id", "hematotox")),
        name=str(raw.get("name", raw.get("id", "Hematotox"))),
        source=str(raw["source"]).strip(),
        caveat=str(raw.get("caveat", "")).strip(),
        verified=bool(raw.get("verified", False)),
        items=tuple(
            _parse_item(places, f"items[{i}]", item) for i, item in enumerate(raw["items"])
        ),
        risk_groups={str(k): _parse_bands(places, str(k), v) for k, v in groups.items()},
        origin=origin,
    )


def load_hematotox(path: Path | None = None) -> HematotoxTable:
    """The point table from a YAML file; without one, the shipped panels/hematotox.yaml."""
    path = HEMATOTOX_PATH if path is None else path
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _hematotox_error(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    return parse_hematotox(text, str(path))


def risk_group(score: pd.Series, bands: tuple[RiskBand, ...]) -> pd.Series:
    """Label each score with the first band whose 'max' it does not exceed."""
    values = score.to_numpy(dtype=float)
    conditions = [values <= b.max for b in bands[:-1]]
    labels = np.select(conditions, [b.label for b in bands[:-1]], bands[-1].label)
    categories = [b.label for b in bands]
    return pd.Series(pd.Categorical(labels, categories=categories), index=score.index).where(
        score.notna()
    )


def hematotox_scores(data: pd.DataFrame, table: HematotoxTable) -> pd.DataFrame:
    """Points per item, total score (missing if any input is missing) and risk groups."""
    out = pd.DataFrame(index=data.index)
    for item in table.items:
        values = data[item.column] if item.column in data else pd.Series(np.nan, data.index)
        out[f"hematotox_{item.name}_points"] = item.points(values.astype(float))
    points = out[[f"hematotox_{i.name}_points" for i in table.items]]
    out["hematotox_score"] = points.sum(axis=1, min_count=1).where(points.notna().all(axis=1))
    for name, bands in table.risk_groups.items():
        out[name] = risk_group(out["hematotox_score"], bands)
    return out


@dataclass(frozen=True)
class DeriveOptions:
    """Options of the per-patient derivations."""

    endpoints: EndpointOptions = EndpointOptions()
    burden_threshold_pct: float = 5.0


def derive_patients(
    table: ClinicalTable, hematotox: HematotoxTable, options: DeriveOptions = DeriveOptions()
) -> pd.DataFrame:
    """Endpoints, burden classes and dynamics, and Hematotox score per patient."""
    data = table.data
    parts = [derive_endpoints(data, options.endpoints)]
    classes = pd.DataFrame(index=data.index)
    for when in ("before", "after"):
        column = f"tumour_burden_{when}_pct"
        if column in data:
            classes[f"burden_{when}_class"] = burden_class(
                data[column], options.burden_threshold_pct
            )
    if {"burden_before_class", "burden_after_class"} <= set(classes.columns):
        classes["burden_dynamics"] = burden_dynamics(
            classes["burden_before_class"], classes["burden_after_class"]
        )
    parts += [classes, hematotox_scores(data, hematotox)]
    keep = [c for c in data.columns if c != "patient" and not c.endswith("_date")]
    return pd.concat([*parts, data[keep]], axis=1)
