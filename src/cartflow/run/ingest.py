"""Ingest: scan a batch folder, identify each file, check it against its panel, record it.

Bad files are quarantined with a one-line reason and never stop the batch. A file is its
SHA-256: content seen before is not processed again, whatever its name.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy.exc import DataError

from cartflow.io.errors import CartflowError, FcsError, IdentityError, first_line
from cartflow.io.fcs import FcsFile, acquisition_date, read_fcs, require_regular_file
from cartflow.io.outputs import restore, write_csv
from cartflow.panels import MarkerNames, Panel, load_panels, match_panel
from cartflow.panels.config import LabConfig
from cartflow.panels.identity_rules import IdentityRules
from cartflow.pipeline.identity import (
    Manifest,
    SampleIdentity,
    cross_check,
    identify,
)
from cartflow.store import FileRecord, SampleRecord, Store, stored_keywords

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
    review: str = ""  # accepted, but its identity is to be reviewed (and why)


@dataclass
class IngestReport:
    run_id: int
    outcomes: list[FileOutcome] = field(default_factory=list)

    def with_status(self, status: Status) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def for_review(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.review]

    @property
    def exit_code(self) -> int:
        """0 when every file was accepted (now or before), 2 when any was quarantined or
        stored for review."""
        return 2 if self.with_status("quarantined") or self.for_review else 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_batch(batch_dir: Path) -> list[Path]:
    """Everything named like an FCS file below a folder, in a stable order, skipping hidden
    and quarantine folders. Links (even broken), FIFOs and folders named like an FCS file
    are listed too, so that ingest reports them instead of skipping them silently."""
    found = []
    for path in batch_dir.rglob("*"):
        parts = path.relative_to(batch_dir).parts
        if any(p.startswith(".") or p == "quarantine" for p in parts):
            continue
        if path.suffix.lower() in FCS_SUFFIXES:
            found.append(path)
    return sorted(found)


def _json_safe(text: dict[str, str]) -> dict[str, str]:
    return {k: v.encode("utf-8", "replace").decode("utf-8") for k, v in text.items()}


def describe(
    fcs: FcsFile, sha256: str, path: Path, rules: IdentityRules = IdentityRules()
) -> FileRecord:
    """A file's row; of its TEXT only the keywords the store keeps (no PHI)."""
    iso = acquisition_date(fcs)
    keep = (*rules.patient_keywords, *rules.timepoint_keywords, *rules.tube_keywords,
            *rules.stored_keywords)  # fmt: skip
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
        keywords=_json_safe(stored_keywords(fcs.text, keep)),
        reader_warnings=list(fcs.warnings),
    )


def sample_record(identity: SampleIdentity, panel: Panel, review: str = "") -> SampleRecord:
    return SampleRecord(
        patient=identity.patient,
        timepoint=identity.timepoint.label,
        nominal_day=identity.timepoint.nominal_day,
        tube=panel.tube,
        panel_id=panel.id,
        panel_version=panel.version,
        panel_sha256=panel.sha256,
        identity_source=f"{identity.source}; review: {review}" if review else identity.source,
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
    review: str = ""  # sources of identity that disagree, when stored for review

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.identity.patient, self.identity.timepoint.label, self.panel.tube)


def check_file(
    path: Path,
    panels: Iterable[Panel],
    manifest: Manifest | None = None,
    rules: IdentityRules = IdentityRules(),
    names: MarkerNames | None = None,
) -> Checked:
    """Read, identify and panel-match one file; raises CartflowError on any problem."""
    fcs = read_fcs(path, events=False)
    if fcs.spillover is None and fcs.spillover_problem:
        raise FcsError(
            path,
            f"its spillover matrix is present but unreadable ({fcs.spillover_problem}): "
            "it cannot be compensated as acquired",
        )
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
    infusion: Mapping[str, date] | None = None,
    config: LabConfig | None = None,
) -> IngestReport:
    """Ingest every FCS file of a batch folder (or just ``files``) into the store, with the
    panels and marker names of ``config`` (default: the shipped configuration). With
    ``infusion`` dates per patient, each sample's date is checked against its timepoint.

    Every file is checked first, then stored: two files naming one patient, timepoint and
    tube (or one naming those of a stored sample) are all refused or all stored for review,
    whatever their order."""
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
    shared = frozenset(n for n, c in names.items() if c > 1)
    infusion_items = tuple(sorted((infusion or {}).items()))
    batch = _Batch(panels, manifest, rules, shared, config.names if config else None,
                   config.sha256 if config else "", infusion_items)  # fmt: skip
    with store.recording("ingest", parameters) as run_id:
        report = IngestReport(run_id)
        seen: dict[str, Path] = {}
        outcomes: list[FileOutcome | None] = []
        ready: list[tuple[int, Path, str, Checked]] = []
        for path in files:
            result = _check_one(path, store, run_id, batch, seen)
            if isinstance(result, FileOutcome):
                outcomes.append(result)
                if on_file:
                    on_file(result)
            else:
                outcomes.append(None)
                ready.append((len(outcomes) - 1, path, *result))
        repeats = _repeats([(path, sha, checked) for _, path, sha, checked in ready], store)
        for index, path, sha, checked in ready:
            outcome = _store_one(path, sha, checked, store, run_id, batch, repeats.get(path))
            outcomes[index] = outcome
            if on_file:
                on_file(outcome)
        report.outcomes = [o for o in outcomes if o is not None]
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
    infusion: tuple[tuple[str, date], ...] = ()

    @cached_property
    def digest(self) -> str:
        context = repr((sorted(self.manifest.rows.items()) if self.manifest else None,
                        self.rules, sorted(p.sha256 for p in self.panels),
                        sorted(self.shared_names), self.infusion))  # fmt: skip
        if self.config_sha256:  # marker names and read_as decide a match too
            context += self.config_sha256
        return hashlib.sha256(context.encode("utf-8")).hexdigest()[:16]

    def check(self, path: Path) -> Checked:
        if self.manifest is not None and path.name in self.shared_names:
            raise IdentityError(
                path, f"several files of the batch are named {path.name!r}, and the manifest "
                "names files by name: rename them apart"
            )  # fmt: skip
        checked = check_file(path, self.panels, self.manifest, self.rules, self.names)
        iso = acquisition_date(checked.fcs)
        disagreements = cross_check(
            path,
            checked.fcs.text,
            checked.identity,
            self.rules,
            date.fromisoformat(iso) if iso else None,
            dict(self.infusion).get(checked.identity.patient),
        )
        if not disagreements:
            return checked
        problem = "identity sources disagree: " + "; ".join(map(str, disagreements))
        if self.rules.on_disagreement == "review":
            return Checked(checked.fcs, checked.identity, checked.panel, problem)
        raise IdentityError(path, problem)


def _check_one(path, store, run_id, batch: _Batch, seen) -> FileOutcome | tuple[str, Checked]:
    """A file's final outcome, or its SHA-256 and checks when it is to be stored."""
    try:
        require_regular_file(path)  # a FIFO would block the read below
        sha = sha256_of(path)
    except (OSError, FcsError) as exc:
        if isinstance(exc, FcsError):
            reason = exc.problem
        else:
            reason = f"cannot be read: {exc.strerror or exc}"
        key = f"path:{path.absolute()}"  # not resolve(): a link may loop
        new = store.quarantine(run_id, key, str(path), None, "io", reason)
        return FileOutcome(path, "quarantined", None, reason, "io", new)
    if sha in seen:
        return FileOutcome(path, "duplicate", sha, f"same content as {seen[sha].name}")
    seen[sha] = path
    known_id = store.file_id(sha)
    if known_id is not None:
        corrected = correct_identity(store, sha, path, batch.manifest)
        new_name = store.add_file_name(run_id, known_id, str(path))
        if new_name:
            return FileOutcome(
                path, "duplicate", sha, corrected or "content already ingested under another name"
            )
        return FileOutcome(path, "known", sha, corrected or "already ingested", new=False)
    in_context = f"{sha}:{batch.digest}"
    before = store.quarantined_as(sha) or store.quarantined_as(in_context)
    if before is not None:
        kind, reason = before
        return FileOutcome(path, "quarantined", sha, f"{reason} (quarantined before)", kind, False)
    try:
        return sha, batch.check(path)
    except CartflowError as exc:
        key = sha if exc.kind in CONTENT_KINDS else in_context
        store.quarantine(run_id, key, str(path), sha, exc.kind, exc.problem)
        return FileOutcome(path, "quarantined", sha, exc.problem, exc.kind)
    except Exception as exc:  # a bad file must never stop the batch
        reason = f"unexpected {type(exc).__name__}: {exc}"
        store.quarantine(run_id, in_context, str(path), sha, "internal", reason)
        return FileOutcome(path, "quarantined", sha, reason, "internal")


@dataclass(frozen=True)
class _Repeat:
    """Other files naming the same patient, timepoint and tube as one to be stored."""

    names: tuple[str, ...]
    digest: str  # of the other files' contents: the conflict, as a quarantine key

    def __str__(self) -> str:
        return "repeats another file's patient, timepoint and tube: " + ", ".join(self.names)


def _repeats(ready: list[tuple[Path, str, Checked]], store: Store) -> dict[Path, _Repeat]:
    """Files to be stored that share patient, timepoint and tube with another of them or
    with a stored sample."""
    holders: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for sample in store.samples():
        key = (sample.patient, sample.timepoint, sample.tube)
        holders.setdefault(key, []).append((sample.sha256, f"{sample.file} (stored)"))
    for path, sha, checked in ready:
        holders.setdefault(checked.key, []).append((sha, str(path)))
    found = {}
    for path, sha, checked in ready:
        # a stored earlier content of this very file is replaced, not repeated
        replaces = store.replaceable(str(path), sample_record(checked.identity, checked.panel))
        earlier_self = f"{path.name} (stored)" if replaces is not None else None
        others = [(s, name) for s, name in holders[checked.key]
                  if s != sha and name != earlier_self]  # fmt: skip
        if others:
            digest = hashlib.sha256("".join(sorted(s for s, _ in others)).encode()).hexdigest()
            label = f"{' '.join(checked.key)}"
            found[path] = _Repeat(tuple(f"{label} is also {name}" for _, name in others),
                                  digest[:16])  # fmt: skip
    return found


def _store_one(
    path, sha, checked: Checked, store, run_id, batch: _Batch, repeat: _Repeat | None
) -> FileOutcome:
    review = checked.review
    if repeat is not None:
        if batch.rules.on_disagreement == "quarantine":
            key = f"{sha}:{batch.digest}:{repeat.digest}"
            reason = f"{repeat}: review which is right"
            new = store.quarantine(run_id, key, str(path), sha, "identity", reason)
            return FileOutcome(path, "quarantined", sha, reason, "identity", new)
        review = "; ".join(filter(None, (review, str(repeat))))
    in_context = f"{sha}:{batch.digest}"
    record = describe(checked.fcs, sha, path, batch.rules)
    sample = sample_record(checked.identity, checked.panel, review)
    earlier = store.replaceable(str(path), sample)
    if earlier is not None:  # the file changed since it was stored: its sample is replaced
        store.replace_sample(run_id, earlier, record, sample)
        return FileOutcome(
            path, "accepted", sha,
            f"{sample.patient} {sample.timepoint} {sample.tube}: replaces the sample stored "
            "from this path before it changed (kept in the replacements table)",
        )  # fmt: skip
    try:
        stored = store.record_sample(run_id, record, sample)
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
        review=review,
    )


IDENTITY_CORRECTED = "identity corrected"


def correct_identity(store: Store, sha: str, path: Path, manifest: Manifest | None) -> str:
    """Apply a manifest row that changed since a known file was stored (timepoint, beads,
    volume, …), with an audit entry naming old and new values; returns what changed ('' when
    nothing did or the manifest does not list the file: identity from keywords or the file
    name cannot change with the file's bytes)."""
    row = manifest.lookup(path) if manifest is not None else None
    stored = store.sample_identity(sha)
    if row is None or stored is None:
        return ""
    given = {
        "patient": row.patient,
        "timepoint": row.timepoint.label,
        "nominal_day": row.timepoint.nominal_day,
        "tube": stored["tube"],  # the panel the channels match decides the tube
        "blood_volume_ul": row.blood_volume_ul,
        "beads_per_tube": row.beads_per_tube,
        "bead_lot": row.bead_lot,
        "sample_date": row.sample_date,
    }
    changes = {k: (stored[k], v) for k, v in given.items() if stored[k] != v}
    if not changes:
        return ""
    source = f"manifest line {row.line}"
    reason = f"{manifest.path.name} line {row.line} changed for {path.name}"
    store.update_identity(stored["id"], changes, reason, "manifest", source)
    said = ", ".join(f"{k} {old!s} -> {new!s}" for k, (old, new) in changes.items())
    return f"{IDENTITY_CORRECTED}: {said}"


QUARANTINE_COLUMNS = ["file", "sha256", "kind", "reason"]


def write_quarantine_report(report: IngestReport, out_dir: Path) -> Path | None:
    """``quarantine/quarantine.csv``: the files refused now. This run's refusals, and those of
    earlier runs into this folder for files this run did not look at and that still exist;
    a file accepted since (fixed) leaves it. Removed when nothing is refused."""
    target = out_dir / "quarantine" / "quarantine.csv"
    looked_at = {str(o.path) for o in report.outcomes}
    earlier = []
    if target.is_file():
        try:
            previous = pd.read_csv(target, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            previous = pd.DataFrame(columns=QUARANTINE_COLUMNS)
        if list(previous.columns) == QUARANTINE_COLUMNS:
            previous = previous.map(restore)
            earlier = [
                tuple(row) for row in previous.itertuples(index=False)
                if row.file not in looked_at and Path(row.file).exists()
            ]  # fmt: skip
    now = [(str(o.path), o.sha256 or "", o.kind, o.detail)
           for o in report.with_status("quarantined")]  # fmt: skip
    rows = earlier + now
    if not rows:
        target.unlink(missing_ok=True)
        return None
    return write_csv(pd.DataFrame(rows, columns=QUARANTINE_COLUMNS), target)
