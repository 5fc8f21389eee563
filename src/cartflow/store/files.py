"""Files and samples: the FCS files stored by content, their paths, identities and quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from cartflow.pipeline.records import IDENTITY_FIELDS, FileRecord, SampleRecord, StoredSample
from cartflow.store.core import StoreCore
from cartflow.store.schema import (
    FcsFileRow,
    FileName,
    FlagRow,
    GateRow,
    GatingRow,
    PopulationRow,
    QuarantineRow,
    ReplacementRow,
    SampleRow,
)


class Files(StoreCore):
    """The store's files and samples: recorded, replaced, quarantined and listed."""

    def file_id(self, sha256: str) -> int | None:
        with self._sessions() as session:
            return session.scalar(select(FcsFileRow.id).where(FcsFileRow.sha256 == sha256))

    def quarantined_as(self, content_key: str) -> tuple[str, str] | None:
        """The kind and reason a file was quarantined with under this key, if it was."""
        with self._sessions() as session:
            found = session.execute(
                select(QuarantineRow.error_kind, QuarantineRow.reason).where(
                    QuarantineRow.content_key == content_key
                )
            ).first()
            return None if found is None else (found.error_kind, found.reason)

    def add_file_name(self, run_id: int, file_id: int, path: str) -> bool:
        """Remember another path for known content; False when it was already known."""
        try:
            with self.transaction() as session:
                known = session.scalar(
                    select(FileName.id).where(FileName.file_id == file_id, FileName.path == path)
                )
                if known is not None:
                    return False
                session.add(FileName(file_id=file_id, path=path, run_id=run_id))
            return True
        except IntegrityError:
            return False

    def record_sample(self, run_id: int, file: FileRecord, sample: SampleRecord) -> int | None:
        """Write a file and its sample in one transaction; None when the file already exists."""
        try:
            with self.transaction() as session:
                described = {k: v for k, v in vars(file).items() if k != "path"}
                row = FcsFileRow(**described, name=Path(file.path).name, run_id=run_id)
                session.add(row)
                session.flush()
                session.add(FileName(file_id=row.id, path=file.path, run_id=run_id))
                session.add(SampleRow(**vars(sample), file_id=row.id, run_id=run_id))
                session.flush()
                return row.id
        except IntegrityError:
            return None

    def replaceable(self, path: str, sample: SampleRecord) -> int | None:
        """The stored file known only under ``path`` whose sample has the same patient,
        timepoint and tube: the earlier content of a file that changed since."""
        with self._sessions() as session:
            rows = session.execute(
                select(FcsFileRow.id, SampleRow)
                .join(FileName, FileName.file_id == FcsFileRow.id)
                .join(SampleRow, SampleRow.file_id == FcsFileRow.id)
                .where(FileName.path == path)
            ).all()
            for file_id, old in rows:
                names = session.scalar(
                    select(func.count()).select_from(FileName).where(FileName.file_id == file_id)
                )
                same = (old.patient, old.timepoint, old.tube) == (
                    sample.patient, sample.timepoint, sample.tube
                )  # fmt: skip
                if names == 1 and same:
                    return file_id
        return None

    def replace_sample(
        self, run_id: int, old_file_id: int, file: FileRecord, sample: SampleRecord
    ) -> int:
        """In one transaction: keep what the old file was and counted in ``replacements``,
        remove it and its results, and record the new file and sample in its place."""
        with self.transaction() as session:
            old_file = session.get(FcsFileRow, old_file_id)
            old = session.scalar(select(SampleRow).where(SampleRow.file_id == old_file_id))
            gatings = session.scalars(select(GatingRow.id).where(GatingRow.sample_id == old.id))
            gating_ids = list(gatings)
            counts = {
                p.population: p.count
                for p in session.scalars(
                    select(PopulationRow).where(PopulationRow.gating_id.in_(gating_ids))
                )
            }
            session.add(
                ReplacementRow(
                    path=file.path, old_sha256=old_file.sha256, new_sha256=file.sha256,
                    patient=old.patient, timepoint=old.timepoint, tube=old.tube,
                    old_counts=counts, run_id=run_id,
                )
            )  # fmt: skip
            for table in (FlagRow, GateRow, PopulationRow):
                session.execute(delete(table).where(table.gating_id.in_(gating_ids)))
            session.execute(delete(GatingRow).where(GatingRow.sample_id == old.id))
            session.execute(delete(SampleRow).where(SampleRow.id == old.id))
            session.execute(delete(FileName).where(FileName.file_id == old_file_id))
            session.execute(delete(FcsFileRow).where(FcsFileRow.id == old_file_id))
            described = {k: v for k, v in vars(file).items() if k != "path"}
            row = FcsFileRow(**described, name=Path(file.path).name, run_id=run_id)
            session.add(row)
            session.flush()
            session.add(FileName(file_id=row.id, path=file.path, run_id=run_id))
            session.add(SampleRow(**vars(sample), file_id=row.id, run_id=run_id))
            return row.id

    def replacements(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(ReplacementRow).order_by(ReplacementRow.id)).all()
        return [
            {"path": r.path, "old_sha256": r.old_sha256, "new_sha256": r.new_sha256,
             "patient": r.patient, "timepoint": r.timepoint, "tube": r.tube,
             "old_counts": r.old_counts, "run_id": r.run_id}
            for r in rows
        ]  # fmt: skip

    def sample_id(self, sha256: str) -> int | None:
        """The sample recorded for a file's content, if any."""
        with self._sessions() as session:
            return session.scalar(
                select(SampleRow.id)
                .join(FcsFileRow, SampleRow.file_id == FcsFileRow.id)
                .where(FcsFileRow.sha256 == sha256)
            )

    def sample_paths(self, sample_id: int) -> list[str]:
        """Every path under which a sample's file was seen, newest first."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(FileName.path)
                    .join(SampleRow, SampleRow.file_id == FileName.file_id)
                    .where(SampleRow.id == sample_id)
                    .order_by(FileName.id.desc())
                )
            )

    def sample_identity(self, sha256: str) -> dict[str, Any] | None:
        """The stored identity of a file's sample (id, patient, timepoint, …)."""
        with self._sessions() as session:
            sample = session.scalar(
                select(SampleRow)
                .join(FcsFileRow, SampleRow.file_id == FcsFileRow.id)
                .where(FcsFileRow.sha256 == sha256)
            )
            if sample is None:
                return None
            return {name: getattr(sample, name) for name in (*IDENTITY_FIELDS, "id")}

    def samples(self) -> list[StoredSample]:
        """All samples with their file's name and SHA-256."""
        with self._sessions() as session:
            rows = session.execute(
                select(SampleRow, FcsFileRow.sha256, FcsFileRow.name).join(
                    FcsFileRow, SampleRow.file_id == FcsFileRow.id
                )
            ).all()
        return [
            StoredSample(
                sample_id=s.id,
                file=name,
                sha256=sha,
                patient=s.patient,
                timepoint=s.timepoint,
                nominal_day=s.nominal_day,
                tube=s.tube,
                panel_id=s.panel_id,
                blood_volume_ul=s.blood_volume_ul,
                beads_per_tube=s.beads_per_tube,
                sample_date=s.sample_date,
            )
            for s, sha, name in rows
        ]

    def sample_panels(self) -> dict[int, tuple[str, str]]:
        """Each sample's panel as matched at ingest: sample id → (panel id, panel SHA-256)."""
        with self._sessions() as session:
            rows = session.execute(
                select(SampleRow.id, SampleRow.panel_id, SampleRow.panel_sha256)
            ).all()
        return {sample_id: (panel_id, sha) for sample_id, panel_id, sha in rows}

    def quarantine(
        self, run_id: int, content_key: str, path: str, sha256: str | None, kind: str, reason: str
    ) -> bool:
        """Record a refused file once; False when it was already in quarantine."""
        try:
            with self.transaction() as session:
                session.add(
                    QuarantineRow(
                        content_key=content_key,
                        path=path,
                        sha256=sha256,
                        error_kind=kind,
                        reason=reason,
                        run_id=run_id,
                    )
                )
            return True
        except IntegrityError:
            return False

    def quarantined(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(QuarantineRow).order_by(QuarantineRow.id)).all()
        return [
            {"path": q.path, "sha256": q.sha256, "kind": q.error_kind, "reason": q.reason}
            for q in rows
        ]
