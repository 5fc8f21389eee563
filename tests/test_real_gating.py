"""Automated gating of real files against an expert's manual gates (the Activation set).

One template (``panels/templates/activation.yaml``, 40 lines, no coordinates of its own)
gates files 1-16 of CytoExploreR's mouse T-cell activation experiment from a lab
configuration, its viability cuts pooled over the stained files; each population is compared
event by event with the expert's FlowJo-style gates (``truth/``). File 33, a control without
the stained populations, must come out flagged for review, not confidently wrong.
"""

from __future__ import annotations

import pandas as pd
import pytest

from cartflow.pipeline.expert_accuracy import (
    JUDGED,
    SMALL,
    STAINED,
    VIABILITY,
    gate_all,
    small_counts,
    table,
    write_lab_config,
)
from tests.conftest import SHARED, require_shared

DATA = SHARED / "real-data" / "activation"
MEDIAN_F1 = 0.95
DENDRITIC_MEDIAN_F1 = 0.90
FILE_FLOOR = 0.85


@pytest.fixture(scope="module")
def results():
    require_shared(DATA)
    return gate_all(DATA)


def _stained(results) -> pd.DataFrame:
    frame = table(results)
    return frame[frame["file"] != 33]


def test_median_f1_per_population(results):
    medians = _stained(results)[list(JUDGED)].median()
    assert (medians.drop("Dendritic Cells") >= MEDIAN_F1).all(), medians.round(4).to_string()
    assert medians["Dendritic Cells"] >= DENDRITIC_MEDIAN_F1, medians.round(4).to_string()


def test_no_unflagged_file_below_the_floor_on_any_population(results):
    frame = _stained(results)
    low = frame[~frame["review"] & (frame[list(JUDGED)] < FILE_FLOOR).any(axis=1)]
    assert low.empty, low.to_string(index=False)


def test_the_unstained_control_is_flagged_for_review(results):
    control = next(r for r in results if r.number == 33)
    assert control.review, control.flags


def test_cd69_counts_mostly_hold_the_experts_in_their_interval(results):
    """CD69+ T cells (2-300 events): the expert's count inside the exact Poisson 95 %
    interval of the gated count in at least half of the stained files' rows."""
    counts = small_counts(r for r in results if r.number != 33)
    assert set(counts["population"]) == set(SMALL)
    assert counts["expert_inside"].mean() >= 0.5, counts.to_string(index=False)


DIVA = SHARED / "real-data" / "diva" / "124500.fcs"
DIVA_COUNTS = {"singlets": 17_543, "live": 12_334, "CD8+": 1_160, "CD3+ of CD8+": 1_100}
"""FACSDiva's stored counts of its own gates (P2, P3, P4, P5 in PE_2.xml)."""


def test_a_facsdiva_strategy_placed_from_the_data_matches_its_stored_counts():
    from pathlib import Path

    from cartflow.gating.auto import place
    from cartflow.gating.placer import ChannelMap
    from cartflow.gating.template import load_template
    from cartflow.io.fcs import read_fcs

    fcs = read_fcs(require_shared(DIVA))
    template = load_template(Path(__file__).parents[1] / "docs" / "examples" / "diva-cd8.yaml")
    markers = {"CD3": "PE-A", "Viab": "APC-Cy7-A", "CD8": "Pacific Orange-A"}
    channels = ChannelMap(markers, tuple(fcs.spillover.channels))
    spill = (fcs.spillover.channels, fcs.spillover.matrix)
    placed, result = place(template, fcs.events, fcs.channel_names, channels, spill)
    assert not placed.flags
    for population, stored in DIVA_COUNTS.items():
        assert abs(result.count(population) - stored) <= 0.05 * stored, (population, stored)


ARIA = SHARED / "real-data" / "flowkit" / "100715.fcs"


def test_scatter_cells_start_from_the_data_when_the_anchors_do_not_fit():
    """A FACSAria PBMC file, its SSC far below the anchors' instrument: the anchored fit kept
    4 % of the singlets (unflagged before); started from the sample's densest scatter it
    keeps most of them, and says so in its evidence."""
    from pathlib import Path

    from cartflow.gating.auto import place
    from cartflow.gating.placer import ChannelMap
    from cartflow.gating.template import load_template
    from cartflow.io.fcs import read_fcs

    fcs = read_fcs(require_shared(ARIA))
    template = load_template(Path(__file__).parents[1] / "docs" / "examples" / "scatter-cells.yaml")
    placed, result = place(template, fcs.events, fcs.channel_names, ChannelMap({}, ()))
    evidence = placed.decisions["cells"].evidence
    assert evidence["anchored_on_data"]["share"] == evidence["kept_share"] >= 0.2
    assert result.count("cells") >= 0.5 * result.count("singlets")
    assert "implausible:cells" not in placed.flags


def test_the_cli_gates_the_activation_set_with_a_lab_configuration(tmp_path, results):
    """From the command line, with a lab configuration folder (the shipped one plus the
    experiment's panel and the Activation template), the viability cuts pooled with
    ``cartflow pool``: the same counts as from Python."""
    import json

    from typer.testing import CliRunner

    from cartflow.cli import app

    runner = CliRunner()
    lab = write_lab_config(tmp_path / "lab", DATA)
    checked = runner.invoke(app, ["config", "check", str(lab)])
    assert checked.exit_code == 0, checked.output
    cuts = tmp_path / "viability.json"
    stained = [str(DATA / f"Activation_{n}.fcs") for n in STAINED]
    options = ["--config", str(lab), "--tube", "activation"]
    cut_options = [o for name in VIABILITY for o in ("--cut", name)]
    pooled = runner.invoke(app, ["pool", *stained, *cut_options, "--out", str(cuts), *options])
    assert pooled.exit_code == 0, pooled.output
    done = runner.invoke(app, ["gate", stained[0], "--cuts", str(cuts), *options, "--json"])
    assert done.exit_code == 0, done.output
    counts = json.loads(done.output)["counts"]
    expected = next(r for r in results if r.number == 1)
    for population, (gated, _) in expected.counts.items():
        assert counts[population] == gated, population
