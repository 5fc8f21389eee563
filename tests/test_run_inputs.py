"""A run reads each of its input tables once (clinical table, haematology counts, analysis
settings, ALL-Hematotox table) and hands the table as read down to its steps."""

from __future__ import annotations

import builtins
import os
import pathlib
import shutil
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.pipeline.clinical import load_clinical
from cartflow.pipeline.clinical.hematotox import HEMATOTOX_PATH
from cartflow.run.batch import read_run_inputs
from tests.conftest import FIXTURE_COHORT

runner = CliRunner()
FILES = ("CART-001 D7_", "CART-001 D11_", "CART-001 D14_", "CART-003 D11_")


def _count_opens(monkeypatch, paths: list[Path]) -> Counter:
    """Count every opening of ``paths`` by name and mode (text or bytes); the files are still
    read for real (a spy on ``open`` and ``Path.open``, the ways Python code opens a file)."""
    watched = {p.resolve() for p in paths}
    opened: Counter = Counter()
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def note(file, mode: str) -> None:
        if isinstance(file, str | os.PathLike) and Path(file).resolve() in watched:
            opened[Path(file).name, "bytes" if "b" in mode else "text"] += 1

    def spy_open(file, mode="r", *args, **kwargs):
        note(file, mode)
        return real_open(file, mode, *args, **kwargs)

    def spy_path_open(self, mode="r", *args, **kwargs):
        note(self, mode)
        return real_path_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pathlib.Path, "open", spy_path_open)
    return opened


def test_a_run_reads_each_input_table_once(tmp_path, monkeypatch):
    batch = tmp_path / "batch"
    batch.mkdir()
    for source in sorted(FIXTURE_COHORT.glob("*.fcs")):
        if source.name.startswith(FILES) and ("memory" in source.name or "BCELL" in source.name):
            shutil.copy(source, batch / source.name)
    clinical = tmp_path / "clinical.csv"
    shutil.copy(FIXTURE_COHORT / "clinical.csv", clinical)
    haematology = tmp_path / "haematology.csv"
    haematology.write_text("patient,date,alc_per_ul\nCART-001,2024-02-29,1500\n")
    analysis = tmp_path / "analysis.yaml"
    analysis.write_text("figures: false\n")
    out = tmp_path / "out"
    opened = _count_opens(monkeypatch, [clinical, haematology, analysis, HEMATOTOX_PATH])
    result = runner.invoke(
        app,
        ["run", str(batch), "--db", str(tmp_path / "store.sqlite"), "--out", str(out),
         "--clinical", str(clinical), "--haematology", str(haematology),
         "--analysis", str(analysis)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "outcomes:" in result.output and "not computed" not in result.output
    assert (out / "outcomes" / "outcomes.json").is_file()
    assert (out / "report" / "index.html").is_file()
    assert opened == {  # before each was read where it was used: clinical.csv five times
        ("clinical.csv", "bytes"): 1,
        ("haematology.csv", "text"): 1,
        ("analysis.yaml", "text"): 1,
        ("hematotox.yaml", "text"): 1,  # the shipped configuration's table, when checked
        ("hematotox.yaml", "bytes"): 1,  # the configuration's content hash (provenance)
    }


def test_the_run_inputs_hold_the_tables_as_read_and_a_bad_clinical_table_its_problems(
    tmp_path,
):
    clinical = FIXTURE_COHORT / "clinical.csv"
    inputs = read_run_inputs(clinical, None)
    assert inputs.clinical is not None and inputs.clinical_error is None
    assert inputs.clinical.patients == load_clinical(clinical).patients
    assert inputs.haematology is None
    bad = tmp_path / "bad.csv"
    bad.write_text(clinical.read_text().replace("CART-001,2024-02-22", "CART-001,22.2.2O24"))
    broken = read_run_inputs(bad, None)
    assert broken.clinical is None
    assert broken.clinical_error is not None and str(bad) in broken.clinical_error
    assert "row 1" in broken.clinical_error and "infusion_date" in broken.clinical_error
