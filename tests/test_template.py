"""Gating templates: the shipped ones load and fit their panels; broken ones fail at load time
naming the file, the line and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cartflow.gating.errors import GatingError
from cartflow.gating.template import load_template, parse_phenotype
from cartflow.panels import load_panels
from cartflow.pipeline.gate import TEMPLATE_DIR

BASE = """\
id: test
version: 1
tube: memory
transform: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}

thresholds:
  CD45: {method: [valley, balance], estimate_on: singlets, bounds: [0.2, 0.42], default: 0.3}
  CD3: {method: valley, estimate_on: lymphocytes, bounds: [0.2, 0.55], default: 0.35}
  CAR: {method: balance, estimate_on: T, bounds: [0.25, 0.55], default: 0.35}
  CD27: {method: valley, estimate_on: T, bounds: [0.2, 0.5], default: 0.33,
         bright: {method: [valley, mixture], bounds: [0.5, 0.85], default: 0.62}}

populations:
  - {id: stable, parent: null, gate: stable_flow}
  - {id: singlets, parent: stable, gate: singlets}
  - id: cells
    parent: singlets
    gate: cells
    clusters:
      dead: [33000, 28000]
      lymphocytes: [55000, 11000]
      monocytes: [85000, 42000]
      granulocytes: [99000, 112000]
    keep: [lymphocytes, monocytes, granulocytes]
  - {id: leukocytes, parent: cells, phenotype: CD45+}
  - {id: lymphocytes, parent: leukocytes, gate: lymphocytes}
  - {id: T, parent: lymphocytes, phenotype: CD3+}
  - {id: CAR, parent: T, phenotype: CAR+}
  - {id: CAR_CD27hi, parent: CAR, phenotype: CD27++}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def _fails(tmp_path: Path, text: str, reason: str, line: int) -> GatingError:
    path = _write(tmp_path, text)
    with pytest.raises(GatingError) as caught:
        load_template(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"line {line}:" in message, message
    assert reason in message, message
    return caught.value


def test_the_base_template_is_valid(tmp_path):
    template = load_template(_write(tmp_path, BASE))
    assert [p.id for p in template.populations][:3] == ["stable", "singlets", "cells"]
    assert template.thresholds["CD27"].bright is not None
    assert template.population("CAR").phenotype[0].level == "+"


@pytest.mark.parametrize("tube", ["memory", "function", "bcell"])
def test_shipped_templates_load_and_fit_their_panels(tube):
    template = load_template(TEMPLATE_DIR / f"{tube}.yaml")
    assert template.tube == tube
    panels = [p for p in load_panels() if p.tube == tube]
    assert {p.cytometer for p in panels} == {"FACSLyric", "FACSCanto II"}
    for panel in panels:
        missing = [m for m in template.markers if m not in panel.markers]
        assert set(missing) <= set(panel.omitted), (panel.id, missing)
    ids = [p.id for p in template.populations]
    assert {"stable", "singlets", "cells", "leukocytes", "lymphocytes", "T", "CAR"} <= set(ids)


def test_shipped_templates_define_the_tube_populations():
    function = {p.id for p in load_template(TEMPLATE_DIR / "function.yaml").populations}
    assert {"CAR_CD4", "CAR_CD8", "CAR_TCRgd", "CARneg"} <= function
    assert {f"CAR_CD8_{m}" for m in ("PD1", "LAG3", "CD71", "Ki67")} <= function
    memory = load_template(TEMPLATE_DIR / "memory.yaml")
    assert {"CAR_CD8_SCM", "CAR_CD8_SCML", "CAR_CD4_SCM", "CAR_CD4_SCML"} <= {
        p.id for p in memory.populations
    }
    assert str(memory.population("CAR_CD8_SCM").phenotype[2]) == "CD27++"
    bcell = load_template(TEMPLATE_DIR / "bcell.yaml")
    assert bcell.population("B").parent == "lymphocytes_CD3neg"
    assert "beads" in {p.id for p in bcell.populations}


def test_bad_yaml(tmp_path):
    text = BASE.replace(
        "  - {id: T, parent: lymphocytes, phenotype: CD3+}", "  - {id: T, parent: ["
    )
    _fails(tmp_path, text, "invalid YAML", _line(text, "{id: T, parent: [") + 1)


def test_not_a_mapping(tmp_path):
    _fails(tmp_path, "- just\n- a list\n", "must be a mapping", 1)


def test_missing_populations(tmp_path):
    text = BASE.split("populations:")[0]
    _fails(tmp_path, text, "missing field 'populations'", 1)


def test_unknown_gate(tmp_path):
    text = BASE.replace("gate: singlets}", "gate: doublet_killer}")
    _fails(tmp_path, text, "gate 'doublet_killer' is not one of", _line(text, "doublet_killer"))


def test_unknown_method(tmp_path):
    text = BASE.replace("CD3: {method: valley", "CD3: {method: otsu")
    _fails(tmp_path, text, "method 'otsu' is not one of", _line(text, "otsu"))


def test_unknown_valley_side(tmp_path):
    text = BASE.replace("CD3: {method: valley", "CD3: {valley_side: left, method: valley")
    _fails(tmp_path, text, "valley_side must be one of lower, middle, upper", _line(text, "left"))


def test_parent_defined_below(tmp_path):
    text = BASE.replace("{id: T, parent: lymphocytes,", "{id: T, parent: CAR,")
    _fails(tmp_path, text, "parent 'CAR' of 'T' is not defined above it", _line(text, "{id: T,"))


def test_bad_phenotype_token(tmp_path):
    text = BASE.replace("phenotype: CD3+}", "phenotype: CD3x}")
    _fails(tmp_path, text, "'CD3x' is not MARKER followed by", _line(text, "CD3x"))


def test_bright_level_without_a_bright_cut(tmp_path):
    text = BASE.replace("phenotype: CD3+}", "phenotype: CD3++}")
    _fails(tmp_path, text, "CD3++ needs a 'bright' cut for CD3", _line(text, "CD3++"))


def test_duplicate_population_id(tmp_path):
    text = BASE + "  - {id: CAR, parent: T, phenotype: CAR-}\n"
    _fails(tmp_path, text, "population 'CAR' is defined twice", _line(text, "{id: CAR,", 2))


def test_duplicate_threshold_key(tmp_path):
    extra = "  CD3: {method: valley, estimate_on: T, bounds: [0.2, 0.55], default: 0.35}\n"
    text = BASE.replace("  CAR: {method: balance", extra + "  CAR: {method: balance")
    _fails(tmp_path, text, "key 'CD3' appears twice", _line(text, "  CD3:", 2))


def test_phenotype_marker_without_threshold(tmp_path):
    text = BASE + "  - {id: CAR_CD8, parent: CAR, phenotype: CD8+}\n"
    _fails(tmp_path, text, "CAR_CD8: no threshold for CD8", _line(text, "{id: CAR_CD8,"))


def test_marker_twice_in_a_phenotype(tmp_path):
    text = BASE.replace("phenotype: CAR+}", "phenotype: CAR+ CAR-}")
    _fails(tmp_path, text, "a marker appears twice", _line(text, "CAR+ CAR-"))


def test_population_with_both_phenotype_and_gate(tmp_path):
    text = BASE.replace("phenotype: CAR+}", "phenotype: CAR+, gate: cells}")
    reason = "exactly one of 'phenotype', 'gate' or 'boolean'"
    _fails(tmp_path, text, reason, _line(text, "gate: cells}"))


def test_estimate_on_an_undefined_population(tmp_path):
    text = BASE.replace("estimate_on: T,", "estimate_on: Tcells,")
    _fails(tmp_path, text, "population 'Tcells' is not defined", _line(text, "Tcells"))


def test_estimate_on_a_population_gated_after_the_cut_is_needed(tmp_path):
    text = BASE.replace(
        "CAR: {method: balance, estimate_on: T,", "CAR: {method: balance, estimate_on: CAR_CD27hi,"
    )
    _fails(tmp_path, text, "CAR is first needed by 'CAR'", _line(text, "estimate_on: CAR_CD27hi"))


def test_a_tail_negative_gated_after_the_cut_is_needed(tmp_path):
    text = BASE.replace(
        "CAR: {method: balance, estimate_on: T,",
        "CAR: {method: tail, negative: CAR_CD27hi, estimate_on: T,",
    )
    _fails(tmp_path, text, "before its negative population 'CAR_CD27hi'", _line(text, "tail"))


def test_estimate_on_chain_needs_population_ids(tmp_path):
    text = BASE.replace("estimate_on: T,", "estimate_on: [T, 3],")
    _fails(tmp_path, text, "'estimate_on' must be a population id", _line(text, "[T, 3]"))


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        ("bounds: [0.25, 0.55], default: 0.6", "outside bounds"),
        ("bounds: [0.55, 0.25], default: 0.35", "outside bounds"),
        ("bounds: [0.25], default: 0.35", "bounds/default"),
        ("bounds: [0.25, 0.55]", "missing 'default'"),
        ("bounds: [a, b], default: 0.35", "bounds/default"),
    ],
)
def test_bad_bounds(tmp_path, bounds, reason):
    old = "CAR: {method: balance, estimate_on: T, bounds: [0.25, 0.55], default: 0.35}"
    text = BASE.replace(old, f"CAR: {{method: balance, estimate_on: T, {bounds}}}")
    _fails(tmp_path, text, reason, _line(text, "CAR: {method"))


def test_tail_needs_a_negative_population(tmp_path):
    text = BASE.replace("CAR: {method: balance,", "CAR: {method: tail,")
    _fails(tmp_path, text, "method tail needs 'negative'", _line(text, "CAR: {method: tail"))


def test_valley_needs_a_population_to_estimate_on(tmp_path):
    text = BASE.replace("CD3: {method: valley, estimate_on: lymphocytes,", "CD3: {method: valley,")
    _fails(tmp_path, text, "need 'estimate_on'", _line(text, "CD3: {method"))


def test_unknown_threshold_field(tmp_path):
    text = BASE.replace("CD3: {method: valley,", "CD3: {method: valley, qantile: 0.9,")
    _fails(tmp_path, text, "unknown field 'qantile'", _line(text, "qantile"))


def test_bad_threshold_number(tmp_path):
    text = BASE.replace("CD3: {method: valley,", "CD3: {method: valley, margin: lots,")
    _fails(tmp_path, text, "margin must be a number", _line(text, "margin: lots"))


def test_unknown_shape_gate_option(tmp_path):
    text = BASE.replace("    keep: [lymphocytes", "    raduis: 4\n    keep: [lymphocytes")
    _fails(tmp_path, text, "gate cells has no option 'raduis'", _line(text, "raduis"))


@pytest.mark.parametrize("value", ["2", "[1, two]", "[0, 2]"])
def test_dead_cell_bands_are_positive_numbers(tmp_path, value):
    line = f"gate: lymphocytes, dead_cd45_sd: {value}}}"
    text = BASE.replace("gate: lymphocytes}", line)
    _fails(tmp_path, text, "dead_cd45_sd needs a list of positive CD45 sds", _line(text, line))


def test_bad_scatter_cluster(tmp_path):
    text = BASE.replace("dead: [33000, 28000]", "dead: [33000]")
    _fails(tmp_path, text, "cluster 'dead' needs [FSC-A, SSC-A]", _line(text, "dead: [33000]"))


def test_kept_cluster_must_exist(tmp_path):
    text = BASE.replace(
        "keep: [lymphocytes, monocytes, granulocytes]", "keep: [lymphocytes, blasts]"
    )
    _fails(tmp_path, text, "kept cluster 'blasts'", _line(text, "blasts"))


def test_unknown_field_on_a_phenotype_population(tmp_path):
    text = BASE.replace(
        "{id: CAR, parent: T, phenotype: CAR+}",
        "{id: CAR, parent: T, phenotype: CAR+, colour: red}",
    )
    _fails(tmp_path, text, "CAR: unknown field 'colour'", _line(text, "colour"))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("core: CD45", "core needs two different markers with thresholds"),
        ("core: [CD45, CD99]", "core needs two different markers with thresholds"),
        ("core: [CD3, CD3]", "core needs two different markers with thresholds"),
        ("core: [[CD45], CD3]", "core needs two different markers with thresholds"),
        ("core: [CD45, CD3], core_quantile: 1.5", "core_quantile must lie between 0 and 1"),
        ("core: [CD45, CD3], core_quantile: true", "core_quantile must lie between 0 and 1"),
        ("core_quantile: 0.99", "core_quantile needs core"),
    ],
)
def test_bad_core_of_a_phenotype_population(tmp_path, fields, reason):
    old = "{id: T, parent: lymphocytes, phenotype: CD3+}"
    text = BASE.replace(old, old[:-1] + f", {fields}}}")
    _fails(tmp_path, text, f"T: {reason}", _line(text, fields))


def test_shipped_cd3_negative_compartments_keep_to_their_core():
    for tube in ("memory", "function", "bcell"):
        spec = load_template(TEMPLATE_DIR / f"{tube}.yaml").population("lymphocytes_CD3neg")
        assert spec.options.core == ("CD45", "CD3")


@pytest.mark.parametrize(
    ("transform", "reason"),
    [
        ("{type: asinh, T: 262144}", "transform type 'asinh' is not logicle"),
        ("{type: logicle, T: 262144, W: -1}", "W"),
        ("{type: logicle, Q: 2}", "unknown logicle parameter 'Q'"),
    ],
)
def test_bad_transform(tmp_path, transform, reason):
    text = BASE.replace("{type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}", transform)
    _fails(tmp_path, text, reason, _line(text, "transform:"))


def test_population_ids_may_not_use_the_helper_separator(tmp_path):
    text = BASE.replace("{id: CAR_CD27hi,", "{id: CAR::hi,")
    _fails(tmp_path, text, "contains '::'", _line(text, "CAR::hi"))


@pytest.mark.parametrize("bad", ["T(CD8)", "T/CD8", "T&CD8", "T,CD8"])
def test_population_ids_are_safe_as_file_names_and_xml_ids(tmp_path, bad):
    text = BASE.replace("{id: CAR_CD27hi,", f'{{id: "{bad}",').replace(
        "parent: CAR_CD27hi", f'parent: "{bad}"'
    )
    _fails(tmp_path, text, "may hold letters, digits", _line(text, bad))


def test_empty_population_list(tmp_path):
    text = BASE.split("populations:")[0] + "populations: []\n"
    _fails(tmp_path, text, "non-empty list", _line(text, "populations:"))


def test_unreadable_file(tmp_path):
    with pytest.raises(GatingError, match="cannot be read"):
        load_template(tmp_path / "missing.yaml")


def test_parse_phenotype_levels():
    conditions = parse_phenotype("CD3+ CAR- CD27++ CD95dim")
    assert [str(c) for c in conditions] == ["CD3+", "CAR-", "CD27++", "CD95dim"]
    with pytest.raises(GatingError, match="empty phenotype"):
        parse_phenotype("  ")
