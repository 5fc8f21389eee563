"""The ALL-Hematotox score: its configurable point table, and scores and risk groups per patient."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cartflow.io.errors import YamlPlaces, yaml_problem
from cartflow.panels import PANEL_DIR
from cartflow.pipeline.clinical.table import ClinicalTableError

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
