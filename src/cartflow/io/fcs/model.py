"""The reader's records: one channel, a spillover matrix, one FCS data set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Channel:
    """One FCS parameter as described by its $Pn* keywords (index is 1-based)."""

    index: int
    name: str
    marker: str | None
    bits: int
    range: float
    log_decades: float = 0.0
    log_offset: float = 0.0
    gain: float = 1.0

    @property
    def is_time(self) -> bool:
        return self.name.strip().lower() in {"time", "hdr-t"}

    @property
    def is_scatter(self) -> bool:
        return self.name.strip().upper()[:3] in {"FSC", "SSC"}

    @property
    def is_log(self) -> bool:
        return self.log_decades > 0


@dataclass(frozen=True)
class Spillover:
    """A spillover matrix with the $PnN names of its rows and columns."""

    channels: tuple[str, ...]
    matrix: np.ndarray
    keyword: str


@dataclass
class FcsFile:
    """One FCS data set: TEXT keywords, channels and (optionally) the event matrix."""

    path: Path
    version: str
    text: dict[str, str]
    channels: tuple[Channel, ...]
    event_count: int
    events: np.ndarray | None
    scaled: bool
    spillover: Spillover | None
    warnings: list[str] = field(default_factory=list)
    spillover_problem: str | None = None  # a matrix keyword present but unreadable

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def cytometer(self) -> str | None:
        return self.text.get("$CYT")

    def keyword(self, name: str) -> str | None:
        """A TEXT keyword, looked up case-insensitively."""
        return self.text.get(name.upper())
