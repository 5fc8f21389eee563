"""The audit trail of hand corrections and reviews, and the key a gating takes from it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import select

from cartflow.store.core import StoreCore
from cartflow.store.schema import KEY_LENGTH, CorrectionRow, SampleRow


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


OVERRIDES = ("cut", "gates", "exclude")
"""Correction actions that change a sample's numbers until revoked."""
REGATING = ("cut", "gates")
"""Those that need the sample gated again."""


def corrections_key(trail: Sequence[Mapping[str, Any]]) -> str:
    """What of a sample's corrections (its audit trail, oldest first) its gating depends on:
    the ids of every cut or gates override and of every revocation of one ('' when there is
    none), so each change makes one new gating and a revocation goes back to automatic
    values. Longer than the key column holds: the SHA-256 of those ids."""
    regating = {c["id"] for c in trail if c["action"] in REGATING}
    ids = ",".join(str(c["id"]) for c in trail if c["id"] in regating or c["revokes"] in regating)
    return ids if len(ids) <= KEY_LENGTH else hashlib.sha256(ids.encode()).hexdigest()


class Corrections(StoreCore):
    """The audit trail: corrections, revocations, acceptances and identity changes, appended
    and never changed, and what is in force from them."""

    def add_correction(
        self,
        sample_id: int,
        action: str,
        reason: str,
        by: str,
        *,
        target: str | None = None,
        old: Any = None,
        new: Any = None,
        revokes: int | None = None,
        gating_id: int | None = None,
    ) -> int:
        """Append one entry to the audit trail; returns its id."""
        with self.transaction() as session:
            row = CorrectionRow(
                sample_id=sample_id,
                action=action,
                target=target,
                old=old,
                new=new,
                reason=reason,
                by=by,
                revokes=revokes,
                gating_id=gating_id,
            )
            session.add(row)
            session.flush()
            return row.id

    def corrections(self, sample_id: int | None = None) -> list[dict[str, Any]]:
        """The audit trail (of one sample, or all), oldest first, each entry marked active
        when it is an override nobody revoked."""
        with self._sessions() as session:
            query = select(CorrectionRow).order_by(CorrectionRow.id)
            if sample_id is not None:
                query = query.where(CorrectionRow.sample_id == sample_id)
            rows = session.scalars(query).all()
            revoked = set(
                session.scalars(
                    select(CorrectionRow.revokes).where(CorrectionRow.revokes.is_not(None))
                )
            )
        return [
            {
                "id": c.id,
                "sample_id": c.sample_id,
                "action": c.action,
                "target": c.target,
                "old": c.old,
                "new": c.new,
                "reason": c.reason,
                "by": c.by,
                "at": c.at,
                "revokes": c.revokes,
                "gating_id": c.gating_id,
                "active": c.action in OVERRIDES and c.id not in revoked,
            }
            for c in rows
        ]

    def corrections_key(self, sample_id: int) -> str:
        """What of a sample's corrections its gating depends on (:func:`corrections_key`)."""
        return corrections_key(self.corrections(sample_id))

    def excluded_samples(self) -> set[int]:
        """Samples under an exclusion nobody revoked."""
        return {
            c["sample_id"] for c in self.corrections() if c["active"] and c["action"] == "exclude"
        }

    def accepted(self) -> dict[int, int]:
        """Sample → the gating id a reviewer last accepted it with."""
        return {
            c["sample_id"]: c["gating_id"]
            for c in self.corrections()
            if c["action"] == "accept" and c["gating_id"] is not None
        }

    def update_identity(
        self,
        sample_id: int,
        changes: dict[str, tuple[Any, Any]],
        reason: str,
        by: str,
        source: str | None = None,
    ) -> int:
        """Apply a changed identity (field → (old, new)) to a sample and audit it, in one
        transaction; returns the audit entry's id."""
        with self.transaction() as session:
            sample = session.get(SampleRow, sample_id)
            for name, (_old, new) in changes.items():
                setattr(sample, name, new)
            if source is not None:
                sample.identity_source = source
            row = CorrectionRow(
                sample_id=sample_id,
                action="manifest",
                target=", ".join(changes),
                old={k: _json_value(v[0]) for k, v in changes.items()},
                new={k: _json_value(v[1]) for k, v in changes.items()},
                reason=reason,
                by=by,
            )
            session.add(row)
            session.flush()
            return row.id
