"""The store's tables: one SQLAlchemy declarative model per table, and their names."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Run(Base):
    """One invocation of a command that writes results: the provenance anchor."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command: Mapped[str] = mapped_column(String(64))
    software_version: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")


class RunOwner(Base):
    """The process that runs a run, so that a run whose process was killed (kill -9, the
    out-of-memory killer) is marked failed by the next command on the same host."""

    __tablename__ = "run_owners"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    process_started: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class FcsFileRow(Base):
    """A distinct FCS file, identified by the SHA-256 of its bytes."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    fcs_version: Mapped[str] = mapped_column(String(8))
    cytometer: Mapped[str | None] = mapped_column(Text, nullable=True)
    event_count: Mapped[int] = mapped_column(Integer)
    channel_count: Mapped[int] = mapped_column(Integer)
    has_spillover: Mapped[bool] = mapped_column(Boolean)
    acquisition_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    keywords: Mapped[dict] = mapped_column(JSON)
    reader_warnings: Mapped[list] = mapped_column(JSON, default=list)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class FileName(Base):
    """Every path under which a file's content was seen."""

    __tablename__ = "file_names"
    __table_args__ = (UniqueConstraint("file_id", "path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    path: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class SampleRow(Base):
    """A file's identity (patient, timepoint, tube) and the panel it was checked against."""

    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), unique=True)
    patient: Mapped[str] = mapped_column(String(128), index=True)
    timepoint: Mapped[str] = mapped_column(String(16))
    nominal_day: Mapped[int] = mapped_column(Integer)
    tube: Mapped[str] = mapped_column(String(64))
    panel_id: Mapped[str] = mapped_column(String(64))
    panel_version: Mapped[int] = mapped_column(Integer)
    panel_sha256: Mapped[str] = mapped_column(String(64))
    identity_source: Mapped[str] = mapped_column(Text)
    blood_volume_ul: Mapped[float | None] = mapped_column(Float, nullable=True)
    beads_per_tube: Mapped[float | None] = mapped_column(Float, nullable=True)
    bead_lot: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sample_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


KEY_LENGTH = 64
"""Characters of a gating's corrections key (its column's width)."""


class GatingRow(Base):
    """One sample gated with one template, panel and state of its hand corrections: at most
    once, however many runs try at once."""

    __tablename__ = "gatings"
    __table_args__ = (
        UniqueConstraint("sample_id", "template_sha256", "panel_sha256", "corrections_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    template_id: Mapped[str] = mapped_column(String(64))
    template_sha256: Mapped[str] = mapped_column(String(64))
    panel_sha256: Mapped[str] = mapped_column(String(64), default="")
    """SHA-256 of the tube's panels and the marker names resolving them, as gated ('' for a
    lab's fixed gates, which use no panel)."""
    corrections_key: Mapped[str] = mapped_column(String(KEY_LENGTH), default="")
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class PopulationRow(Base):
    """Event count of one gated population of one gating."""

    __tablename__ = "populations"
    __table_args__ = (UniqueConstraint("gating_id", "population"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gating_id: Mapped[int] = mapped_column(ForeignKey("gatings.id"), index=True)
    population: Mapped[str] = mapped_column(String(256))
    parent: Mapped[str | None] = mapped_column(String(256), nullable=True)
    count: Mapped[int] = mapped_column(Integer)
    parent_count: Mapped[int | None] = mapped_column(Integer, nullable=True)


class GateRow(Base):
    """A placed gate or threshold and the evidence for it."""

    __tablename__ = "gates"
    __table_args__ = (UniqueConstraint("gating_id", "gate"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gating_id: Mapped[int] = mapped_column(ForeignKey("gatings.id"), index=True)
    gate: Mapped[str] = mapped_column(String(256))
    method: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    evidence: Mapped[dict] = mapped_column(JSON, default=dict)


class FlagRow(Base):
    """A QC flag raised by one gating (``threshold_fallback:CD3``, …)."""

    __tablename__ = "flags"
    __table_args__ = (UniqueConstraint("gating_id", "flag"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gating_id: Mapped[int] = mapped_column(ForeignKey("gatings.id"), index=True)
    flag: Mapped[str] = mapped_column(Text)


class KineticsRow(Base):
    """One kinetic summary value (Cmax, AUC14, …) of one patient and population."""

    __tablename__ = "kinetics"
    __table_args__ = (UniqueConstraint("run_id", "patient", "population", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    patient: Mapped[str] = mapped_column(String(128), index=True)
    population: Mapped[str] = mapped_column(String(256))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)


class ReplacementRow(Base):
    """A stored file replaced by new content at the same path (a copy that was finished
    or rewritten after it was stored): what the old one was and what it counted."""

    __tablename__ = "replacements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    old_sha256: Mapped[str] = mapped_column(String(64))
    new_sha256: Mapped[str] = mapped_column(String(64))
    patient: Mapped[str] = mapped_column(String(128))
    timepoint: Mapped[str] = mapped_column(String(16))
    tube: Mapped[str] = mapped_column(String(64))
    old_counts: Mapped[dict] = mapped_column(JSON, default=dict)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class QuarantineRow(Base):
    """A file that was refused, with a one-line reason."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_key: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


class CorrectionRow(Base):
    """One entry of the audit trail of hand corrections, never updated nor deleted: a cut,
    gates or exclusion set on a sample, its revocation (``revokes``), a review acceptance
    (of the gating then current), or a manifest change of a sample's identity (old → new)."""

    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    old: Mapped[Any] = mapped_column(JSON, nullable=True)
    new: Mapped[Any] = mapped_column(JSON, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    revokes: Mapped[int | None] = mapped_column(ForeignKey("corrections.id"), nullable=True)
    gating_id: Mapped[int | None] = mapped_column(ForeignKey("gatings.id"), nullable=True)


TABLES = (
    "gatings",
    "corrections",
    "flags",
    "runs",
    "files",
    "file_names",
    "samples",
    "populations",
    "gates",
    "kinetics",
    "quarantine",
)
