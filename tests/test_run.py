"""Batch runs as a lab uses them: incremental, parallel (process pool and Dask), crash-safe,
safe when two runs overlap, and reported."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.store import Store
from tests.conftest import FIXTURE_COHORT

runner = CliRunner()
PATIENT_FILES = ("CART-001 D7_", "CART-001 D11_", "CART-001 D14_", "CART-003 D11_")


def _batch(target: Path, prefixes=PATIENT_FILES, tubes=("memory", "BCELL")) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(FIXTURE_COHORT.glob("*.fcs")):
        if source.name.startswith(prefixes) and any(t in source.name for t in tubes):
            shutil.copy(source, target / source.name)
    return target


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cartflow.cli", *args]


def _run_args(batch: Path, db: str, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(batch),
        "--db",
        db,
        "--out",
        str(out),
        "--no-report",
        "--clinical",
        str(FIXTURE_COHORT / "clinical.csv"),
        *extra,
    ]


def test_run_writes_tables_and_report_and_is_incremental(tmp_path, store_url):
    batch = _batch(tmp_path / "batch")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", str(batch), "--db", store_url, "--out", str(out), "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    for name in ("timepoints.csv", "timepoints.parquet", "kinetics.csv", "kinetics.parquet"):
        assert (out / name).is_file(), name
    assert (out / "report" / "index.html").is_file()
    assert f"{len(list(batch.glob('*.fcs')))} gated" in result.output
    store = Store(store_url)
    first = store.snapshot()
    again = runner.invoke(app, _run_args(batch, store_url, out))
    assert again.exit_code == 0, again.output
    assert "0 gated" in again.output and "already gated" in again.output
    assert store.snapshot()["gatings"] == first["gatings"]
    assert store.snapshot()["populations"] == first["populations"]
    store.close()


@pytest.mark.slow
def test_a_rerun_in_another_process_gates_nothing(tmp_path):
    """What keys a gating (template, panel and marker names, corrections) hashes the same in
    every process: a second `cartflow run`, with another string-hash seed, gates nothing."""
    batch = _batch(tmp_path / "batch", prefixes=("CART-001 D11_",))
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    outputs = []
    for seed in ("1", "2"):
        done = subprocess.run(
            _cli(*_run_args(batch, url, tmp_path / "out")),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert f"{len(list(batch.glob('*.fcs')))} gated" in outputs[0]
    assert "0 gated" in outputs[1], outputs[1]


@pytest.mark.slow
def test_dask_cluster_gives_the_same_results(tmp_path):
    from dask.distributed import LocalCluster

    batch = _batch(tmp_path / "batch", prefixes=("CART-001 D11_", "CART-003 D11_"))
    local = f"sqlite:///{tmp_path / 'local.sqlite'}"
    assert (
        runner.invoke(app, _run_args(batch, local, tmp_path / "a", "--workers", "1")).exit_code == 0
    )
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        dask_db = f"sqlite:///{tmp_path / 'dask.sqlite'}"
        result = runner.invoke(
            app, _run_args(batch, dask_db, tmp_path / "b", "--scheduler", cluster.scheduler_address)
        )
    assert result.exit_code == 0, result.output
    assert Store(local).snapshot()["populations"] == Store(dask_db).snapshot()["populations"]


def _reference(tmp_path: Path, batch: Path, url: str) -> dict:
    done = subprocess.run(_cli(*_run_args(batch, url, tmp_path / "ref")), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    store = Store(url)
    snapshot = store.snapshot()
    store.close()
    return snapshot


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 2.0, 3.5, 5.0])
def test_kill_and_rerun_gives_the_same_store(tmp_path, store_url, delay):
    """SIGKILL a real run at some moment, run again: the store equals an uninterrupted run's."""
    batch = _batch(tmp_path / "batch")
    reference_url = f"sqlite:///{tmp_path / 'reference.sqlite'}"
    reference = _reference(tmp_path, batch, reference_url)
    process = subprocess.Popen(
        _cli(*_run_args(batch, store_url, tmp_path / "out", "--workers", "2")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    again = subprocess.run(
        _cli(*_run_args(batch, store_url, tmp_path / "out")), capture_output=True
    )
    assert again.returncode == 0, again.stderr.decode()
    store = Store(store_url)
    snapshot = store.snapshot()
    store.close()
    for table, rows in reference.items():
        assert snapshot[table] == rows, (table, set(snapshot[table]) ^ set(rows))


def test_sigterm_marks_the_run_failed_and_leaves_no_workers(tmp_path):
    """SIGTERM (a service stopping) ends a run as Ctrl-C does: one line, exit 130, the run
    marked failed, no pool workers left behind."""
    batch = _batch(tmp_path / "batch")
    path = tmp_path / "store.sqlite"
    process = subprocess.Popen(
        _cli(*_run_args(batch, f"sqlite:///{path}", tmp_path / "out", "--workers", "2")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # until gating has begun
        if path.exists() and _count(path, "gatings"):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: a run in progress")
    statuses = dict(_rows(path, "select command, status from runs"))
    assert statuses["run"] == "failed"
    assert not _processes_naming(batch)  # forked workers keep the run's command line


def _processes_naming(text: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # not a process, or gone meanwhile
            continue
        if str(text) in command:
            found.append(entry.name)
    return found


def _rows(path: Path, query: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return connection.execute(query).fetchall()


def _count(path: Path, table: str) -> int:
    try:
        return _rows(path, f"select count(*) from {table}")[0][0]
    except Exception:  # the store is still being created
        return 0


@pytest.mark.slow
def test_two_runs_at_once_on_overlapping_batches(tmp_path, store_url):
    first = _batch(tmp_path / "first", prefixes=("CART-001 D7_", "CART-001 D11_", "CART-003 D11_"))
    second = _batch(
        tmp_path / "second", prefixes=("CART-001 D11_", "CART-001 D14_", "CART-003 D11_")
    )
    Store(store_url).close()  # schema first, so both runs start on a ready store
    runs = [
        subprocess.Popen(
            _cli(*_run_args(batch, store_url, tmp_path / f"out{i}", "--workers", "1")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, batch in enumerate((first, second))
    ]
    reported = 0
    for process in runs:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()
        reported += int(re.search(r"gate: (\d+) gated", out.decode()).group(1))
    store = Store(store_url)
    snapshot = store.snapshot()
    union = {p.name for p in first.glob("*.fcs")} | {p.name for p in second.glob("*.fcs")}
    assert len(snapshot["files"]) == len(union)
    assert len(snapshot["samples"]) == len(union)
    gated = [(sha, template) for sha, template, _ in snapshot["gatings"]]
    assert len(gated) == len(set(gated)) == len(union)
    assert reported == len(union)  # each file counted as gated by the one run that stored it
    populations = [(sha, template, pop) for sha, template, pop, _ in snapshot["populations"]]
    assert len(populations) == len(set(populations))
    store.close()


@pytest.mark.slow
def test_watch_takes_files_once_complete_and_survives_bad_ones(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    db = f"sqlite:///{tmp_path / 'watch.sqlite'}"
    source = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    raw = source.read_bytes()
    watcher = subprocess.Popen(
        _cli(
            "watch",
            str(folder),
            "--db",
            db,
            "--out",
            str(tmp_path / "out"),
            "--no-report",
            "--interval",
            "0.4",
            "--cycles",
            "14",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    arriving = folder / source.name
    with arriving.open("wb") as fh:  # an export still being written
        fh.write(raw[: len(raw) // 2])
        fh.flush()
        time.sleep(1.5)
        fh.write(raw[len(raw) // 2 :])
    (folder / "broken.fcs").write_bytes(b"FCS3.1 garbage that never becomes a file")
    _, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err.decode()
    store = Store(db)
    snapshot = store.snapshot()
    assert len(snapshot["files"]) == 1
    [(_, reason)] = snapshot["quarantine"]
    assert "truncated" in reason
    assert all(source.name not in q["path"] for q in store.quarantined())
    assert len(snapshot["gatings"]) == 1
    store.close()


@pytest.mark.slow
def test_detection_limits_and_the_below_lod_interval_are_options_kept_with_the_run(tmp_path):
    """`run --lod-events/--lloq-events` set the limits every concentration is judged by, and
    `kinetics --below-lod-interval exact` gives a below-LOD count its exact Poisson interval."""
    import pandas as pd

    batch, db = _batch(tmp_path / "batch"), f"sqlite:///{tmp_path / 'store.db'}"
    limits = ("--lod-events", "40", "--lloq-events", "100")
    manifest = ("--manifest", str(FIXTURE_COHORT / "manifest.csv"))
    result = runner.invoke(app, _run_args(batch, db, tmp_path / "a", *manifest, *limits))
    assert result.exit_code == 0, result.output
    strict = pd.read_csv(tmp_path / "a" / "timepoints.csv")
    result = runner.invoke(app, ["kinetics", "--db", db, "--out", str(tmp_path / "b"),
                                 "--below-lod-interval", "exact"])  # fmt: skip
    assert result.exit_code == 0, result.output
    exact = pd.read_csv(tmp_path / "b" / "timepoints.csv")
    key = ["patient", "timepoint", "tube", "population"]
    both = strict.merge(exact, on=key, suffixes=("_strict", "_exact")).dropna(
        subset=["cells_per_ul_strict", "cells_per_ul_exact"]
    )
    assert len(both)
    # limits scale with the events asked for: 40 vs the default 20
    ratio = both.lod_cells_per_ul_strict / both.lod_cells_per_ul_exact
    assert ratio.round(9).eq(2.0).all()
    assert (both.below_lod_strict == (both.events_strict < 40)).all()
    assert (both.below_lod_exact == (both.events_exact < 20)).all()
    rare = both[both.below_lod_strict & (both.events_strict > 0)]
    assert len(rare) and (rare.cells_ci_low_strict == 0).all()
    rare = both[both.below_lod_exact & (both.events_exact > 0)]
    assert len(rare) and (rare.cells_ci_low_exact > 0).all()
    from sqlalchemy import select

    from cartflow.store import Run

    store = Store(db)
    try:
        with store.transaction() as session:
            recorded = {r.command: r.parameters for r in session.scalars(select(Run))}
    finally:
        store.close()
    assert recorded["run"]["counts"]["lod_events"] == 40
    assert recorded["kinetics"]["counts"]["below_lod_from_zero"] is False
    bad = runner.invoke(app, ["kinetics", "--db", db, "--out", str(tmp_path / "c"),
                              "--lod-events", "60"])  # fmt: skip
    assert bad.exit_code != 0 and "--lloq-events 50 is below --lod-events 60" in bad.output


@pytest.mark.slow
def test_a_batch_ingested_under_another_path_is_still_gated(tmp_path, monkeypatch):
    """Ingest, then run the same folder named another way: its files are copies of stored
    content under new names, and the run gates them (it gated nothing)."""
    batch = _batch(tmp_path / "batch", prefixes=("CART-001 D7_",))
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    manifest = ("--manifest", str(FIXTURE_COHORT / "manifest.csv"))
    ingested = runner.invoke(app, ["ingest", str(batch), "--db", db, *manifest])
    assert ingested.exit_code == 0, ingested.output
    monkeypatch.chdir(tmp_path)
    args = _run_args(Path("batch"), db, tmp_path / "out", *manifest)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"gate: {len(list(batch.glob('*.fcs')))} gated" in result.output


def test_a_copy_that_stalled_is_taken_again_once_it_is_finished(tmp_path):
    """An unreadable file is handed over (to be quarantined) after it stops changing; when
    the copy then finishes, the complete file is handed over again."""
    from cartflow.run.batch import ArrivalWatch

    source = sorted(FIXTURE_COHORT.glob("*memory*.fcs"))[0]
    folder = tmp_path / "incoming"
    folder.mkdir()
    target = folder / source.name
    whole = source.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    watch = ArrivalWatch(folder, settle=2)
    looks = [watch.complete() for _ in range(5)]
    # seen, hashed, same hash (unreadable: wait), still so: handed over once
    assert looks == [[], [], [], [target], []]
    target.write_bytes(whole)  # the copy finishes
    assert watch.complete() == []  # it changed: wait for it to hold still
    assert watch.complete() == []  # hashed
    assert watch.complete() == [target]  # same content, readable
    assert watch.complete() == []


def _kill_workers(parent: subprocess.Popen, count: int, deadline: float) -> list[int]:
    """SIGKILL the first ``count`` worker processes the run starts, as the OOM killer would."""
    import psutil

    killed: list[int] = []
    while len(killed) < count and time.monotonic() < deadline and parent.poll() is None:
        try:
            children = psutil.Process(parent.pid).children()
        except psutil.NoSuchProcess:
            break
        for child in children:
            if child.pid not in killed and len(killed) < count:
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
        time.sleep(0.01)
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("kills", [1, 2])
def test_a_killed_worker_is_tried_again_then_quarantined(tmp_path, kills):
    """A worker killed once costs nothing (its file is gated again); killed again, its file
    is quarantined with the reason and the run still finishes, exit 2."""
    batch = _batch(tmp_path / "batch", prefixes=("CART-001 D7_",), tubes=("memory",))
    path, out = tmp_path / "store.sqlite", tmp_path / "out"
    process = subprocess.Popen(
        _cli(*_run_args(batch, f"sqlite:///{path}", out, "--workers", "2")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_workers(process, kills, time.monotonic() + 120)
    _, errors = process.communicate(timeout=300)
    assert len(killed) == kills
    statuses = dict(_rows(path, "select command, status from runs"))
    assert statuses["run"] == "finished"
    quarantined = _rows(path, "select error_kind, reason from quarantine")
    if kills == 1:
        assert process.returncode == 0, errors
        assert quarantined == [] and _count(path, "gatings") == 1
        return
    assert process.returncode == 2, errors
    [(kind, reason)] = quarantined
    assert kind == "worker" and "killed by SIGKILL" in reason and "2 times" in reason
    assert _count(path, "gatings") == 0  # not gated: a later run tries it again
    assert "killed by SIGKILL" in (out / "quarantine" / "quarantine.csv").read_text()


def test_killing_the_run_kills_its_workers(tmp_path):
    import psutil

    batch = _batch(tmp_path / "batch")
    process = subprocess.Popen(
        _cli(*_run_args(batch, f"sqlite:///{tmp_path / 's.sqlite'}", tmp_path / "out",
                        "--workers", "2")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    workers: list = []
    while not workers and time.monotonic() < deadline and process.poll() is None:
        workers = psutil.Process(process.pid).children()
        time.sleep(0.01)
    assert workers, "the run started no worker"
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive


@pytest.mark.slow
def test_watch_ends_with_one_complete_sample_when_a_copy_fills_data_late(tmp_path):
    """A copier that sets the full size first and fills the bytes in later, with pauses:
    no partial content is stored as a sample; the finished file is, once."""
    folder, db = tmp_path / "exports", tmp_path / "watch.sqlite"
    folder.mkdir()
    source = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    raw = source.read_bytes()
    watcher = subprocess.Popen(
        _cli("watch", str(folder), "--db", f"sqlite:///{db}", "--out", str(tmp_path / "out"),
             "--no-report", "--interval", "0.3", "--cycles", "40"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    target = folder / source.name
    with target.open("wb") as fh:
        fh.truncate(len(raw))  # full size at once, all zeros
        fh.flush()
        step = len(raw) // 4
        for start in range(0, len(raw), step):
            time.sleep(2.0)  # longer than the watch waits before quarantining
            fh.seek(start)
            fh.write(raw[start : start + step])
            fh.flush()
    _, err = watcher.communicate(timeout=300)
    assert watcher.returncode in (0, 2), err.decode()
    import hashlib

    [(sha,)] = _rows(db, "select sha256 from files")
    assert sha == hashlib.sha256(raw).hexdigest()
    assert _count(db, "samples") == 1 and _count(db, "gatings") == 1


def test_a_batch_matches_each_file_to_its_panel_once(tmp_path, monkeypatch):
    """In one in-process run, each file is matched to its panel at ingest and gated with that
    panel (counts as a fresh match gives); a changed panel matches, and re-gates, exactly
    the files of its tube again."""
    import cartflow.panels
    import cartflow.panels.draft
    import cartflow.pipeline.gate
    import cartflow.run.ingest
    from cartflow.panels.config import load_config

    batch = _batch(tmp_path / "batch", ("CART-001 D11_", "CART-001 D14_"))
    config, db = tmp_path / "lab", f"sqlite:///{tmp_path / 'store.sqlite'}"
    assert runner.invoke(app, ["config", "init", str(config)]).exit_code == 0
    matched: list[str] = []
    real = cartflow.panels.match_panel

    def spy(source, *args, **kwargs):
        matched.append(Path(source).name)
        return real(source, *args, **kwargs)

    for module in (cartflow.panels, cartflow.panels.draft, cartflow.pipeline.gate,
                   cartflow.run.ingest):  # fmt: skip
        monkeypatch.setattr(module, "match_panel", spy)

    def run() -> list[str]:
        matched.clear()
        result = runner.invoke(app, _run_args(batch, db, tmp_path / "out", "--workers", "1",
                                              "--config", str(config)))  # fmt: skip
        assert result.exit_code == 0, result.output
        return sorted(matched)

    names = sorted(p.name for p in batch.glob("*.fcs"))
    assert len(names) == 4
    assert run() == names  # once each, at ingest; gating used the stored panel
    store = Store(db)
    counts: dict[str, dict[str, int]] = {}
    for row in store.latest_counts():
        counts.setdefault(Path(row.file).name, {})[row.population] = row.count
    gatings = len(store.snapshot()["gatings"])
    assert sorted(counts) == names and gatings == 4
    lab = load_config(config)
    for path in sorted(batch.glob("*.fcs")):  # a fresh match gives the stored counts
        assert cartflow.pipeline.gate.gate_file(path, config=lab).counts() == counts[path.name]
    assert run() == []  # nothing new: nothing read, matched or gated

    panel = config / "bcell-lyric.yaml"
    text = panel.read_text(encoding="utf-8")
    assert "description: B-cell" in text
    panel.write_text(text.replace("description: B-cell", "description: Our B-cell", 1),
                     encoding="utf-8")  # fmt: skip
    assert run() == [n for n in names if "BCELL" in n]  # matched again, as gated again
    assert len(store.snapshot()["gatings"]) == gatings + 2
    # a marker's new spelling re-gates its tube, each file matched again (its labels may now
    # resolve otherwise); a later re-gate of that tube keeps matching again
    markers = config / "markers.yaml"
    text = markers.read_text(encoding="utf-8")
    assert "CD27: [CD27]" in text
    markers.write_text(text.replace("CD27: [CD27]", "CD27: [CD27, TNFRSF7]", 1), encoding="utf-8")
    memory = [n for n in names if "memory" in n]
    assert len(memory) == 2 and run() == memory
    assert len(store.snapshot()["gatings"]) == gatings + 4
    store.close()


def test_the_stored_panel_is_used_only_while_the_configuration_holds_it_unchanged():
    from dataclasses import replace

    from cartflow.panels.config import DEFAULT_CONFIG_DIR, load_config

    lab = load_config(DEFAULT_CONFIG_DIR)
    panel = next(p for p in lab.panels if p.id == "memory-lyric")
    assert lab.stored_panel(panel.id, panel.sha256, "memory") is panel
    assert lab.stored_panel("memory-gone", panel.sha256, "memory") is None  # match again
    assert lab.stored_panel(panel.id, "0" * 64, "memory") is None  # changed since
    assert lab.stored_panel(panel.id, panel.sha256, "bcell") is None
    changed = replace(lab, panels=tuple(replace(p, sha256="1" * 64) if p is panel else p
                                        for p in lab.panels))  # fmt: skip
    assert changed.stored_panel(panel.id, panel.sha256, "memory") is None
