"""A cut far from the same cut on the batch's other samples is flagged for review, with the
evidence: on real files gated as one batch, and on a simulated batch run through the pipeline."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cartflow.gating.cuts import CUT_METHODS
from cartflow.gating.deviation import DeviationSettings, cut_deviations, harmless
from tests.conftest import SHARED, require_shared

ACTIVATION = SHARED / "real-data" / "activation"


@pytest.fixture(scope="module")
def activation() -> dict[int, dict]:
    """Each Activation file's placed cut decisions, every file gated on its own (one batch)."""
    from cartflow.panels.config import load_config
    from cartflow.pipeline.expert_accuracy import FILES, write_lab_config
    from cartflow.pipeline.gate import gate_file

    require_shared(ACTIVATION)
    cuts = {}
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(write_lab_config(Path(folder) / "lab", ACTIVATION))
        for n in FILES:
            gated = gate_file(ACTIVATION / f"Activation_{n}.fcs", tube="activation", config=config)
            cuts[n] = {
                name: d
                for name, d in gated.placed.decisions.items()
                if d.method in CUT_METHODS and d.method != "fixed" and not d.fallback
            }
    return cuts


@pytest.fixture(scope="module")
def activation_cuts(activation) -> dict[int, dict[str, float]]:
    return {n: {name: d.value for name, d in cuts.items()} for n, cuts in activation.items()}


def test_the_activation_files_as_one_batch_raise_no_outlier(activation_cuts):
    assert cut_deviations(activation_cuts) == []


def test_a_cut_forced_far_from_the_batch_is_flagged_with_its_evidence(activation, activation_cuts):
    forced = {n: dict(cuts) for n, cuts in activation_cuts.items()}
    forced[5]["Va2"] = 0.74  # within the template's bounds, far above every other file's
    others = [cuts["Va2"] for n, cuts in forced.items() if n != 5 and "Va2" in cuts]
    (found,) = cut_deviations(forced)
    assert (found.sample, found.cut, found.value) == (5, "Va2", 0.74)
    assert found.others == len(others)
    assert min(others) <= found.median <= max(others)
    assert found.spread >= DeviationSettings().min_spread
    assert found.distance > DeviationSettings().limit
    assert found.flag.startswith(f"batch_outlier:Va2 (0.74; median of {len(others)} others")
    own = activation[5]["Va2"]  # the T cells lie between 0.74 and the batch's cut
    grid, density = own.evidence["grid"], own.evidence["density"]
    assert not harmless(grid, density, own.events, 0.74, found.median)
    assert harmless(grid, density, own.events, own.value, own.value + 0.002)


def test_too_few_samples_or_a_tiny_move_give_no_verdict():
    few = {s: {"CD3": 0.40} for s in range(4)} | {5: {"CD3": 0.90}}
    assert cut_deviations(few) == []  # five others needed: one more gives a verdict
    assert [d.sample for d in cut_deviations(few | {6: {"CD3": 0.40}})] == [5]
    identical = {s: {"CD3": 0.40} for s in range(10)} | {10: {"CD3": 0.45}}
    assert cut_deviations(identical) == []  # within five floors (0.02) of the others


def test_a_far_move_across_an_empty_gap_is_harmless_one_into_a_mode_is_not():
    """Two populations (9,800 and 200 events) with an empty gap between: a cut anywhere in
    the gap gives the same counts; one moved into the small population changes it."""
    grid = np.linspace(0, 1, 201)
    density = 0.98 * np.exp(-0.5 * ((grid - 0.2) / 0.04) ** 2)
    density += 0.02 * np.exp(-0.5 * ((grid - 0.85) / 0.03) ** 2)
    assert harmless(grid, density, 10_000, 0.45, 0.60)
    assert not harmless(grid, density, 10_000, 0.45, 0.85)
    assert not harmless(grid, density, 10_000, 0.60, 0.25)


def test_a_simulated_batch_stores_the_flag_of_a_cut_forced_far(tmp_path):
    from cartflow.run.batch import RunSettings, run_batch
    from cartflow.run.batch_outliers import flag_batch_outliers
    from cartflow.simulate import SimulationConfig, simulate_cohort
    from cartflow.store import Store

    cohort = simulate_cohort(
        tmp_path / "cohort",
        SimulationConfig(patients=1, seed=5, events=5000, tubes=("function",)),
        workers=1,
    )
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    summary = run_batch(cohort.out_dir, store, RunSettings(out=tmp_path / "out", html_report=False))
    works = list(summary.gated)
    assert len(works) == len(cohort.files) >= 6
    stored = store.sample_flags()
    for work in works:  # what the run raised against its batch is stored with the sample
        raised = [f for f in work.flags if f.startswith("batch_outlier:")]
        assert set(raised) <= set(stored.get(work.sample_id, ())), work.path.name
    first = works[0]
    moved = tuple(replace(g, value=g.value + 0.3) if g.gate == "CD3" else g for g in first.gates)
    flagged = flag_batch_outliers(store, [replace(first, gates=moved), *works[1:]])
    cd3 = {w.sample_id: [f for f in w.flags if f.startswith("batch_outlier:CD3 ")] for w in flagged}
    assert len(cd3[first.sample_id]) == 1 and "median of" in cd3[first.sample_id][0]
    assert not any(cd3[w.sample_id] for w in works[1:])
    assert cd3[first.sample_id][0] in store.sample_flags()[first.sample_id]
    store.close()
