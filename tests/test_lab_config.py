"""A lab's own configuration folder, through the command line only: real files from other
labs are drafted into panels, filled in by hand where the draft says, checked, gated and
run as a batch."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.store import Store
from tests.conftest import SHARED, require_shared

REAL = SHARED / "real-data"
runner = CliRunner()

ACTIVATION_TEMPLATE = """\
id: activation
version: 1
tube: activation
transform: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
thresholds:
  Hoechst-405: {method: [valley, balance], estimate_on: singlets, bounds: [0.2, 0.8],
                default: 0.5}
  CD4: {method: [valley, balance], estimate_on: live, bounds: [0.2, 0.8], default: 0.5}
  CD8: {method: [valley, balance], estimate_on: live, bounds: [0.2, 0.8], default: 0.5}
  CD69: {method: [valley, balance], estimate_on: CD4 T, bounds: [0.2, 0.8], default: 0.5}
populations:
  - {id: stable, parent: null, gate: stable_flow}
  - {id: singlets, parent: stable, gate: singlets}
  - {id: live, parent: singlets, phenotype: Hoechst-405-}
  - {id: CD4 T, parent: live, phenotype: CD4+ CD8-}
  - {id: CD8 T, parent: live, phenotype: CD8+ CD4-}
  - {id: CD69+ CD4 T, parent: CD4 T, phenotype: CD69+}
"""

DIVA_TEMPLATE = """\
id: diva
version: 1
tube: diva
transform: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
thresholds:
  Viab: {method: [valley, balance], estimate_on: singlets, bounds: [0.2, 0.8], default: 0.5}
  CD8: {method: [valley, balance], estimate_on: live, bounds: [0.2, 0.8], default: 0.5}
  CD3: {method: [valley, balance], estimate_on: CD8, bounds: [0.2, 0.8], default: 0.5}
populations:
  - {id: stable, parent: null, gate: stable_flow}
  - {id: singlets, parent: stable, gate: singlets}
  - {id: live, parent: singlets, phenotype: Viab-}
  - {id: CD8, parent: live, phenotype: CD8+}
  - {id: CD3 of CD8, parent: CD8, phenotype: CD3+}
"""

ARIA_TEMPLATE = """\
id: aria
version: 1
tube: aria
transform: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
thresholds:
  Vivid/CD14: {method: [valley, balance], estimate_on: singlets, bounds: [0.2, 0.8],
               default: 0.5}
  CD3: {method: [valley, balance], estimate_on: singlets, bounds: [0.2, 0.8], default: 0.5}
  CD4: {method: [valley, balance], estimate_on: T, bounds: [0.2, 0.8], default: 0.5}
  CD8: {method: [valley, balance], estimate_on: T, bounds: [0.2, 0.8], default: 0.5}
populations:
  - {id: stable, parent: null, gate: stable_flow}
  - {id: singlets, parent: stable, gate: singlets}
  - {id: live, parent: singlets, phenotype: Vivid/CD14-}
  - {id: T, parent: live, phenotype: CD3+}
  - {id: CD4 T, parent: T, phenotype: CD4+ CD8-}
  - {id: CD8 T, parent: T, phenotype: CD8+ CD4-}
"""


def _activation_markers() -> dict[str, str | None]:
    """The experiment's own channel → marker table (its files carry no $PnS)."""
    table = REAL / "activation" / "Activation-Experiment-Markers.csv"
    with table.open(newline="", encoding="utf-8") as fh:
        return {r["Channel"]: (None if r["Marker"] == "NA" else r["Marker"])
                for r in csv.DictReader(fh)}  # fmt: skip


CASES = {
    "activation": (
        REAL / "activation" / "Activation_1.fcs",
        _activation_markers,
        ACTIVATION_TEMPLATE,
    ),
    # the three detectors without a $PnS label carry no stain in this file
    "diva": (
        REAL / "diva" / "124500.fcs",
        lambda: {"FITC-A": None, "PerCP-Cy5-5-A": None, "PE-Cy7-A": None},
        DIVA_TEMPLATE,
    ),
    "aria": (REAL / "flowkit" / "100715.fcs", lambda: {"V450-A": "Vivid/CD14"}, ARIA_TEMPLATE),
}


def _ok(args: list[str], code: int = 0):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    return result


def _fill_in(panel: Path, fill: dict[str, str | None]) -> list[str]:
    """Fill in by hand only the lines the draft marks UNRESOLVED: a marker, or the line
    removed when the detector carries none. Returns the detectors filled."""
    filled, lines = [], []
    for line in panel.read_text(encoding="utf-8").splitlines():
        found = re.search(r"channel: (\"[^\"]+\"|[^,]+), marker: null", line)
        if found and "UNRESOLVED" in line:
            channel = found.group(1).strip('"')
            filled.append(channel)
            marker = fill[channel]
            if marker is None:
                continue
            line = line.replace("marker: null", f'marker: "{marker}"')
        lines.append(line)
    panel.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return filled


@pytest.mark.parametrize("tube", sorted(CASES))
def test_a_lab_file_from_draft_to_gated_batch(tube, tmp_path):
    path, fill_table, template = CASES[tube]
    source = require_shared(path)
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    drafted = _ok(["panel", "draft", str(source), "--tube", tube, "--config", str(config)])
    panel = config / f"{tube}.yaml"
    unresolved = re.findall(r"unresolved: .*?: (.+?): ", drafted.output)
    fill = fill_table()
    # the draft lists exactly what it cannot know; nothing it resolved is touched by hand
    assert sorted(_fill_in(panel, fill)) == sorted(unresolved)
    assert set(unresolved) <= set(fill)
    (config / "templates" / f"{tube}.yaml").write_text(template, encoding="utf-8")

    checked = _ok(["config", "check", str(config)])
    assert f"panel {tube} (tube {tube}" in checked.output
    assert f"template {tube}: {tube} v1" in checked.output

    gated = _ok(["gate", str(source), "--config", str(config), "--json"])
    result = json.loads(gated.stdout)
    counts = result["counts"]
    assert result["panel"] == tube
    assert counts["singlets"] > 0.5 * counts["stable"] > 0
    assert 0 < counts["live"] < counts["singlets"]
    assert not result["skipped"]

    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(source, batch / source.name)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"file,patient,timepoint,tube\n{source.name},LAB-1,D0,{tube}\n", encoding="utf-8"
    )
    db = tmp_path / "store.sqlite"
    out = tmp_path / "out"
    run = _ok(["run", str(batch), "--manifest", str(manifest), "--db", str(db),
               "--out", str(out), "--workers", "1", "--config", str(config)])  # fmt: skip
    assert "1 accepted" in run.output and "gate: 1 gated" in run.output
    assert (out / "report" / "index.html").is_file()
    store = Store(f"sqlite:///{db}", existing=True)
    try:
        rows = store.latest_counts()
    finally:
        store.close()
    assert {r["population"]: r["count"] for r in rows} == dict(counts)
    assert {r["panel_id"] for r in rows} == {tube}
    from pipeline.config import load_config

    with sqlite3.connect(db) as conn:  # the configuration's hash is kept with the run
        recorded = [json.loads(p) for (p,) in conn.execute("SELECT parameters FROM runs")]
    assert {p.get("config_sha256") for p in recorded} == {load_config(config).sha256}
    timepoints = pd.read_csv(out / "timepoints.csv")
    assert set(counts) <= set(timepoints.population)


def test_no_time_channel_skips_the_time_gate_with_a_flag_and_gates_below(tmp_path):
    source = require_shared(REAL / "flowkit" / "100715.fcs")
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    _ok(["panel", "draft", str(source), "--tube", "aria", "--config", str(config)])
    text = (config / "aria.yaml").read_text(encoding="utf-8")
    assert "time: null" in text
    _fill_in(config / "aria.yaml", {"V450-A": "Vivid/CD14"})
    (config / "templates" / "aria.yaml").write_text(ARIA_TEMPLATE, encoding="utf-8")
    result = json.loads(_ok(["gate", str(source), "--config", str(config), "--json"]).stdout)
    first = ARIA_TEMPLATE.split("populations:\n")[1].splitlines()[0]
    assert "gate: stable_flow" in first  # the template's first gate is the time check
    assert "stable_flow_skipped:stable" in result["flags"]
    assert result["counts"]["stable"] == 65_016  # every event: nothing judged on time
    assert result["counts"]["singlets"] > 0 and "T" in result["counts"]
    assert not result["skipped"]


def test_spillover_from_controls_is_close_to_the_reference_matrix(tmp_path):
    """Tolerance: 0.085 per coefficient, and 10 % on the four spills above 0.25. The
    reference populations were drawn by hand (CytoExploreR's cyto_gate_draw); here they are
    placed by rule (unstained scatter cloud, above the unstained's 99.5 %), which moves the
    medians of the dim tandem controls (APC-Cy7 differs most)."""
    folder = require_shared(REAL / "compensation")
    matrix = tmp_path / "matrix.csv"
    result = _ok(["spillover", str(folder), "--out", str(matrix)])
    for control in ("7AAD", "AF700", "APC-Cy7", "APC", "FITC", "PE"):
        assert f"Compensation-{control}.fcs: " in result.output
    assert "positive events" in result.output
    ours = pd.read_csv(matrix, index_col=0)
    reference = pd.read_csv(folder / "Compensation-Spillover-Matrix.csv", index_col=0)
    reference = reference.loc[ours.index, ours.columns]
    difference = np.abs(ours.to_numpy() - reference.to_numpy())
    assert difference.max() <= 0.085
    large = reference.to_numpy() > 0.25
    np.fill_diagonal(large, False)
    assert large.sum() == 4
    relative = difference[large] / reference.to_numpy()[large]
    assert relative.max() <= 0.10
    # the controls' own matrix compensates the experiment's files
    source = require_shared(REAL / "activation" / "Activation_1.fcs")
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    _ok(["panel", "draft", str(source), "--tube", "activation", "--config", str(config)])
    _fill_in(config / "activation.yaml", _activation_markers())
    (config / "templates" / "activation.yaml").write_text(ACTIVATION_TEMPLATE, encoding="utf-8")
    gated = _ok(["gate", str(source), "--config", str(config), "--spillover", str(matrix),
                 "--json"])  # fmt: skip
    flags = json.loads(gated.stdout)["flags"]
    assert "spillover_override:matrix.csv" in flags
    # named per panel in the configuration, the matrix is used without the option
    shutil.copy(matrix, config / "controls.csv")
    panel = config / "activation.yaml"
    panel.write_text(panel.read_text(encoding="utf-8") + "spillover: controls.csv\n",
                     encoding="utf-8")  # fmt: skip
    _ok(["config", "check", str(config)])
    gated = _ok(["gate", str(source), "--config", str(config), "--json"])
    assert "spillover_override:controls.csv" in json.loads(gated.stdout)["flags"]


def test_config_check_names_each_problem_with_file_and_line(tmp_path):
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    panel = config / "memory-lyric.yaml"
    text = panel.read_text(encoding="utf-8")
    panel.write_text(text.replace("marker: CD27,", "marker: CD 27,"), encoding="utf-8")
    line = 1 + next(i for i, t in enumerate(text.splitlines()) if "marker: CD27," in t)
    (config / "templates" / "bcell.yaml").unlink()
    (config / "identity.yaml").write_text("patient_keyword: [X]\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 1
    assert f"memory-lyric.yaml line {line}: marker 'CD 27'" in result.output
    assert "tube 'bcell' has no gating template" in result.output
    assert "identity.yaml: unknown identity rule(s): patient_keyword" in result.output
    assert "4 problem(s)" in result.output  # both bcell layouts lack the template
    # any command given the folder refuses it in one line naming file and line
    gated = runner.invoke(app, ["gate", "x.fcs", "--config", str(config)])
    assert gated.exit_code == 1 and f"memory-lyric.yaml line {line}" in gated.output


def test_the_shipped_configuration_is_the_default_and_cartflow_config_names_another(
    tmp_path, monkeypatch
):
    from panels import PANEL_DIR
    from pipeline.config import content_hash, load_config

    shipped = load_config()
    assert shipped.directory == PANEL_DIR and shipped.sha256 == content_hash(PANEL_DIR)
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    copy = load_config(config)
    assert copy.sha256 == shipped.sha256  # the same files under another folder
    assert [p.id for p in copy.panels] == [p.id for p in shipped.panels]
    (config / "memory-canto.yaml").unlink()
    monkeypatch.setenv("CARTFLOW_CONFIG", str(config))
    assert "memory-canto" not in [p.id for p in load_config().panels]
    assert load_config().sha256 != shipped.sha256
    checked = _ok(["config", "check", str(config)])
    assert "memory-canto" not in checked.output and "memory-lyric" in checked.output


def test_one_tube_on_two_instruments_is_one_panel_with_two_layouts(tmp_path):
    """Two FACSCanto IIs naming the V450 detector differently: one panel, two layouts."""
    source = require_shared(REAL / "diva" / "124500.fcs")
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    markers = [("PE-A", "CD3"), ("APC-Cy7-A", "Viab"), ("Pacific Orange-A", "CD8")]

    def channels(v450: str) -> str:
        rows = [*markers, (v450, "CD44")]
        return "".join(f'      - {{channel: "{c}", marker: {m}}}\n' for c, m in rows)

    (config / "diva.yaml").write_text(
        "id: diva\ntube: diva\nscatter: [FSC-A, FSC-H, SSC-A]\ntime: Time\nlayouts:\n"
        f"  - id: canto-a\n    cytometer: FACSCanto II (A)\n    channels:\n{channels('V450-A')}"
        f"  - id: canto-b\n    cytometer: FACSCanto II (B)\n    channels:\n"
        f"{channels('Bd Horizon V450-A')}",
        encoding="utf-8",
    )
    (config / "templates" / "diva.yaml").write_text(DIVA_TEMPLATE, encoding="utf-8")
    checked = _ok(["config", "check", str(config)])
    assert "panel diva/canto-a (tube diva" in checked.output
    assert "panel diva/canto-b (tube diva" in checked.output
    matched = _ok(["panel", "check", str(source), "--config", str(config)])
    assert "panel diva/canto-b (tube diva, FACSCanto II (B))" in matched.output
    assert "CD44 on Bd Horizon V450-A" in matched.output
    gated = json.loads(_ok(["gate", str(source), "--config", str(config), "--json"]).stdout)
    assert gated["panel"] == "diva/canto-b" and gated["counts"]["CD8"] > 0


def test_panel_check_names_the_closest_panel_and_what_differs(tmp_path):
    source = require_shared(REAL / "diva" / "124500.fcs")
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    result = runner.invoke(app, ["panel", "check", str(source), "--config", str(config)])
    assert result.exit_code == 1
    assert "no panel fits" in result.output and "closest: panel" in result.output
    assert re.search(r"detector '\S+' is not in the file", result.output)


def test_an_antigen_read_as_another_only_when_declared_and_shown(tmp_path):
    """CCR7 is not CD62L: a lab reading one as the other declares it, and panel check says so."""
    from pipeline.simulate import SimulationConfig, simulate_cohort

    simulate_cohort(tmp_path / "c", SimulationConfig(patients=1, seed=3, events=1000))
    memory = next((tmp_path / "c").rglob("*memory*.fcs"))
    relabelled = tmp_path / "ccr7.fcs"
    data = memory.read_bytes()
    assert data.count(b"CD62L") == 1
    relabelled.write_bytes(data.replace(b"CD62L", b"CCR7 "))  # same length: offsets hold
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    refused = runner.invoke(app, ["panel", "check", str(relabelled), "--config", str(config)])
    assert refused.exit_code == 1, refused.output
    assert "CD62L: detector 'PE-A' is labelled 'CCR7" in refused.output.replace("\n", " ")
    with (config / "markers.yaml").open("a", encoding="utf-8") as fh:
        fh.write("read_as:\n  CCR7: CD62L\n")
    matched = _ok(["panel", "check", str(relabelled), "--config", str(config)])
    assert "read as: CCR7 is read as CD62L (declared in" in matched.output
    assert "markers.yaml line" in matched.output
    assert "read as: CCR7 is read as CD62L" in _ok(["config", "check", str(config)]).output


def test_inspect_and_ingest_read_a_nul_padded_file(tmp_path):
    source = require_shared(REAL / "flowkit" / "test_comp_example.fcs")
    shown = _ok(["inspect", str(source), "--json"])
    info = json.loads(shown.stdout)
    assert info["events"] == 10_703 and any("NUL" in w for w in info["warnings"])
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(source, batch / source.name)
    ingested = runner.invoke(app, ["ingest", str(batch), "--db", str(tmp_path / "s.sqlite"),
                                   "--out", str(tmp_path / "out")])  # fmt: skip
    # read: refused for its unknown panel and identity, not for its bytes
    assert ingested.exit_code == 2 and "not text" not in ingested.output
    assert "quarantined: test_comp_example.fcs" in ingested.output
