"""The command line: inspect never shows a traceback; ingest exit codes and summaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from tests.conftest import FIXTURE_COHORT, QUIRKS, corpus_files, require_shared

runner = CliRunner()


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_inspect_prints_a_result_or_one_line_error(path):
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = result.output
    assert "Traceback" not in output
    if result.exit_code == 0:
        info = json.loads(output)
        assert info["events"] >= 0
        assert len(info["channels"]) > 0
    else:
        assert result.exit_code == 1
        assert "error" in json.loads(output.split("\n}")[0] + "\n}")


def test_inspect_text_output_on_a_cohort_file():
    path = sorted(FIXTURE_COHORT.glob("*.fcs"))[0]
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "panel: " in result.output and "none" not in result.output.split("panel: ")[1][:6]
    assert "identity: patient" in result.output


def test_ingest_exit_codes(tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    for source in sorted(FIXTURE_COHORT.glob("*.fcs"))[:2]:
        shutil.copy(source, batch / source.name)
    db = f"sqlite:///{tmp_path / 'c.sqlite'}"
    out = tmp_path / "out"
    result = runner.invoke(app, ["ingest", str(batch), "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 accepted" in result.output
    assert not out.exists()  # nothing quarantined, nothing to write
    shutil.copy(require_shared(QUIRKS / "G11.fcs"), batch / "G11.fcs")
    result = runner.invoke(app, ["ingest", str(batch), "--db", db, "--out", str(out)])
    assert result.exit_code == 2
    assert "2 already known" in result.output and "1 quarantined" in result.output
    assert (out / "quarantine" / "quarantine.csv").is_file()


def test_ingest_bad_manifest_is_one_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,patient\n", encoding="utf-8")
    result = runner.invoke(app, ["ingest", str(tmp_path), "--manifest", str(manifest)])
    assert result.exit_code == 1
    assert "missing column" in result.output
    assert "Traceback" not in result.output


def test_every_command_has_help():
    for command in ("inspect", "ingest", "simulate", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.output


def test_inspect_identifies_every_fixture_file():
    import csv

    with (FIXTURE_COHORT / "manifest.csv").open(encoding="utf-8") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    for name, row in rows.items():
        result = runner.invoke(app, ["inspect", str(FIXTURE_COHORT / name), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert info["panel"] == f"{row['tube']}-lyric"
        identity = info["identity"]
        assert (identity["patient"], identity["timepoint"]) == (row["patient"], row["timepoint"])


UNWRITABLE = {  # {out}: a path below a file, where no folder can be made (not even by root)
    "run": ["run", "{batch}", "--db", "{db}", "--out", "{out}"],
    "ingest": ["ingest", "{batch}", "--db", "{db}", "--out", "{out}"],
    "watch": ["watch", "{batch}", "--db", "{db}", "--out", "{out}", "--cycles", "1"],
    "kinetics": ["kinetics", "--db", "{db}", "--out", "{out}"],
    "outcomes": ["outcomes", "--clinical", "c.csv", "--db", "{db}", "--out", "{out}"],
    "export": ["export", "--db", "{db}", "--out", "{out}"],
    "simulate": ["simulate", "{out}", "--patients", "1", "--seed", "1"],
    "demo": ["demo", "--out", "{out}"],
    "gate --plots": ["gate", "{fcs}", "--plots", "{out}"],
    "gate --membership": ["gate", "{fcs}", "--membership", "{out}/m.parquet"],
    "pool --out": ["pool", "{fcs}", "--cut", "CAR", "--out", "{out}/cuts.json"],
}


@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_an_output_that_cannot_be_written_fails_first_in_one_line(tmp_path, command):
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way", encoding="utf-8")
    places = {
        "out": str(a_file / "out"),
        "batch": str(tmp_path),
        "db": f"sqlite:///{tmp_path / 'store.sqlite'}",
        "fcs": str(sorted(FIXTURE_COHORT.glob("*memory*.fcs"))[0]),
    }
    args = [arg.format(**places) for arg in UNWRITABLE[command]]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    named = next(arg for arg in args if arg.startswith(places["out"]))
    assert f"{named}: cannot be written" in result.output
    assert not (tmp_path / "store.sqlite").exists()  # failed before any work


@pytest.mark.parametrize(
    ("option", "made", "problem"),
    [
        ("--plots", "file", "is a file, not a folder"),
        ("--membership", "folder", "is a folder, not a file"),
    ],
)
def test_an_output_of_the_wrong_kind_is_named(tmp_path, option, made, problem):
    target = tmp_path / "taken"
    if made == "folder":
        target.mkdir()
    else:
        target.write_text("x", encoding="utf-8")
    fcs = sorted(FIXTURE_COHORT.glob("*memory*.fcs"))[0]
    result = runner.invoke(app, ["gate", str(fcs), option, str(target)])
    assert result.exit_code == 1, result.output
    assert f"{target}: {problem}" in result.output


def test_simulate_never_writes_over_existing_files(tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "manifest.csv").write_text("a lab's own manifest\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", str(batch), "--patients", "1", "--events", "600"])
    assert result.exit_code == 1
    assert f"{batch}: is not empty" in result.output
    assert (batch / "manifest.csv").read_text(encoding="utf-8") == "a lab's own manifest\n"
    too_many = runner.invoke(app, ["simulate", str(tmp_path / "new"), "--events", "100000000000"])
    assert too_many.exit_code == 2 and "--events" in too_many.output


def test_out_of_range_numbers_are_usage_errors_naming_the_option(tmp_path):
    for args, option in (
        (["inspect", "--sample", "99999999999999999999"], "--sample"),
        (["simulate", str(tmp_path / "s"), "--seed", "-1"], "--seed"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and option in result.output, result.output


def test_a_folder_given_as_the_store_is_named_as_such(tmp_path):
    from cartflow.io.errors import StoreError
    from cartflow.store import Store

    with pytest.raises(StoreError, match="is a folder, not a store file"):
        Store(tmp_path)


def test_run_checks_its_scheduler_and_haematology_table_before_any_work(tmp_path):
    db = tmp_path / "store.sqlite"
    base = ["run", str(FIXTURE_COHORT), "--db", f"sqlite:///{db}", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*base, "--scheduler", "bogus"])
    assert result.exit_code == 1 and "bogus: no Dask scheduler answers there" in result.output
    table = tmp_path / "haematology.csv"
    table.write_text("patient,date,alc_per_ul\nP1,2025-03-09,abc\n", encoding="utf-8")
    result = runner.invoke(app, [*base, "--haematology", str(table)])
    assert result.exit_code == 1 and "column alc_per_ul" in result.output
    assert not db.exists()


def test_an_error_about_a_file_with_a_newline_in_its_name_stays_one_line(tmp_path):
    odd = tmp_path / "two\nlines.fcs"
    odd.write_text("not an FCS file", encoding="utf-8")
    command = [sys.executable, "-m", "cartflow.cli", "inspect", str(odd)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "two\\nlines.fcs" in done.stderr


@pytest.mark.parametrize("where", ["inspect", "gates"])
def test_a_fifo_is_one_line_error_without_blocking(tmp_path, where):
    import os

    os.mkfifo(fifo := tmp_path / ("pipe.fcs" if where == "inspect" else "pipe.xml"))
    fcs = sorted(FIXTURE_COHORT.glob("*memory*.fcs"))[0]
    args = ["inspect", str(fifo)]
    if where == "gates":
        args = ["gate", str(fcs), "--gates", str(fifo)]
    done = subprocess.run(  # a blocked read would hit the timeout and fail the test
        [sys.executable, "-m", "cartflow.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines() or done.stdout.strip().splitlines()
    assert str(fifo) in line and "not a regular file" in line
