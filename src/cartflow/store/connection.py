"""Opening a store: its URL, SQLite's connection set-up, and the check of an existing schema."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from cartflow import __version__
from cartflow.io.errors import StoreError
from cartflow.store.schema import Base

DEFAULT_DB = "sqlite:///cartflow.sqlite"


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
                _switch_to_wal(cursor, sqlite3)
                cursor.execute("PRAGMA synchronous=NORMAL")
        except UnicodeDecodeError as exc:
            raise sqlite3.DatabaseError(
                "database disk image is malformed (its schema is not readable text)"
            ) from exc
        finally:
            cursor.close()

    return set_up


def _switch_to_wal(cursor, sqlite3, attempts: int = 50) -> None:
    """WAL mode; on a new file that other processes open at the same moment, SQLite may
    answer "locked" at once instead of waiting for the busy timeout: tried again briefly."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)


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
