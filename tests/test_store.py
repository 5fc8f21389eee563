"""The results store on SQLite and PostgreSQL: schema, provenance, one transaction per file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import date

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from cartflow import __version__
from cartflow.io.errors import StoreError
from cartflow.store import (
    KEY_LENGTH,
    TABLES,
    FcsFileRow,
    FileRecord,
    Run,
    SampleRecord,
    SampleRow,
    Store,
    corrections_key,
    normalise_url,
)


def _file(sha="a" * 64, path="/batch/x.fcs") -> FileRecord:
    return FileRecord(
        sha256=sha,
        path=path,
        size_bytes=1234,
        fcs_version="FCS3.1",
        cytometer="FACSLyric",
        event_count=1000,
        channel_count=14,
        has_spillover=True,
        acquisition_date=date(2025, 3, 7),
        keywords={"$CYT": "FACSLyric", "$SRC": "DOE^JANE"},
        reader_warnings=[],
    )


def _sample(patient="CART-01") -> SampleRecord:
    return SampleRecord(
        patient=patient,
        timepoint="D7",
        nominal_day=7,
        tube="memory",
        panel_id="memory-lyric",
        panel_version=1,
        panel_sha256="b" * 64,
        identity_source="manifest line 2",
        blood_volume_ul=50.0,
        beads_per_tube=50000.0,
        bead_lot="L1",
        sample_date=date(2025, 3, 7),
    )


def test_schema_has_every_table(store):
    assert set(store.row_counts()) == set(TABLES)
    assert all(n == 0 for n in store.row_counts().values())


def test_run_provenance(store):
    run_id = store.start_run("ingest", {"batch": "/b", "panels": {"memory-lyric": "c" * 64}})
    store.finish_run(run_id)
    with store.transaction() as session:
        run = session.get(Run, run_id)
        assert run.software_version == __version__
        assert run.parameters["panels"]["memory-lyric"] == "c" * 64
        assert run.status == "finished" and run.finished_at >= run.started_at


def test_record_sample_once_per_content(store):
    run_id = store.start_run("ingest", {})
    first = store.record_sample(run_id, _file(), _sample())
    assert first is not None
    assert store.file_id("a" * 64) == first
    assert store.record_sample(run_id, _file(path="/other/name.fcs"), _sample()) is None
    counts = store.row_counts()
    assert (counts["files"], counts["samples"], counts["file_names"]) == (1, 1, 1)
    assert store.add_file_name(run_id, first, "/other/name.fcs") is True
    assert store.add_file_name(run_id, first, "/other/name.fcs") is False
    assert store.row_counts()["file_names"] == 2
    [sample] = store.samples()
    assert (sample.patient, sample.timepoint, sample.sha256) == ("CART-01", "D7", "a" * 64)


def test_a_failed_write_leaves_nothing_of_the_file(store):
    """The sample row fails (its patient is NULL), so the file row goes too."""
    run_id = store.start_run("ingest", {})
    broken = _sample(patient=None)
    with pytest.raises(IntegrityError), store.transaction() as session:
        row = FcsFileRow(
            **{k: v for k, v in _file().__dict__.items() if k != "path"},
            name="x.fcs",
            run_id=run_id,
        )
        session.add(row)
        session.flush()
        session.add(SampleRow(file_id=row.id, run_id=run_id, **broken.__dict__))
    assert store.file_id("a" * 64) is None
    assert store.row_counts()["files"] == 0


def test_quarantine_records_each_file_once(store):
    run_id = store.start_run("ingest", {})
    assert store.quarantine(run_id, "d" * 64, "/b/bad.fcs", "d" * 64, "fcs-format", "truncated")
    assert not store.quarantine(run_id, "d" * 64, "/b/bad2.fcs", "d" * 64, "fcs-format", "x")
    assert store.quarantined_as("d" * 64) == ("fcs-format", "truncated")
    assert store.quarantined_as("e" * 64) is None
    assert store.quarantined() == [
        {"path": "/b/bad.fcs", "sha256": "d" * 64, "kind": "fcs-format", "reason": "truncated"}
    ]


def test_sqlite_uses_wal(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_url_forms(tmp_path):
    assert normalise_url(tmp_path / "a.sqlite") == f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_keywords_survive_the_round_trip(store):
    run_id = store.start_run("ingest", {})
    store.record_sample(run_id, _file(), _sample())
    with store.transaction() as session:
        row = session.scalars(select(FcsFileRow)).one()
        assert row.keywords["$CYT"] == "FACSLyric"


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"lab notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(
        StoreError, match=r"notes\.sqlite: cannot be opened: file is not a database"
    ):
        Store(path)
    assert path.read_bytes() == before


def test_a_database_of_something_else_is_refused_untouched(tmp_path):
    path = tmp_path / "inventory.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE inventory (item TEXT)")
    with pytest.raises(
        StoreError, match=r"is not a cartflow store \(it holds other tables: inventory"
    ):
        Store(path)
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"inventory"}


def test_a_store_of_another_schema_names_its_missing_columns_and_gains_nothing(store_url):
    engine = create_engine(normalise_url(store_url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (id INTEGER PRIMARY KEY, command VARCHAR(64))"))
    missing = ", ".join(c.name for c in Run.__table__.columns if c.name not in ("id", "command"))
    with pytest.raises(StoreError, match=rf"table 'runs' lacks column\(s\) {missing}: "):
        Store(store_url)
    assert inspect(engine).get_table_names() == ["runs"]
    engine.dispose()


def test_an_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/x: cannot be opened: ") as caught:
        Store("postgresql://cartflow:secret@127.0.0.1:1/x")
    assert "secret" not in str(caught.value) and "***" in str(caught.value)


def test_the_command_line_reports_a_bad_store_in_one_line(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database", encoding="utf-8")
    command = [sys.executable, "-m", "cartflow.cli", "kinetics", "--db", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"error: sqlite:///{path}: cannot be opened: file is not a database"
    )
    assert path.read_text(encoding="utf-8") == "not a database"


def test_a_run_whose_work_fails_is_marked_failed(store):
    from cartflow.store import Run

    with pytest.raises(RuntimeError), store.recording("kinetics", {}) as failing:
        raise RuntimeError("the work broke")
    with store.recording("kinetics", {}) as working:
        pass
    with store.transaction() as session:
        assert session.get(Run, failing).status == "failed"
        assert session.get(Run, working).status == "finished"


def test_a_store_that_fails_mid_command_is_one_line(tmp_path):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"  # readable, not writable
    command = [sys.executable, "-m", "cartflow.cli", "kinetics", "--db", url, "--out", "k"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: the store failed: attempt to write a readonly database"
    assert not (tmp_path / "file:").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "--sample", "1"],
        ["kinetics", "--out", "k"],
        ["export", "--out", "e"],
        ["outcomes", "--clinical", "c.csv", "--out", "o/outcomes"],
    ],
)
def test_commands_that_read_results_do_not_make_a_store_at_a_mistyped_path(
    tmp_path, monkeypatch, command
):
    from typer.testing import CliRunner

    from cartflow.cli import app

    typo = tmp_path / "typo" / "stroe.sqlite"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--db", f"sqlite:///{typo}"])
    assert isinstance(result.exception, StoreError)  # main() prints it in one line
    assert "there is no store here" in str(result.exception)
    assert not typo.exists() and not typo.parent.exists()


def test_an_empty_database_is_not_a_store_to_read(tmp_path):
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="holds no cartflow store"):
        Store(empty, existing=True)
    Store(empty).close()  # a command that writes results makes it one
    Store(empty, existing=True).close()


def test_a_store_with_a_damaged_schema_is_one_line(tmp_path):
    """One byte of the schema text damaged: SQLite's own message is then not text."""
    path = tmp_path / "damaged.sqlite"
    Store(f"sqlite:///{path}").close()
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"tube VARCHAR(64) NOT NULL") + 24] = 0x88
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="cannot be opened: database disk image is malformed"):
        Store(f"sqlite:///{path}", existing=True)
    command = [sys.executable, "-m", "cartflow.cli", "export", "--format", "csv", "--db",
               str(path), "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: sqlite:///{path}: cannot be opened:")


def _create_store(url: str) -> str:
    try:
        store = Store(url)
        store.close()
        return "ok"
    except Exception as exc:  # the problem, to be reported by the test
        return f"{type(exc).__name__}: {exc}"


def test_a_new_store_opened_by_several_processes_at_once_works(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    for attempt in range(3):  # a race: try a few fresh stores
        url = f"sqlite:///{tmp_path / f'new{attempt}.sqlite'}"
        with ProcessPoolExecutor(4) as pool:
            assert list(pool.map(_create_store, [url] * 4)) == ["ok"] * 4
        store = Store(url)
        assert set(store.row_counts()) == set(TABLES)
        store.close()


def test_a_run_whose_process_was_killed_is_marked_failed_on_the_next_start(tmp_path):
    """kill -9 leaves no chance to mark a run failed: the next command does it."""
    import os
    import signal

    path = tmp_path / "store.sqlite"
    script = (
        f"import time; from cartflow.store import Store; s = Store({str(path)!r}); "
        "s.start_run('run', {}); print('started', flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    store = Store(f"sqlite:///{path}")
    with store.transaction() as session:  # its process is alive: still running
        assert session.scalars(select(Run.status)).all() == ["running"]
    store.close()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = Store(f"sqlite:///{path}")
    with store.transaction() as session:
        [run] = session.scalars(select(Run)).all()
        assert (run.status, run.finished_at is not None) == ("failed", True)
    store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file: run as a user")
def test_a_read_only_store_opens_for_reading(tmp_path):
    path = tmp_path / "store.sqlite"
    store = Store(f"sqlite:///{path}")
    store.start_run("run", {})
    store.close()
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        store = Store(f"sqlite:///{path}", existing=True)
        assert store.read_only and store.row_counts()["runs"] == 1
        store.close()
    finally:
        tmp_path.chmod(0o755)


def test_a_long_corrections_key_still_fits_its_column():
    """Each cut override and revocation enters a sample's gating key; past the column's
    width the key is their SHA-256, still different for a different trail."""

    def trail(count: int, first: int = 1) -> list[dict]:
        return [{"id": first + i, "action": "cut", "revokes": None} for i in range(count)]

    short = corrections_key([*trail(2), {"id": 9, "action": "accept", "revokes": None}])
    assert short == "1,2"
    long = corrections_key(trail(40))
    assert len(long) == KEY_LENGTH and long != corrections_key(trail(40, first=2))
    assert corrections_key(trail(40)) == long
