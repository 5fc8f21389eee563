"""A cytometer's settings for its tube's template: a panel's ``gate_options``.

The shipped templates assume no instrument's scatter positions (their ``cells`` gate starts
on the data); the shipped panels say that at this lab's settings the clusters sit where the
layout puts them (``start: anchors``). Real shipped files, real configuration folders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cartflow.gating.errors import GatingError
from cartflow.gating.template import OptionsError, load_template
from cartflow.io.errors import PanelError
from cartflow.io.fcs import read_fcs
from cartflow.panels import load_panel_layouts
from cartflow.panels.config import ConfigError, init_config, load_config
from cartflow.pipeline.config_check import check_config
from cartflow.pipeline.gate import TEMPLATE_DIR, GateStageError, gate_fcs, gate_file
from tests.conftest import FIXTURE_COHORT

MEMORY = FIXTURE_COHORT / "CART-001 D11_CAR-T memory_007.fcs"
SHIPPED_LINES = "gate_options:\n  cells: {start: anchors}\n"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "lab"
    init_config(folder)
    return folder


def _edit(path: Path, old: str, new: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return text


def test_the_shipped_templates_start_on_the_data_and_the_shipped_panels_on_the_anchors():
    config = load_config()
    for panel in config.panels:
        assert panel.gate_options == {"cells": {"start": "anchors"}}, panel.id
        template = config.template(panel.tube)
        assert template.population("cells").options.start == "data"
        placed = template.with_options(panel.gate_options)
        assert placed.population("cells").options.start == "anchors"
        assert placed.sha256 != template.sha256
        assert placed.population("cells").options.clusters == (
            template.population("cells").options.clusters
        )
    from typer.testing import CliRunner

    from cartflow.cli import app

    shown = CliRunner().invoke(app, ["config", "check", str(config.directory)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("    gate options for cells: start: anchors\n") == 6


def test_a_shipped_file_is_gated_with_its_panels_options_and_without_them_from_the_data(
    tmp_path,
):
    """Through the shipped configuration the counts are exactly those of the template with
    ``start: anchors`` written in (placed with a panel that sets nothing); a copy of the
    configuration whose panel sets nothing starts the scatter fit on the data."""
    shipped = gate_file(MEMORY)
    evidence = shipped.placed.decisions["cells"].evidence
    assert "anchored_on_data" not in evidence
    assert shipped.template.population("cells").options.start == "anchors"

    written = tmp_path / "memory.yaml"
    written.write_text(
        (TEMPLATE_DIR / "memory.yaml")
        .read_text(encoding="utf-8")
        .replace("    start: data\n", "    start: anchors\n"),
        encoding="utf-8",
    )
    bare = replace(shipped.panel, gate_options={})
    anchored = gate_fcs(read_fcs(MEMORY), bare, template=load_template(written))
    assert anchored.counts() == shipped.counts()
    assert anchored.placed.cuts == shipped.placed.cuts
    assert anchored.placed.flags == shipped.placed.flags

    folder = _copy(tmp_path)
    for name in ("memory-canto.yaml", "memory-lyric.yaml"):
        _edit(folder / name, SHIPPED_LINES, "")
    plain = load_config(folder)
    assert all(not p.gate_options for p in plain.panels if p.tube == "memory")
    on_data = gate_file(MEMORY, config=plain)
    found = on_data.placed.decisions["cells"].evidence["anchored_on_data"]
    assert found["share"] >= 0.2
    assert on_data.template.sha256 == plain.template("memory").sha256  # nothing set over it
    assert on_data.counts()["T"] > 100


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("  cellz: {start: anchors}\n", "has no population 'cellz' (its gates: stable, singlets,"),
        ("  cells: {strat: anchors}\n", "gate cells has no option 'strat' (allowed: clusters,"),
        ("  cells: {start: always}\n", "start must be one of anchors, data"),
        ("  cells: {radius: wide}\n", "radius must be a number"),
        ("  T: {core_quantile: 0.9}\n", "'T' is a phenotype, not a gate"),
        ("  lymphocytes: {scatter: CAR}\n", "scatter 'CAR' must name a population defined above"),
    ],
)
def test_gate_options_that_do_not_fit_the_template_are_refused_naming_file_and_line(
    tmp_path, entry, problem
):
    folder = _copy(tmp_path)
    panel = folder / "memory-lyric.yaml"
    text = _edit(panel, SHIPPED_LINES, f"gate_options:\n{entry}")
    line = 1 + text.splitlines().index(entry.rstrip("\n"))
    with pytest.raises(ConfigError) as refused:
        load_config(folder)
    assert str(refused.value).startswith(f"{panel} line {line}: gate_options ")
    assert problem in str(refused.value) and "templates/memory.yaml" in str(refused.value)
    report = check_config(folder)
    assert [p for p in report.problems if p.startswith(f"{panel} line {line}: ")] == [
        str(refused.value)
    ]


def test_gate_options_of_the_wrong_shape_are_a_panel_error_naming_the_line(tmp_path):
    folder = _copy(tmp_path)
    panel = folder / "bcell-canto.yaml"
    text = _edit(panel, SHIPPED_LINES, "gate_options:\n  cells: anchors\n")
    line = 1 + text.splitlines().index("  cells: anchors")
    with pytest.raises(PanelError) as refused:
        load_panel_layouts(panel)
    assert f"{panel} line {line}: gate_options cells: expected a mapping" in str(refused.value)


def test_gating_with_a_template_the_panels_options_do_not_fit_names_the_panel(tmp_path):
    """``gate FILE --template T``: the panel's options are set over T too; a T without the
    gate they name is refused naming the panel file and line."""
    path = tmp_path / "memory.yaml"
    text = (TEMPLATE_DIR / "memory.yaml").read_text(encoding="utf-8")
    path.write_text(text.replace("id: cells\n", "id: scatter\n").replace(
        "parent: cells", "parent: scatter").replace("scatter: cells", "scatter: scatter"),
        encoding="utf-8")  # fmt: skip
    other = load_template(path)
    with pytest.raises(GateStageError) as refused:
        gate_file(MEMORY, template=other)
    assert "memory-" in refused.value.source and " line " in refused.value.source
    assert "no population 'cells'" in refused.value.problem


def test_with_options_reads_each_option_as_the_loader_does():
    template = load_template(TEMPLATE_DIR / "function.yaml")
    placed = template.with_options({"cells": {"radius": 3, "keep": ["lymphocytes"]}})
    options = placed.population("cells").options
    assert options.radius == 3.0 and isinstance(options.radius, float)
    assert options.keep == ("lymphocytes",) and options.start == "data"  # the rest as written
    assert template.population("cells").options.radius == 4.0  # the template is unchanged
    assert template.with_options({}) is template
    again = template.with_options({"cells": {"radius": 3, "keep": ["lymphocytes"]}})
    assert again.sha256 == placed.sha256 != template.with_options({"cells": {"radius": 5}}).sha256
    with pytest.raises(OptionsError) as refused:
        template.with_options({"cells": {"keep": ["platelets"]}})
    assert (refused.value.population, refused.value.option) == ("cells", "keep")
    assert "kept cluster 'platelets' is not one of the clusters" in refused.value.problem
    assert isinstance(refused.value, GatingError)


def test_a_change_of_gate_options_changes_the_panel_hash(tmp_path):
    folder = _copy(tmp_path)
    before = load_config(folder)
    _edit(folder / "function-canto.yaml", "{start: anchors}", "{start: data}")
    after = load_config(folder)
    assert after.panel_sha256("function") != before.panel_sha256("function")
    assert after.panel_sha256("memory") == before.panel_sha256("memory")
    canto = {p.id: p for p in after.panels}["function-canto"]
    assert canto.gate_options == {"cells": {"start": "data"}}
    assert canto.sha256 != {p.id: p for p in before.panels}["function-canto"].sha256


def test_a_layout_sets_its_own_options_over_the_files(tmp_path):
    """One tube on two cytometers in one file: the file's options for both, one layout's
    own over them; an error in the layout's names its line."""
    folder = _copy(tmp_path)
    (folder / "memory-canto.yaml").unlink()
    panel = folder / "memory-lyric.yaml"
    text = panel.read_text(encoding="utf-8")
    head, channels = text.split("channels:\n", 1)
    channels = channels.split("# at this lab", 1)[0]
    indented = "".join(f"    {line}\n" for line in channels.splitlines())
    layouts = (
        "layouts:\n"
        f"  - id: a\n    cytometer: FACSLyric A\n    channels:\n{indented}"
        f"  - id: b\n    cytometer: FACSLyric B\n    gate_options:\n"
        f"      cells: {{start: data, radius: 3.5}}\n    channels:\n{indented}"
        "gate_options:\n  cells: {start: anchors, radius: 4.5}\n"
    )
    panel.write_text(head.replace("cytometer: FACSLyric\n", "") + layouts, encoding="utf-8")
    found = {p.id: p for p in load_config(folder).panels}
    assert found["memory-lyric/a"].gate_options == {"cells": {"start": "anchors", "radius": 4.5}}
    assert found["memory-lyric/b"].gate_options == {"cells": {"start": "data", "radius": 3.5}}
    bad = _edit(panel, "{start: data, radius: 3.5}", "{start: data, radius: [3]}")
    line = 1 + next(i for i, t in enumerate(bad.splitlines()) if "radius: [3]" in t)
    with pytest.raises(ConfigError) as refused:
        load_config(folder)
    assert str(refused.value).startswith(f"{panel} line {line}: gate_options cells: ")
    assert "radius must be a number" in str(refused.value)
