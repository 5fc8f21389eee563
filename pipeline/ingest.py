"""Ingest: scan a batch folder, identify each file, check it against its panel, record it.

Bad files are quarantined with a one-line reason and never stop the batch. A file is its
SHA-256: content seen before is not processed again, whatever its name.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal

from sqlalchemy.exc import DataError

from panels import MarkerNames, Panel, load_panels, match_panel
from pipeline.config import LabConfig
from pipeline.errors import CartflowError, IdentityError, first_line
from pipeline.fcs import FcsFile, acquisition_date, read_fcs
from pipeline.identity import IdentityRules, Manifest, SampleIdentity, identify
from pipeline.store import FileRecord, SampleRecord, Store

FCS_SUFFIXES = {".fcs", ".lmd"}
HASH_CHUNK = 1 << 20

Status = Literal["accepted", "known", "duplicate", "quarantined"]


@dataclass(frozen=True)
class FileOutcome:
    """What ingest decided about one file."""

    path: Path
    status: Status
    sha256: str | None
    detail: str
    kind: str = ""
    new: bool = True


@dataclass
class IngestReport:
    run_id: int
    outcomes: list[FileOutcome] = field(default_factory=list)

    def with_status(self, status: Status) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        """0 when every file was accepted (now or before), 2 when any was quarantined."""
        return 2 if self.with_status("quarantined") else 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_batch(batch_dir: Path) -> list[Path]:
    """FCS files below a folder, in a stable order, skipping hidden and quarantine folders.
    A link named like an FCS file is listed even when broken, so that ingest reports it."""
    found = []
    for path in batch_dir.rglob("*"):
        parts = path.relative_to(batch_dir).parts
        if any(p.startswith(".") or p == "quarantine" for p in parts):
            continue
        if path.suffix.lower() in FCS_SUFFIXES and (path.is_file() or path.is_symlink()):
            found.append(path)
    return sorted(found)


def _json_safe(text: dict[str, str]) -> dict[str, str]:
    return {k: v.encode("utf-8", "replace").decode("utf-8") for k, v in text.items()}


def describe(fcs: FcsFile, sha256: str, path: Path) -> FileRecord:
    iso = acquisition_date(fcs)
    return FileRecord(
        sha256=sha256,
        path=str(path),
        size_bytes=path.stat().st_size,
        fcs_version=fcs.version,
        cytometer=fcs.cytometer,
        event_count=fcs.event_count,
        channel_count=len(fcs.channels),
        has_spillover=fcs.spillover is not None,
        acquisition_date=date.fromisoformat(iso) if iso else None,
        keywords=_json_safe(fcs.text),
        reader_warnings=list(fcs.warnings),
    )


def sample_record(identity: SampleIdentity, panel: Panel) -> SampleRecord:
    return SampleRecord(
        patient=identity.patient,
        timepoint=identity.timepoint.label,
        nominal_day=identity.timepoint.nominal_day,
        tube=panel.tube,
        panel_id=panel.id,
        panel_version=panel.version,
        panel_sha256=panel.sha256,
        identity_source=identity.source,
        blood_volume_ul=identity.blood_volume_ul,
        beads_per_tube=identity.beads_per_tube,
        bead_lot=identity.bead_lot,
        sample_date=identity.sample_date,
    )


@dataclass(frozen=True)
class Checked:
    """A file that passed every check, ready to be stored."""

    fcs: FcsFile
    identity: SampleIdentity
    panel: Panel


def check_file(
    path: Path,
    panels: Iterable[Panel],
    manifest: Manifest | None = None,
    rules: IdentityRules = IdentityRules(),
    names: MarkerNames | None = None,
) -> Checked:
    """Read, identify and panel-match one file; raises CartflowError on any problem."""
    fcs = read_fcs(path, events=False)
    identity = identify(path, fcs.text, manifest, rules)
    pairs = [(c.name, c.marker) for c in fcs.channels]
    match = match_panel(path, pairs, panels, identity.tube, names)
    return Checked(fcs, identity, match.panel)


def ingest_batch(
    batch_dir: Path,
    store: Store,
    manifest: Manifest | None = None,
    rules: IdentityRules = IdentityRules(),
    panels: tuple[Panel, ...] | None = None,
    on_file: Callable[[FileOutcome], None] | None = None,
    files: list[Path] | None = None,
    config: LabConfig | None = None,
) -> IngestReport:
    """Ingest every FCS file of a batch folder (or just ``files``) into the store, with the
    panels and marker names of ``config`` (default: the shipped configuration)."""
    if panels is None:
        panels = config.panels if config else load_panels()
    files = scan_batch(batch_dir) if files is None else sorted(files)
    parameters = {
        "batch": str(batch_dir),
        "manifest": str(manifest.path) if manifest else None,
        "rules": rules.__dict__,
        "panels": {p.id: p.sha256 for p in panels},
        **(config.provenance() if config else {}),
    }
    names = Counter(path.name for path in files)
    batch = _Batch(panels, manifest, rules, frozenset(n for n, c in names.items() if c > 1),
                   config.names if config else None, config.sha256 if config else "")  # fmt: skip
    with store.recording("ingest", parameters) as run_id:
        report = IngestReport(run_id)
        seen: dict[str, Path] = {}
        for path in files:
            outcome = _ingest_one(path, store, run_id, batch, seen)
            report.outcomes.append(outcome)
            if on_file:
                on_file(outcome)
    return report


CONTENT_KINDS = frozenset({"fcs-format", "fcs-unsupported"})
"""Refusals the file's bytes alone decide. Others (identity, panel) also depend on the
manifest, the identity rules and the panels, so they are keyed on those too: a corrected
manifest re-admits the file."""


@dataclass(frozen=True)
class _Batch:
    """What, besides a file's bytes, decides whether it is accepted."""

    panels: tuple[Panel, ...]
    manifest: Manifest | None
    rules: IdentityRules
    shared_names: frozenset[str]  # names that several files of the batch carry
    names: MarkerNames | None = None
    config_sha256: str = ""

    @cached_property
    def digest(self) -> str:
        context = repr((sorted(self.manifest.rows.items()) if self.manifest else None,
                        self.rules, sorted(p.sha256 for p in self.panels),
                        sorted(self.shared_names)))  # fmt: skip
        if self.config_sha256:  # marker names and read_as decide a match too
            context += self.config_sha256
        return hashlib.sha256(context.encode("utf-8")).hexdigest()[:16]

    def check(self, path: Path) -> Checked:
        if self.manifest is not None and path.name in self.shared_names:
            raise IdentityError(
                path, f"several files of the batch are named {path.name!r}, and the manifest "
                "names files by name: rename them apart"
            )  # fmt: skip
        return check_file(path, self.panels, self.manifest, self.rules, self.names)


def _ingest_one(path, store, run_id, batch: _Batch, seen) -> FileOutcome:
    try:
        sha = sha256_of(path)
    except OSError as exc:
        reason = f"cannot be read: {exc.strerror or exc}"
        key = f"path:{path.absolute()}"  # not resolve(): a link may loop
        new = store.quarantine(run_id, key, str(path), None, "io", reason)
        return FileOutcome(path, "quarantined", None, reason, "io", new)
    if sha in seen:
        return FileOutcome(path, "duplicate", sha, f"same content as {seen[sha].name}")
    seen[sha] = path
    known_id = store.file_id(sha)
    if known_id is not None:
        new_name = store.add_file_name(run_id, known_id, str(path))
        if new_name:
            return FileOutcome(
                path, "duplicate", sha, "content already ingested under another name"
            )
        return FileOutcome(path, "known", sha, "already ingested", new=False)
    in_context = f"{sha}:{batch.digest}"
    before = store.quarantined_as(sha) or store.quarantined_as(in_context)
    if before is not None:
        kind, reason = before
        return FileOutcome(path, "quarantined", sha, f"{reason} (quarantined before)", kind, False)
    try:
        checked = batch.check(path)
    except CartflowError as exc:
        key = sha if exc.kind in CONTENT_KINDS else in_context
        store.quarantine(run_id, key, str(path), sha, exc.kind, exc.problem)
        return FileOutcome(path, "quarantined", sha, exc.problem, exc.kind)
    except Exception as exc:  # a bad file must never stop the batch
        reason = f"unexpected {type(exc).__name__}: {exc}"
        store.quarantine(run_id, in_context, str(path), sha, "internal", reason)
        return FileOutcome(path, "quarantined", sha, reason, "internal")
    record = describe(checked.fcs, sha, path)
    try:
        stored = store.record_sample(run_id, record, sample_record(checked.identity, checked.panel))
    except (DataError, OverflowError) as exc:  # a value of this file the store cannot hold
        reason = f"the store cannot hold a value of this file: {first_line(exc)}"
        store.quarantine(run_id, in_context, str(path), sha, "store", reason)
        return FileOutcome(path, "quarantined", sha, reason, "store")
    if stored is None:  # another process stored the same content meanwhile
        return FileOutcome(path, "known", sha, "already ingested", new=False)
    ident = checked.identity
    return FileOutcome(
        path,
        "accepted",
        sha,
        f"{ident.patient} {ident.timepoint.label} {checked.panel.tube} ({checked.panel.id})",
    )


def write_quarantine_report(report: IngestReport, out_dir: Path) -> Path | None:
    """``quarantine/quarantine.csv`` with one line per refused file of this run."""
    refused = report.with_status("quarantined")
    if not refused:
        return None
    folder = out_dir / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "quarantine.csv"
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "sha256", "kind", "reason"])
        for outcome in refused:
            writer.writerow([outcome.path, outcome.sha256 or "", outcome.kind, outcome.detail])
    return target
