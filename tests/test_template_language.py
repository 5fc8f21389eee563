"""The template language beyond phenotypes: names as labs write them, named cuts per branch,
fixed cuts, per-channel scales, booleans, drawn and data-placed 2-D gates, singlets on any
pair; load errors name the file, the line and what is allowed. Gated on a real file."""

from __future__ import annotations

import numpy as np
import pytest

from cartflow.gating.auto import place
from cartflow.gating.errors import GatingError
from cartflow.gating.template import load_template
from cartflow.io.fcs import read_fcs
from cartflow.pipeline.expert_accuracy import channel_map
from tests.conftest import SHARED, require_shared

DATA = SHARED / "real-data" / "activation"

TEMPLATE = """\
id: language
tube: activation
transforms: {FSC-A: linear, SSC-A: linear, CD4: {type: asinh, T: 262144, M: 4.5}}
thresholds:
  FSC-A: 30000
  Hoechst-405: 0.5
  Va2: {method: valley, estimate_on: Live, bounds: [0.3, 0.75], default: 0.5}
  CD4: {method: valley, estimate_on: T, bounds: [0.2, 0.8], default: 0.5}
  CD8: {method: valley, estimate_on: T, bounds: [0.3, 0.75], default: 0.5}
  CD8_in_CD4: {marker: CD8, method: valley, estimate_on: CD4, bounds: [0.2, 0.75], default: 0.45}
populations:
  - {id: Cells, parent: null, phenotype: FSC-A+}
  - {id: Singlets HW, parent: Cells, gate: singlets, channels: [FSC-H, FSC-W]}
  - {id: Single, parent: Cells, gate: singlets, channels: [FSC-A, FSC-H]}
  - {id: Dead, parent: Single, phenotype: Hoechst-405+}
  - {id: Live, parent: Single, boolean: not Dead}
  - {id: T, parent: Live, phenotype: Va2+}
  - {id: CD4, parent: T, phenotype: CD4+}
  - {id: CD4 CD8-, parent: CD4, phenotype: CD8_in_CD4-}
  - {id: CD8 T, parent: T, phenotype: CD8+}
  - {id: CD4 or CD8, parent: T, boolean: CD4 or CD8 T}
  - {id: CD8 not CD4, parent: T, boolean: CD8 T and not CD4}
  - {id: box, parent: Live, gate: rectangle, channels: [FSC-A, SSC-A], min: [30000, 0],
     max: [150000, 100000], units: data}
  - {id: triangle, parent: Live, gate: polygon, channels: [FSC-A, SSC-A],
     vertices: [[0, 0], [250000, 0], [0, 250000]]}
  - {id: quarter, parent: T, gate: quadrant, channels: [CD4, CD8], at: [0.5, 0.5], quarter: +-}
  - {id: round, parent: Live, gate: ellipse, channels: [CD4, CD8], mean: [0.5, 0.5],
     covariance: [[0.01, 0], [0, 0.01]], distance: 4}
  - {id: lymph cluster, parent: Live, gate: cluster, channels: [FSC-A, SSC-A], pick: largest,
     min_share: 0.2}
"""


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    require_shared(DATA)
    path = tmp_path_factory.mktemp("language") / "template.yaml"
    path.write_text(TEMPLATE, encoding="utf-8")
    template = load_template(path)
    fcs = read_fcs(DATA / "Activation_1.fcs")
    spill = (fcs.spillover.channels, fcs.spillover.matrix)
    channels = channel_map(DATA, list(fcs.channel_names))
    placed, result = place(template, fcs.events, fcs.channel_names, channels, spill)
    return fcs, placed, result


def _mask(result, population) -> np.ndarray:
    return np.asarray(result.mask(population), dtype=bool)


def test_every_population_is_gated(gated):
    _, placed, _ = gated
    assert not placed.skipped, placed.skipped


def test_fixed_cuts_and_scatter_markers(gated):
    fcs, placed, result = gated
    fsc = fcs.events[:, fcs.channel_names.index("FSC-A")]
    assert placed.cuts["FSC-A"] == 30000 and placed.decisions["FSC-A"].method == "fixed"
    assert np.array_equal(_mask(result, "Cells"), fsc >= 30000)


def test_booleans_are_the_set_operations_they_name(gated):
    _, _, result = gated
    single, dead, live = (_mask(result, p) for p in ("Single", "Dead", "Live"))
    assert np.array_equal(live, single & ~dead)
    t, cd4, cd8 = (_mask(result, p) for p in ("T", "CD4", "CD8 T"))
    assert np.array_equal(_mask(result, "CD8 not CD4"), t & cd8 & ~cd4)
    assert np.array_equal(_mask(result, "CD4 or CD8"), cd4 | cd8)


def test_a_named_cut_is_placed_on_its_own_branch(gated):
    _, placed, _ = gated
    assert placed.decisions["CD8_in_CD4"].evidence["estimated_on"] == "CD4"
    assert placed.decisions["CD8"].evidence["estimated_on"] == "T"


def test_drawn_gates_select_what_they_draw(gated):
    fcs, _, result = gated
    fsc = fcs.events[:, fcs.channel_names.index("FSC-A")]
    ssc = fcs.events[:, fcs.channel_names.index("SSC-A")]
    live = _mask(result, "Live")
    box = live & (fsc >= 30000) & (fsc < 150000) & (ssc >= 0) & (ssc < 100000)
    assert np.array_equal(_mask(result, "box"), box)
    assert np.count_nonzero(_mask(result, "triangle") & ~live) == 0
    assert _mask(result, "quarter").sum() > 0 and _mask(result, "round").sum() > 0


def test_height_width_singlets_and_the_cluster_gate(gated):
    _, placed, result = gated
    cells = _mask(result, "Cells").sum()
    assert 0.8 * cells < _mask(result, "Singlets HW").sum() <= cells
    share = placed.decisions["lymph cluster"].evidence["share"]
    assert share >= 0.2 and "implausible:lymph cluster" not in placed.flags


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("pick: largest", "pick: biggest", "pick must be one of largest, densest, nearest"),
        ("quarter: +-", "quarter: +", "quarter must be one of ++, +-, -+, --"),
        ("FSC-A: 30000", "FSC-A: thirty", "a threshold is a number (a fixed cut) or a mapping"),
        ("boolean: not Dead", "boolean: not Ded", "'Ded' is not a population defined above"),
        ("boolean: not Dead", "boolean: not Cells", "a boolean combines populations under its"),
        ("boolean: CD8 T and not CD4", "boolean: CD8 T and CD4 or Dead", "either 'and' or 'or'"),
        ("CD4: {type: asinh", "CD4: {type: log", "scale must be one of logicle, asinh, biex"),
        ("[CD4, CD8], at:", "[CD4, CD8], att:", "no option 'att' (allowed: channels, at"),
        ("min_share: 0.2}", "min_shar: 0.2}", "gate cluster has no option 'min_shar' (allowed:"),
    ],
)
def test_load_errors_name_the_file_line_and_what_is_allowed(tmp_path, old, new, reason):
    text = TEMPLATE.replace(old, new)
    path = tmp_path / "template.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GatingError) as caught:
        load_template(path)
    message = str(caught.value)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if new in row)
    assert f"{path} line {line}:" in message and reason in message, message


def test_every_gate_of_the_language_exports_to_gatingml_and_flowjo(gated, tmp_path):
    """Booleans with complements, drawn and cluster gates, per-channel scales: read back
    from Gating-ML they select the same events; FlowJo's export checks each gate itself."""
    from cartflow.gating.engine import evaluate
    from cartflow.gating.flowjo import export_flowjo
    from cartflow.gating.gatingml import export_gatingml, load_gatingml, xml_id

    fcs, placed, result = gated
    export_gatingml(placed.gate_set, tmp_path / "gates.xml")
    spill = (fcs.spillover.channels, fcs.spillover.matrix)
    again = evaluate(load_gatingml(tmp_path / "gates.xml"), fcs.events, fcs.channel_names, spill)
    assert {p: again.count(xml_id(p)) for p in placed.populations} == {
        p: result.count(p) for p in placed.populations
    }
    export_flowjo(placed.gate_set, fcs.path, tmp_path / "gates.wsp")
    assert (tmp_path / "gates.wsp").stat().st_size > 0
