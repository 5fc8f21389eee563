"""Pooled cuts: one threshold from all timepoints of a patient, used as given on each sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cartflow.cli import app
from cartflow.io.errors import CartflowError
from cartflow.pipeline.gate import GateStageError, gate_file
from cartflow.pipeline.pooling import cut_values, pool_cuts, read_cuts
from cartflow.simulate import SimulationConfig, simulate_cohort
from tests.conftest import FIXTURE_COHORT

runner = CliRunner()


@pytest.fixture(scope="module")
def patient_files(tmp_path_factory) -> list[Path]:
    """Every memory-tube timepoint of one simulated, expanding patient."""
    folder = tmp_path_factory.mktemp("pooling")
    config = SimulationConfig(patients=1, seed=8080, events=20_000, tubes=("memory",))
    return list(simulate_cohort(folder, config).files)


@pytest.fixture(scope="module")
def pooled(patient_files):
    return pool_cuts(patient_files, ["CAR", "CD27.bright"])


def test_a_pooled_cut_is_placed_once_on_every_timepoint(pooled, patient_files):
    car = pooled["CAR"]
    assert not car.fallback
    assert car.evidence["pooled_over"] == [p.name for p in patient_files]
    assert len(car.evidence["per_sample_cuts"]) == len(patient_files)
    assert all(n > 0 for n in car.evidence["pooled_events"])
    bright = pooled["CD27.bright"]
    assert bright.value > 0.5  # bright cut above the positive cut's bounds


def test_each_sample_uses_the_pooled_cut_and_counts_by_it(pooled, patient_files):
    cut = pooled["CAR"].value
    for path in patient_files:
        gated = gate_file(path, fixed_cuts=pooled)
        assert gated.placed.decisions["CAR"].value == cut
        assert gated.placed.decisions["CAR"].evidence["pooled_over"]
        values, _ = cut_values(gated, "CAR")  # CAR on the T cells of this sample
        assert gated.result.count("CAR") == int(np.count_nonzero(values >= cut))
        assert gated.result.count("CAR") + gated.result.count("CARneg") == gated.result.count("T")


def test_pooled_cut_gates_car_t_as_accurately_as_the_truth_asks(pooled, patient_files):
    judged = 0
    for path in patient_files:
        gated = gate_file(path, fixed_cuts=pooled)
        labels = pd.read_parquet(path.parent / "truth" / f"{path.stem}.parquet")["population"]
        true = labels.astype(str).str.contains("/CD3/CAR/").to_numpy()
        if true.sum() < 200:
            continue
        judged += 1
        mask = np.asarray(gated.result.mask("CAR"))
        f1 = 2 * np.count_nonzero(true & mask) / (true.sum() + mask.sum())
        assert f1 >= 0.97, (path.name, f1)
    assert judged >= 3


def test_files_of_another_template_are_refused_by_name():
    memory = sorted(FIXTURE_COHORT.glob("CART-001 D11_CAR-T memory_*.fcs"))[0]
    bcell = sorted(FIXTURE_COHORT.glob("CART-001 D11_BCELL*.fcs"))[0]
    with pytest.raises(GateStageError, match=r"BCELL.*pooled within one template"):
        pool_cuts([memory, bcell], ["CAR"])
    with pytest.raises(CartflowError, match="no cut named 'CD99'"):
        pool_cuts([memory], ["CD99"])


def test_cli_pools_then_gates_with_the_cuts(tmp_path):
    files = [str(p) for p in sorted(FIXTURE_COHORT.glob("CART-001 *memory_*.fcs"))]
    cuts = tmp_path / "cuts.json"
    result = runner.invoke(app, ["pool", *files, "--cut", "CAR", "--out", str(cuts)])
    assert result.exit_code == 0, result.output
    written = json.loads(cuts.read_text())
    assert written["CAR"]["evidence"]["pooled_over"] == [Path(f).name for f in files]
    gated = runner.invoke(app, ["gate", files[0], "--cuts", str(cuts), "--json"])
    assert gated.exit_code == 0, gated.output
    assert json.loads(gated.output)["cuts"]["CAR"] == pytest.approx(written["CAR"]["value"])


def test_a_bad_cuts_file_is_named_with_the_problem(tmp_path):
    bad = tmp_path / "cuts.json"
    bad.write_text('{"CAR": {"value": "high"}}', encoding="utf-8")
    with pytest.raises(CartflowError, match=r"cuts\.json.*'CAR' needs a finite number"):
        read_cuts(bad)
    bad.write_text("[1, 2", encoding="utf-8")
    with pytest.raises(CartflowError, match="cannot be read as a cuts file"):
        read_cuts(bad)
    with pytest.raises(CartflowError, match=r"missing\.json.*cannot be read"):
        read_cuts(tmp_path / "missing.json")
    for entry, problem in (
        ('{"value": true}', "needs a finite number"),
        ('{"value": 0.4, "evidence": "str"}', "'evidence' must be an object"),
        ('{"value": 0.4, "events": "abc"}', "'events' must be a whole number"),
    ):
        bad.write_text(f'{{"CAR": {entry}}}', encoding="utf-8")
        with pytest.raises(CartflowError, match=problem):
            read_cuts(bad)


def test_a_cut_the_file_does_not_place_is_refused(tmp_path):
    cuts = tmp_path / "cuts.json"
    cuts.write_text('{"car": {"value": 0.9}}', encoding="utf-8")  # the cut is 'CAR'
    path = sorted(FIXTURE_COHORT.glob("*memory*.fcs"))[0]
    result = runner.invoke(app, ["gate", str(path), "--cuts", str(cuts)])
    assert result.exit_code == 1
    assert "cut(s) ['car'] were not used as given on this file" in result.output
    cuts.write_text('{"singlets": {"value": 0.9}, "CAR": {"value": 0.4}}', encoding="utf-8")
    result = runner.invoke(app, ["gate", str(path), "--cuts", str(cuts)])
    assert result.exit_code == 1  # the singlet gate places its own cut
    assert "cut(s) ['singlets'] were not used as given" in result.output


def test_gates_pooled_over_one_file_are_the_files_own(patient_files):
    """Pooling a single file gives its own estimation events, so the pooled cells and
    lymphocyte gates select exactly what gating it alone selects."""
    from cartflow.pipeline.pooling import pool_gates

    path = patient_files[0]
    alone = gate_file(path)
    placements = pool_gates([path], ["cells", "lymphocytes"])
    given = gate_file(path, fixed_cuts=placements)
    assert given.counts() == alone.counts()
    assert given.placed.decisions["cells"].evidence["pooled_over"] == [path.name]


def test_gates_pooled_over_timepoints_are_the_same_on_each(patient_files):
    from cartflow.pipeline.pooling import pool_gates

    placements = pool_gates(patient_files, ["cells", "lymphocytes"])
    gate_sets = [gate_file(p, fixed_cuts=placements).placed.gate_set for p in patient_files]
    ellipses = [
        next(g for g in gates.gates if g.id == "cells::lymphocytes") for gates in gate_sets
    ]
    assert all(e.mean == ellipses[0].mean for e in ellipses)
    assert len({e.parent for e in ellipses}) == 1  # under each sample's own parent


def test_a_phenotype_is_pooled_as_cuts_not_as_a_gate(patient_files):
    from cartflow.pipeline.pooling import pool_gates

    with pytest.raises(CartflowError, match="a phenotype, not a gate"):
        pool_gates(patient_files[:1], ["T"])
    with pytest.raises(CartflowError, match="pool it first"):
        pool_gates(patient_files[:1], ["lymphocytes"])
