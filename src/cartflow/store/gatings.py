"""Gatings and their populations, gates and flags, and the kinetics computed from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cartflow.pipeline.records import GateRecord, PopulationRecord
from cartflow.store.core import StoreCore
from cartflow.store.schema import (
    FlagRow,
    GateRow,
    GatingRow,
    KineticsRow,
    PopulationRow,
    SampleRow,
)


class Gatings(StoreCore):
    """The store's gatings: written once per sample, template, panel and corrections, and read
    back as counts, cuts and flags."""

    def record_gating(
        self,
        run_id: int,
        sample_id: int,
        template_id: str,
        template_sha256: str,
        populations: list[PopulationRecord],
        gates: list[GateRecord],
        flags: tuple[str, ...] = (),
        error: str | None = None,
        panel_sha256: str = "",
        corrections_key: str = "",
    ) -> bool:
        """Write one sample's gating (counts, decisions, flags) in one transaction.

        False when this sample was already gated with this template, panel and these
        corrections (by any run)."""
        try:
            with self.transaction() as session:
                gating = GatingRow(
                    run_id=run_id,
                    sample_id=sample_id,
                    template_id=template_id,
                    template_sha256=template_sha256,
                    panel_sha256=panel_sha256,
                    corrections_key=corrections_key,
                    status="failed" if error else "ok",
                    error=error,
                )
                session.add(gating)
                session.flush()
                session.add_all(
                    PopulationRow(gating_id=gating.id, **p.__dict__) for p in populations
                )
                session.add_all(GateRow(gating_id=gating.id, **g.__dict__) for g in gates)
                session.add_all(FlagRow(gating_id=gating.id, flag=f) for f in dict.fromkeys(flags))
            return True
        except IntegrityError:
            return False

    def add_flags(self, sample_id: int, template_sha256: str, flags: Sequence[str]) -> None:
        """Add review flags raised after the fact (e.g. against the rest of the batch) to a
        sample's newest successful gating with this template."""
        with self.transaction() as session:
            gating_id = session.scalar(
                select(func.max(GatingRow.id)).where(
                    GatingRow.sample_id == sample_id,
                    GatingRow.template_sha256 == template_sha256,
                    GatingRow.status == "ok",
                )
            )
            if gating_id is None:
                return
            known = set(session.scalars(select(FlagRow.flag).where(FlagRow.gating_id == gating_id)))
            session.add_all(
                FlagRow(gating_id=gating_id, flag=f) for f in dict.fromkeys(flags) if f not in known
            )

    def gating_keys(self) -> set[tuple[int, str, str, str]]:
        """(sample, template, panel, corrections key) of every gating tried (or done): a
        sample with the same four is not gated again."""
        with self._sessions() as session:
            rows = session.execute(
                select(
                    GatingRow.sample_id,
                    GatingRow.template_sha256,
                    GatingRow.panel_sha256,
                    GatingRow.corrections_key,
                )
            )
            return {tuple(row) for row in rows}

    def newest_gatings(self) -> dict[int, int]:
        """Sample → id of its newest gating (failed ones included)."""
        with self._sessions() as session:
            rows = session.execute(
                select(GatingRow.sample_id, func.max(GatingRow.id)).group_by(GatingRow.sample_id)
            ).all()
        return dict(rows)

    def sample_flags(self) -> dict[int, list[str]]:
        """QC flags of each sample's newest gating (failed gatings included)."""
        newest = (
            select(func.max(GatingRow.id).label("gating_id"))
            .group_by(GatingRow.sample_id)
            .subquery()
        )
        with self._sessions() as session:
            rows = session.execute(
                select(GatingRow.sample_id, FlagRow.flag)
                .join(FlagRow, FlagRow.gating_id == GatingRow.id)
                .join(newest, GatingRow.id == newest.c.gating_id)
                .order_by(FlagRow.id)
            ).all()
        flags: dict[int, list[str]] = {}
        for sample_id, flag in rows:
            flags.setdefault(sample_id, []).append(flag)
        return flags

    def fallback_reasons(self) -> dict[tuple[int, str], str]:
        """(sample, cut) → why the cut fell back, in each sample's newest gating."""
        newest = (
            select(func.max(GatingRow.id).label("gating_id"))
            .group_by(GatingRow.sample_id)
            .subquery()
        )
        with self._sessions() as session:
            rows = session.execute(
                select(GatingRow.sample_id, GateRow.gate, GateRow.evidence)
                .join(GateRow, GateRow.gating_id == GatingRow.id)
                .join(newest, GatingRow.id == newest.c.gating_id)
                .where(GateRow.fallback.is_(True))
            ).all()
        return {(i, gate): str((evidence or {}).get("reason")) for i, gate, evidence in rows}

    def latest_cuts(self, sample_id: int) -> dict[str, dict[str, Any]]:
        """A sample's cuts in its newest successful gating (as :meth:`provenance` gives
        them), by one query; empty when it has none."""
        newest = (
            select(func.max(GatingRow.id))
            .where(GatingRow.sample_id == sample_id, GatingRow.status == "ok")
            .scalar_subquery()
        )
        with self._sessions() as session:
            rows = session.scalars(select(GateRow).where(GateRow.gating_id == newest)).all()
        return {
            g.gate: {"value": g.value, "method": g.method, "fallback": g.fallback,
                     "evidence": g.evidence}
            for g in rows
        }  # fmt: skip

    def population_counts(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Population counts with their sample's identity (all gatings, or one run's)."""
        with self._sessions() as session:
            query = (
                select(PopulationRow, GatingRow, SampleRow)
                .join(GatingRow, PopulationRow.gating_id == GatingRow.id)
                .join(SampleRow, GatingRow.sample_id == SampleRow.id)
            )
            if run_id is not None:
                query = query.where(GatingRow.run_id == run_id)
            rows = session.execute(query.order_by(PopulationRow.id)).all()
        return [
            {
                "run_id": g.run_id,
                "sample_id": s.id,
                "patient": s.patient,
                "timepoint": s.timepoint,
                "tube": s.tube,
                "template_sha256": g.template_sha256,
                "population": p.population,
                "parent": p.parent,
                "count": p.count,
                "parent_count": p.parent_count,
            }
            for p, g, s in rows
        ]

    def record_kinetics(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Store one run's kinetic summaries (patient, population, metric, value, …) at once."""
        with self.transaction() as session:
            session.add_all(KineticsRow(run_id=run_id, **row) for row in rows)
