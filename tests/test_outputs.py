"""Outputs under attack and accident: formula cells, markup in data, PHI planted in keywords,
full disks, foreign and stale output folders. One hostile cohort run serves them all."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.io.outputs import OutputError, neutralise, neutralise_frame, write_csv
from tests.conftest import FIXTURE_COHORT
from tests.fcs_mutate import build_fcs, split_fcs

runner = CliRunner()
FORMULA_PATIENT = "=cmd|' /C calc'!A0"
MARKUP_PATIENT = "[/]CART-002"
PATIENTS = {"CART-001": FORMULA_PATIENT, "CART-002": MARKUP_PATIENT, "CART-003": "@CART-3"}
PHI = ("MUSTERMANN", "Erika", "1961-07-14", "FC24-99817", "Station 4b")
HYPERLINK = '=HYPERLINK("http://evil.example/x","click")'
DAYS = ("D7", "D14", "D28")


def _plant(source: Path, target: Path, patient: str) -> None:
    """A cohort file renamed so that its name starts with '=', its patient replaced and PHI
    planted in its keywords."""
    version, keywords, data, delimiter = split_fcs(source.read_bytes())
    keywords |= {
        "PATIENT ID": patient,
        "$FIL": target.name,
        "$SRC": f"{PHI[0]}^{PHI[1]} {PHI[2]}",
        "PATIENT NAME": f"{PHI[0]}, {PHI[1]}",
        "DATE OF BIRTH": PHI[2],
        "$COM": f"{PHI[4]}, Dr. {PHI[0]}",
        "SAMPLE ID": PHI[3],
    }
    target.write_bytes(build_fcs(version, keywords, data, delimiter))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    batch = root / "batch"
    batch.mkdir()
    rows = pd.read_csv(FIXTURE_COHORT / "manifest.csv", dtype=str).set_index("file")
    manifest = ["file,patient,timepoint,tube,blood_volume_ul,beads_per_tube,sample_date"]
    for source in sorted(FIXTURE_COHORT.glob("*memory*.fcs")):
        row = rows.loc[source.name]
        if row["timepoint"] in DAYS:
            name = f"={row['timepoint']} p{row['patient'][-3:]}_{source.name.split('_')[-1]}"
            _plant(source, batch / name, PATIENTS[row["patient"]])
            manifest.append(",".join([name, PATIENTS[row["patient"]], row["timepoint"], "memory",
                                      row["blood_volume_ul"], row["beads_per_tube"],
                                      row["sample_date"]]))  # fmt: skip
    (root / "manifest.csv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    odd = FIXTURE_COHORT / "CART-001 D21_CAR-T memory_013.fcs"
    version, keywords, data, delimiter = split_fcs(odd.read_bytes())
    keywords |= {"TIMEPOINT": "[/]", "PATIENT ID": "CART-9", "$FIL": "[bold]odd.fcs"}
    (batch / "[bold]odd.fcs").write_bytes(build_fcs(version, keywords, data, delimiter))
    (batch / "=broken.fcs").write_bytes(b"FCS3.1 not really")
    clinical = pd.read_csv(FIXTURE_COHORT / "clinical.csv", dtype=str, keep_default_na=False)
    clinical["patient"] = clinical["patient"].map(PATIENTS)
    clinical["bridging"] = HYPERLINK
    clinical.to_csv(root / "clinical.csv", index=False)
    out, db = root / "out", root / "store.sqlite"
    args = ["--workers", "1", "--clinical", str(root / "clinical.csv")]
    args += ["--manifest", str(root / "manifest.csv")]
    result = runner.invoke(app, ["run", str(batch), "--db", str(db), "--out", str(out), *args])
    exported = runner.invoke(app, ["export", "--db", str(db), "--out", str(root / "export")])
    return {"root": root, "batch": batch, "out": out, "db": db, "run": result,
            "export": exported}  # fmt: skip


def _csv_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.csv"))


@pytest.mark.slow
def test_every_csv_writer_neutralises_formula_cells(hostile):
    assert hostile["run"].exit_code == 2, hostile["run"].output
    assert hostile["export"].exit_code == 0, hostile["export"].output
    written = {p.relative_to(hostile["root"]).as_posix() for p in _csv_files(hostile["root"])}
    for expected in ("out/timepoints.csv", "out/kinetics.csv", "out/quarantine/quarantine.csv",
                     "out/outcomes/patients.csv", "out/outcomes/cox.csv",
                     "export/samples.csv", "export/timepoints.csv", "export/kinetics.csv",
                     "export/data_dictionary.csv"):  # fmt: skip
        assert expected in written, sorted(written)
    seen = set()
    for path in _csv_files(hostile["out"]) + _csv_files(hostile["root"] / "export"):
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    assert neutralise(cell) == cell, f"{path}: {cell!r}"
                    seen.update(c for c in (FORMULA_PATIENT, HYPERLINK) if cell == "'" + c)
                    if cell.startswith("'=D") and cell.endswith(".fcs"):
                        seen.add("file name")
    assert seen == {FORMULA_PATIENT, HYPERLINK, "file name"}


def test_neutralising_leaves_numbers_alone():
    frame = pd.DataFrame({"x": [-0.5, 1.0], "text": ["-0.5", "-1+A1"], "n": [-3, 4]})
    safe = neutralise_frame(frame)
    assert safe["x"].tolist() == [-0.5, 1.0] and safe["n"].tolist() == [-3, 4]
    assert safe["text"].tolist() == ["-0.5", "'-1+A1"]
    assert [neutralise(c) for c in ("\tx", "\rx", "@x", "+x", "ok")] == [
        "'\tx", "'\rx", "'@x", "'+x", "ok"
    ]


def test_markup_in_data_is_printed_literally(hostile, tmp_path):
    output = hostile["run"].output
    assert "quarantined: [bold]odd.fcs: not listed in manifest" in output
    assert "quarantined: =broken.fcs" in output  # the list goes on after it
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(hostile["batch"] / "[bold]odd.fcs", alone)
    ingested = runner.invoke(app, ["ingest", str(alone), "--db", str(tmp_path / "s.sqlite"),
                                   "--out", str(tmp_path / "out")])  # fmt: skip
    assert ingested.exit_code == 2, ingested.output
    assert "[bold]odd.fcs: timepoint label '[/]' is not understood" in ingested.output
    db = hostile["db"]
    with sqlite3.connect(db) as conn:
        (sample,) = conn.execute(
            "select s.id from samples s where s.patient = ? limit 1", (MARKUP_PATIENT,)
        ).fetchone()
    shown = runner.invoke(app, ["inspect", "--sample", str(sample), "--db", str(db)])
    assert shown.exit_code == 0 and f": {MARKUP_PATIENT} D" in shown.output
    odd = hostile["root"] / "cyt.fcs"
    version, keywords, data, delimiter = split_fcs(
        (FIXTURE_COHORT / "CART-001 D7_CAR-T memory_004.fcs").read_bytes()
    )
    odd.write_bytes(build_fcs(version, keywords | {"$CYT": "[/bold]"}, data, delimiter))
    inspected = runner.invoke(app, ["inspect", str(odd)])
    assert inspected.exit_code == 0 and "cytometer [/bold]" in inspected.output


def _all_output_text(hostile) -> dict[Path, bytes]:
    texts = {}
    for folder in (hostile["out"], hostile["root"] / "export"):
        for path in folder.rglob("*"):
            if path.is_file():
                texts[path] = path.read_bytes()
    dump = subprocess.run(["sqlite3", str(hostile["db"]), ".dump"], capture_output=True,
                          check=False)  # fmt: skip
    if dump.returncode == 0:
        texts[hostile["db"]] = dump.stdout
    else:  # no sqlite3 tool: the raw database and its journal
        for path in hostile["db"].parent.glob(hostile["db"].name + "*"):
            texts[path] = path.read_bytes()
    return texts


def test_phi_planted_in_keywords_is_in_no_output_nor_the_store(hostile):
    texts = _all_output_text(hostile)
    names = [p.name.encode() for p in hostile["batch"].iterdir()]
    assert any(p.suffix == ".png" for p in texts) and any(p.suffix == ".html" for p in texts)
    for path, data in texts.items():
        for secret in PHI:
            assert secret.encode() not in data, f"{secret!r} in {path}"
        if path.suffix in (".html", ".png"):  # the report names no file unless asked
            for name in names:
                assert name not in data, (name, path)


def test_pseudonymised_export_drops_hashes_and_shifts_dates(hostile, monkeypatch):
    monkeypatch.setenv("CARTFLOW_PSEUDONYM_KEY", "k" * 32)
    target = hostile["root"] / "pseudo"
    result = runner.invoke(app, ["export", "--db", str(hostile["db"]), "--out", str(target),
                                 "--pseudonymise"])  # fmt: skip
    assert result.exit_code == 0, result.output
    plain = pd.read_csv(hostile["root"] / "export" / "samples.csv", dtype=str)
    pseudo = pd.read_csv(target / "samples.csv", dtype=str)
    assert "sha256" not in pseudo and "file" not in pseudo
    for path in target.glob("*.csv"):
        text = path.read_text(encoding="utf-8")
        for sha in plain["sha256"]:
            assert sha not in text, path
    plain_dates = pd.to_datetime(plain.sort_values("sample_id")["sample_date"])
    pseudo_dates = pd.to_datetime(pseudo.sort_values("sample_id")["sample_date"])
    assert (plain_dates.to_numpy() != pseudo_dates.to_numpy()).all()
    plain["shift"] = (pseudo_dates - plain_dates).dt.days.values
    assert plain.groupby("patient")["shift"].nunique().eq(1).all()  # intervals kept


def test_a_full_disk_leaves_no_partial_file(hostile, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (disk / ".cartflow-out").write_text("cartflow output folder\n")
        (disk / "filler").write_bytes(b"\0" * 40_000)
        result = runner.invoke(app, ["kinetics", "--db", str(hostile["db"]), "--out", str(disk)])
        assert result.exit_code == 1
        assert f"{disk / 'timepoints.csv'}: cannot be written: No space left" in result.output
        assert sorted(p.name for p in disk.iterdir()) == [".cartflow-out", "filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


class _Fails:
    """A cell whose text cannot be made: the write stops part-way."""

    def __str__(self) -> str:
        raise RuntimeError("stopped mid-write")


def test_a_write_stopped_part_way_keeps_the_previous_file(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")
    frame = pd.DataFrame({"a": ["x" * 1000] * 5000 + [_Fails()]})
    with pytest.raises(RuntimeError, match="stopped mid-write"):
        write_csv(frame, target)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    (tmp_path / "plain").write_text("a file, not a folder\n")
    with pytest.raises(OutputError, match=r"plain/t\.csv: cannot be written"):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "plain" / "t.csv")


def test_out_refuses_a_folder_of_unknown_files_unless_forced(hostile, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "timepoints.csv").write_text("my own work\n")
    args = ["kinetics", "--db", str(hostile["db"]), "--out", str(foreign)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "holds files cartflow did not write" in refused.output
    assert (foreign / "timepoints.csv").read_text() == "my own work\n"
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # marked as cartflow's now


def test_stale_outputs_and_fixed_files_leave(hostile, tmp_path):
    out = hostile["out"]
    stale = out / "outcomes" / "from_an_old_run.csv"
    stale.write_text("old\n")
    batch = hostile["batch"]
    (batch / "=broken.fcs").unlink()  # the bad file removed, the odd one listed
    manifest = hostile["root"] / "manifest.csv"
    with manifest.open("a", encoding="utf-8") as fh:
        fh.write("[bold]odd.fcs,CART-9,D21,memory,,,\n")
    args = ["--workers", "1", "--no-report", "--manifest", str(manifest)]
    again = runner.invoke(app, ["run", str(batch), "--db", str(hostile["db"]), "--out", str(out),
                                *args])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert not (out / "quarantine" / "quarantine.csv").exists()
    assert not (out / "outcomes").exists()  # no clinical table this time: none left over
    shutil.rmtree(hostile["root"] / "pseudo", ignore_errors=True)
