"""Watching a folder for files that finished arriving (for ``cartflow watch``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cartflow.io.errors import CartflowError
from cartflow.run.ingest import scan_batch


@dataclass
class ArrivalWatch:
    """Which files of a folder are complete: the same size, modification time and content
    (SHA-256) on two looks, and readable with plausible DATA (no run of zero events where
    $TOT says there are events); an unreadable file is handed over once unchanged for
    ``settle`` looks, so that ingest can quarantine it. A file handed over is looked at
    again when it changes (a copy that stalled, then finished)."""

    folder: Path
    settle: int = 3
    looks: dict[Path, tuple[tuple[int, int, str], int]] = field(default_factory=dict)
    handed_over: dict[Path, tuple[int, int]] = field(default_factory=dict)  # size, mtime

    def complete(self) -> list[Path]:
        from cartflow.io.fcs import read_fcs
        from cartflow.run.ingest import sha256_of

        ready = []
        for path in scan_batch(self.folder):
            try:
                stat = path.stat()
                if not path.is_file():  # a FIFO or folder: ingest reports it, once
                    if path not in self.handed_over:
                        ready.append(path)
                        self.handed_over[path] = (-1, -1)
                    continue
                if self.handed_over.get(path) == (stat.st_size, stat.st_mtime_ns):
                    continue
                seen = (stat.st_size, stat.st_mtime_ns)
                previous, stable = self.looks.get(path, ((-1, -1, ""), 0))
                if previous[:2] != seen:  # still changing: hash it only once it holds still
                    self.looks[path] = ((*seen, ""), 0)
                    continue
                state = (*seen, sha256_of(path))
            except OSError:
                continue
            stable = stable + 1 if state == previous else 0
            self.looks[path] = (state, stable)
            if stable == 0:
                continue
            try:
                read_fcs(path, events=False)
            except CartflowError:
                if stable < self.settle:
                    continue
            ready.append(path)
            self.handed_over[path] = seen
        return ready
