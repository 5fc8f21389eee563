"""Reads across the store: the newest counts, a sample's provenance and the store's snapshot."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cartflow.pipeline.records import PopulationCount
from cartflow.store.corrections import Corrections
from cartflow.store.schema import (
    TABLES,
    Base,
    FcsFileRow,
    FileName,
    FlagRow,
    GateRow,
    GatingRow,
    KineticsRow,
    PopulationRow,
    QuarantineRow,
    Run,
    SampleRow,
)


class Provenance(Corrections):
    """What the store's numbers are and where they come from, read across its tables."""

    def _latest_gatings(self):
        """Subquery: the newest successful gating of each sample."""
        return (
            select(func.max(GatingRow.id).label("gating_id"))
            .where(GatingRow.status == "ok")
            .group_by(GatingRow.sample_id)
            .subquery()
        )

    def latest_counts(self) -> list[PopulationCount]:
        """Each sample's population counts from its newest gating, with its identity
        (samples under an active exclusion left out)."""
        latest = self._latest_gatings()
        excluded = self.excluded_samples()
        with self._sessions() as session:
            rows = session.execute(
                select(PopulationRow, GatingRow, SampleRow, FcsFileRow.sha256, FcsFileRow.name)
                .join(GatingRow, PopulationRow.gating_id == GatingRow.id)
                .join(latest, GatingRow.id == latest.c.gating_id)
                .join(SampleRow, GatingRow.sample_id == SampleRow.id)
                .join(FcsFileRow, SampleRow.file_id == FcsFileRow.id)
                .where(SampleRow.id.not_in(excluded))
                .order_by(PopulationRow.id)
            ).all()
        return [
            PopulationCount(
                sample_id=s.id,
                run_id=g.run_id,
                file=name,
                sha256=sha,
                patient=s.patient,
                timepoint=s.timepoint,
                nominal_day=s.nominal_day,
                tube=s.tube,
                panel_id=s.panel_id,
                blood_volume_ul=s.blood_volume_ul,
                beads_per_tube=s.beads_per_tube,
                bead_lot=s.bead_lot,
                sample_date=s.sample_date,
                template_id=g.template_id,
                template_sha256=g.template_sha256,
                population=p.population,
                parent=p.parent,
                count=p.count,
                parent_count=p.parent_count,
            )
            for p, g, s, sha, name in rows
        ]

    def provenance(self, sample_id: int) -> dict[str, Any] | None:
        """Where a sample's numbers come from: file, runs, software, panel, templates, cuts."""

        def run_info(session: Session, run_id: int) -> dict[str, Any]:
            run = session.get(Run, run_id)
            return {
                "run_id": run.id,
                "command": run.command,
                "software_version": run.software_version,
                "parameters": run.parameters,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "status": run.status,
            }

        with self._sessions() as session:
            sample = session.get(SampleRow, sample_id)
            if sample is None:
                return None
            file = session.get(FcsFileRow, sample.file_id)
            names = session.scalars(select(FileName.path).where(FileName.file_id == file.id)).all()
            gatings = session.scalars(
                select(GatingRow).where(GatingRow.sample_id == sample_id).order_by(GatingRow.id)
            ).all()
            trail = []
            for gating in gatings:
                trail.append(
                    {
                        "gating_id": gating.id,
                        "template_id": gating.template_id,
                        "template_sha256": gating.template_sha256,
                        "panel_sha256": gating.panel_sha256,
                        "status": gating.status,
                        "error": gating.error,
                        "run": run_info(session, gating.run_id),
                        "counts": {
                            p.population: p.count
                            for p in session.scalars(
                                select(PopulationRow).where(PopulationRow.gating_id == gating.id)
                            )
                        },
                        "corrections_key": gating.corrections_key,
                        "populations": [
                            {
                                "population": p.population,
                                "parent": p.parent,
                                "count": p.count,
                                "parent_count": p.parent_count,
                            }
                            for p in session.scalars(
                                select(PopulationRow)
                                .where(PopulationRow.gating_id == gating.id)
                                .order_by(PopulationRow.id)
                            )
                        ],
                        "cuts": {
                            g.gate: {
                                "value": g.value,
                                "method": g.method,
                                "fallback": g.fallback,
                                "evidence": g.evidence,
                            }
                            for g in session.scalars(
                                select(GateRow).where(GateRow.gating_id == gating.id)
                            )
                        },
                        "flags": session.scalars(
                            select(FlagRow.flag).where(FlagRow.gating_id == gating.id)
                        ).all(),
                    }
                )
            return {
                "sample_id": sample.id,
                "patient": sample.patient,
                "timepoint": sample.timepoint,
                "nominal_day": sample.nominal_day,
                "tube": sample.tube,
                "identity_source": sample.identity_source,
                "file": {
                    "sha256": file.sha256,
                    "names": list(names),
                    "size_bytes": file.size_bytes,
                    "fcs_version": file.fcs_version,
                    "cytometer": file.cytometer,
                    "events": file.event_count,
                    "acquisition_date": file.acquisition_date,
                    "reader_warnings": file.reader_warnings,
                },
                "panel": {
                    "id": sample.panel_id,
                    "version": sample.panel_version,
                    "sha256": sample.panel_sha256,
                },
                "ingest": run_info(session, sample.run_id),
                "gatings": trail,
                "blood_volume_ul": sample.blood_volume_ul,
                "beads_per_tube": sample.beads_per_tube,
                "corrections": self.corrections(sample_id),
            }

    def snapshot(self) -> dict[str, list[tuple]]:
        """The store's results without run bookkeeping (ids, timestamps): two stores that
        hold the same results give equal snapshots."""
        with self._sessions() as session:
            sha = {f.id: f.sha256 for f in session.scalars(select(FcsFileRow))}
            samples = {s.id: s for s in session.scalars(select(SampleRow))}
            key = {i: sha[s.file_id] for i, s in samples.items()}
            gatings = {g.id: g for g in session.scalars(select(GatingRow))}
            where = {i: (key[g.sample_id], g.template_sha256) for i, g in gatings.items()}
            newest_kinetics = session.scalar(select(func.max(KineticsRow.run_id)))
            kinetics = session.scalars(
                select(KineticsRow).where(KineticsRow.run_id == newest_kinetics)
            ).all()
            return {
                "files": sorted(sha.values()),
                "samples": sorted(
                    (key[i], s.patient, s.timepoint, s.tube, s.panel_id) for i, s in samples.items()
                ),
                "gatings": sorted((*where[i], g.status) for i, g in gatings.items()),
                "populations": sorted(
                    (*where[p.gating_id], p.population, p.count)
                    for p in session.scalars(select(PopulationRow))
                ),
                "gates": sorted(
                    (*where[g.gating_id], g.gate, g.method, g.value)
                    for g in session.scalars(select(GateRow))
                ),
                "flags": sorted(
                    (*where[f.gating_id], f.flag) for f in session.scalars(select(FlagRow))
                ),
                "quarantine": sorted(
                    (q.content_key, q.reason) for q in session.scalars(select(QuarantineRow))
                ),
                "kinetics": sorted((k.patient, k.population, k.metric, k.value) for k in kinetics),
            }

    def row_counts(self) -> dict[str, int]:
        with self._sessions() as session:
            return {
                table: session.scalar(select(func.count()).select_from(Base.metadata.tables[table]))
                for table in TABLES
            }
