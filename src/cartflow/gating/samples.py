"""Which sample of a lab's gating file (a workspace or an experiment export) a data file is."""

from __future__ import annotations

from pathlib import Path

from cartflow.gating.errors import GatingError


def match_sample(samples, source: Path, file_name: str, fil: str | None, event_count: int | None):
    """The one sample (of a workspace or experiment) a data file belongs to: by name, then
    ``$FIL``, then a unique event count; else a :class:`GatingError` naming the file and
    the samples."""
    matched = [s for s in samples if file_name in (s.name, s.file_name)]
    if not matched and fil:
        matched = [s for s in samples if s.keywords.get("$FIL") == fil]
    if not matched and event_count is not None:
        matched = [s for s in samples if s.event_count == event_count]
    if len(matched) == 1:
        return matched[0]
    if matched:
        raise GatingError(
            file_name,
            f"matches several samples of {source.name}: " + ", ".join(s.name for s in matched),
        )
    listed = ", ".join(s.name for s in samples) or "none"
    raise GatingError(
        file_name,
        f"matches no sample of {source.name} by name, $FIL or event count (its samples: {listed})",
    )
