"""The results store: one SQLAlchemy schema on SQLite (default, WAL) or PostgreSQL (by URL).

Every stored number belongs to a run (software version, parameters, panel and template
hashes, timestamps) and to a file identified by its SHA-256. A file's rows are written in
one transaction, so an interrupted write leaves all of them or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
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
    create_engine,
    delete,
    event,
    func,
    inspect,
    make_url,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pipeline import __version__
from pipeline.errors import StoreError, first_line

DEFAULT_DB = "sqlite:///cartflow.sqlite"


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


def _this_process() -> tuple[str, int, float]:
    import socket

    import psutil

    return socket.gethostname(), os.getpid(), psutil.Process().create_time()


def _process_alive(pid: int, started: float) -> bool:
    """Whether the process that started a run still runs (and is not another one that
    was given the same id since)."""
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


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


IDENTITY_FIELDS = (
    "patient",
    "timepoint",
    "nominal_day",
    "tube",
    "blood_volume_ul",
    "beads_per_tube",
    "bead_lot",
    "sample_date",
)
"""A sample's identity as a manifest gives it (what a corrected manifest row may change)."""


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


STORED_KEYWORDS = re.compile(
    r"^(?:\$(?:P\d+[A-Z]+|BEGIN\w*|END\w*|NEXTDATA|BYTEORD|DATATYPE|MODE|PAR|TOT|CYT|CYTSN|"
    r"DATE|BTIM|ETIM|TIMESTEP|SPILLOVER|SPILL|VOL|ABRT|LOST|SYS|TR|FLOWRATE|ORIGINALITY|"
    r"LAST_MODIFIED|UNICODE|CSMODE|CSVBITS|CSV\d+FLAG)|SPILL)$"
)
"""TEXT keywords a file's row keeps: what describes the acquisition and the instrument.
Others ($SRC, $COM, $FIL, $OP, names, birth dates, sample ids) may identify a person."""


def stored_keywords(text: dict[str, str], also: Iterable[str] = ()) -> dict[str, str]:
    """The keywords of ``text`` the store keeps: :data:`STORED_KEYWORDS` and ``also``
    (the identity keywords and a lab's allow-list); every other keyword is dropped."""
    extra = {name.upper() for name in also}
    return {k: v for k, v in text.items() if k.upper() in extra or STORED_KEYWORDS.match(k)}


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    path: str
    size_bytes: int
    fcs_version: str
    cytometer: str | None
    event_count: int
    channel_count: int
    has_spillover: bool
    acquisition_date: date | None
    keywords: dict[str, str]
    reader_warnings: list[str]


@dataclass(frozen=True)
class SampleRecord:
    patient: str
    timepoint: str
    nominal_day: int
    tube: str
    panel_id: str
    panel_version: int
    panel_sha256: str
    identity_source: str
    blood_volume_ul: float | None
    beads_per_tube: float | None
    bead_lot: str | None
    sample_date: date | None


@dataclass(frozen=True)
class PopulationRecord:
    population: str
    parent: str | None
    count: int
    parent_count: int | None


@dataclass(frozen=True)
class GateRecord:
    gate: str
    method: str
    value: float | None
    fallback: bool
    evidence: dict[str, Any]


def normalise_url(url: str | os.PathLike | None) -> str:
    """Accept a SQLAlchemy URL or a plain path to a SQLite file."""
    url = str(url or os.environ.get("CARTFLOW_DB") or DEFAULT_DB)
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def _sqlite_pragmas(read_only: bool):
    """Connection set-up: wait for other writers (set first: switching to WAL takes a lock),
    then WAL mode unless the store is opened read-only; a damaged file whose error message
    is not even text becomes a plain database error."""

    def set_up(dbapi_connection, _record) -> None:
        import sqlite3

        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            if not read_only:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        except UnicodeDecodeError as exc:
            raise sqlite3.DatabaseError(
                "database disk image is malformed (its schema is not readable text)"
            ) from exc
        finally:
            cursor.close()

    return set_up


def _writable_file(path: Path) -> bool:
    """Whether SQLite can write this store file and its journal beside it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


MAKE_ONE = "(`cartflow run` or `cartflow ingest` make one)"
NO_STORE = "holds no cartflow store " + MAKE_ONE


def _check_schema(engine: Engine, where: str) -> bool:
    """Refuse a database that holds other tables but none of cartflow's, or cartflow tables
    lacking columns of this schema (written by another version): nothing is written to it.
    True when the store's tables are there."""
    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    ours = [table for table in Base.metadata.sorted_tables if table.name in present]
    if present and not ours:
        listed = ", ".join(sorted(present)[:5])
        raise StoreError(where, f"is not a cartflow store (it holds other tables: {listed})")
    for table in ours:
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in columns]
        if missing:
            raise StoreError(
                where,
                f"table {table.name!r} lacks column(s) {', '.join(missing)}: the store was "
                f"written by another cartflow version than {__version__}; open a new store",
            )
    return bool(ours)


class Store:
    """A connection to the results store with the few operations the stages need."""

    def __init__(self, url: str | os.PathLike | None = None, *, existing: bool = False) -> None:
        """Open (and, unless ``existing``, create) the store; ``existing`` is for commands
        that only read results: a store that is not there is an error, not a new empty one."""
        self.url = normalise_url(url)
        try:
            self.display_url = make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError as exc:
            raise StoreError(self.url, f"is not a database URL: {first_line(exc)}") from exc
        path = self.url.removeprefix("sqlite:///")
        local_file = self.url.startswith("sqlite:///") and not path.startswith("file:")  # no URI
        if local_file and Path(path).is_dir():
            raise StoreError(self.display_url, "is a folder, not a store file")
        if existing and local_file and not Path(path).is_file():
            raise StoreError(self.display_url, "there is no store here " + MAKE_ONE)
        self.read_only = existing and local_file and not _writable_file(Path(path))
        engine_url = f"sqlite:///file:{path}?mode=ro&uri=true" if self.read_only else self.url
        try:
            if local_file:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(engine_url, future=True)
        except (ArgumentError, ImportError, OSError) as exc:
            problem = f"cannot be used as a store: {first_line(exc)}"
            raise StoreError(self.display_url, problem) from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas(self.read_only))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if not _check_schema(self.engine, self.display_url) and existing:
                raise StoreError(self.display_url, NO_STORE)
            if not self.read_only:
                self._create_tables()
                self._fail_abandoned_runs()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            problem = first_line(getattr(exc, "orig", None) or exc)
            raise StoreError(self.display_url, f"cannot be opened: {problem}") from exc
        except StoreError:
            self.engine.dispose()
            raise

    def _create_tables(self) -> None:
        """The schema, created once even when several commands open a new store at once."""
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                return
            except OperationalError as exc:  # another process created a table meanwhile
                if "already exists" not in str(exc) or attempt == 4:
                    raise

    def _fail_abandoned_runs(self) -> None:
        """Mark failed the runs left 'running' by a process of this host that is gone."""
        host, _, _ = _this_process()
        with self.transaction() as session:
            rows = session.execute(
                select(Run, RunOwner)
                .join(RunOwner, RunOwner.run_id == Run.id)
                .where(Run.status == "running", RunOwner.host == host)
            ).all()
            for run, owner in rows:
                if not _process_alive(owner.pid, owner.process_started):
                    run.status = "failed"
                    run.finished_at = _now()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed together or not at all."""
        with self._sessions() as session, session.begin():
            yield session

    def start_run(self, command: str, parameters: dict[str, Any]) -> int:
        with self.transaction() as session:
            run = Run(
                command=command,
                software_version=__version__,
                parameters=json.loads(json.dumps(parameters, default=str)),
            )
            session.add(run)
            session.flush()
            host, pid, started = _this_process()
            session.add(RunOwner(run_id=run.id, host=host, pid=pid, process_started=started))
            return run.id

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        with self.transaction() as session:
            run = session.get(Run, run_id)
            run.finished_at = _now()
            run.status = status

    @contextmanager
    def recording(self, command: str, parameters: dict[str, Any]) -> Iterator[int]:
        """A run around some work: its id meanwhile, then 'finished', or 'failed' when the
        work raises (an error, an interruption), so no run is left 'running'."""
        run_id = self.start_run(command, parameters)
        try:
            yield run_id
        except BaseException:
            self.finish_run(run_id, "failed")
            raise
        self.finish_run(run_id)

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

    def newest_gatings(self) -> dict[int, int]:
        """Sample → id of its newest gating (failed ones included)."""
        with self._sessions() as session:
            rows = session.execute(
                select(GatingRow.sample_id, func.max(GatingRow.id)).group_by(GatingRow.sample_id)
            ).all()
        return dict(rows)

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

    def _latest_gatings(self):
        """Subquery: the newest successful gating of each sample."""
        return (
            select(func.max(GatingRow.id).label("gating_id"))
            .where(GatingRow.status == "ok")
            .group_by(GatingRow.sample_id)
            .subquery()
        )

    def latest_counts(self) -> list[dict[str, Any]]:
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
            {
                "sample_id": s.id,
                "run_id": g.run_id,
                "file": name,
                "sha256": sha,
                "patient": s.patient,
                "timepoint": s.timepoint,
                "nominal_day": s.nominal_day,
                "tube": s.tube,
                "panel_id": s.panel_id,
                "blood_volume_ul": s.blood_volume_ul,
                "beads_per_tube": s.beads_per_tube,
                "bead_lot": s.bead_lot,
                "sample_date": s.sample_date,
                "template_id": g.template_id,
                "template_sha256": g.template_sha256,
                "population": p.population,
                "parent": p.parent,
                "count": p.count,
                "parent_count": p.parent_count,
            }
            for p, g, s, sha, name in rows
        ]

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

    def record_kinetics(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Store one run's kinetic summaries (patient, population, metric, value, …) at once."""
        with self.transaction() as session:
            session.add_all(KineticsRow(run_id=run_id, **row) for row in rows)

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

    def samples(self) -> list[dict[str, Any]]:
        """All samples with their file's name and SHA-256."""
        with self._sessions() as session:
            rows = session.execute(
                select(SampleRow, FcsFileRow.sha256, FcsFileRow.name).join(
                    FcsFileRow, SampleRow.file_id == FcsFileRow.id
                )
            ).all()
        return [
            {
                "sample_id": s.id,
                "file": name,
                "sha256": sha,
                "patient": s.patient,
                "timepoint": s.timepoint,
                "nominal_day": s.nominal_day,
                "tube": s.tube,
                "panel_id": s.panel_id,
                "blood_volume_ul": s.blood_volume_ul,
                "beads_per_tube": s.beads_per_tube,
                "sample_date": s.sample_date,
            }
            for s, sha, name in rows
        ]

    def quarantined(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(QuarantineRow).order_by(QuarantineRow.id)).all()
        return [
            {"path": q.path, "sha256": q.sha256, "kind": q.error_kind, "reason": q.reason}
            for q in rows
        ]
