"""The store's core: its connection, sessions and transactions, and the runs results belong to."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, make_url, select
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cartflow import __version__
from cartflow.io.errors import StoreError, first_line
from cartflow.store.connection import (
    MAKE_ONE,
    NO_STORE,
    _check_schema,
    _sqlite_pragmas,
    _writable_file,
    normalise_url,
)
from cartflow.store.schema import Base, Run, RunOwner, _now


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


class StoreCore:
    """A connection to the store: opened and checked, its sessions and transactions, and the
    runs (commands that write results) every stored number belongs to."""

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
