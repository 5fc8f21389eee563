"""Subgroups of patients declared as ``COLUMN == LEVEL`` (or ``!=``), e.g. the low-burden
patients: ``burden_after_class == low``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from cartflow.pipeline.outcomes.common import OutcomeInputError

_WHERE = re.compile(r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>==|!=)\s*(?P<level>.+?)\s*$")


@dataclass(frozen=True)
class Where:
    column: str
    op: str
    level: str

    def mask(self, data: pd.DataFrame) -> pd.Series:
        """Patients in the subgroup (a missing value is in no subgroup)."""
        if self.column not in data:
            raise OutcomeInputError("analysis configuration", f"subgroup column {self.column!r}"
                                    " is not in the data")  # fmt: skip
        values = data[self.column]
        text = values.map(lambda v: "yes" if v is True else "no" if v is False else str(v))
        hit = text == self.level if self.op == "==" else text != self.level
        return hit & values.notna()

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.level}"


def parse_where(text: str, source: str = "<config>") -> Where:
    """``column == level`` or ``column != level``; anything else is an error naming it."""
    match = _WHERE.match(text)
    if not match:
        raise OutcomeInputError(source, f"subgroup {text!r} is not 'column == level'")
    level = match["level"].strip("'\"")
    return Where(match["column"], match["op"], level)
