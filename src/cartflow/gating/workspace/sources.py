"""Where a data file's gates come from: its workspace sample, or one set for every file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cartflow.gating.model import GateSet


@dataclass(frozen=True)
class TemplateSource:
    """What a file is gated with when one set of gates serves every file: its name; no
    counts of the lab's software to compare with."""

    name: str

    def stored_counts(self) -> dict[str, int]:
        """None stored (the gates were not drawn on this file)."""
        return {}


@dataclass(frozen=True)
class GatingMLGates:
    """A Gating-ML 2.0 document: the same gates for every data file."""

    path: Path
    gates: GateSet

    def match(self, file_name: str, fil: str | None = None, event_count: int | None = None):
        """Every file is gated by the document itself."""
        return TemplateSource(self.path.name)

    def gates_for(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> GateSet:
        """The gates (one set for every file)."""
        return self.gates


@dataclass(frozen=True)
class WorkspaceGroup:
    """A FlowJo sample group's own gates: the same gates for every data file."""

    path: Path
    name: str
    gates: GateSet

    def match(self, file_name: str, fil: str | None = None, event_count: int | None = None):
        """Every file is gated by the group's gates."""
        return TemplateSource(f"group {self.name}")

    def gates_for(
        self, file_name: str, fil: str | None = None, event_count: int | None = None
    ) -> GateSet:
        """The group's gates (one set for every file)."""
        return self.gates
