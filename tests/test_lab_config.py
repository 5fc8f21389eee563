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

from cartflow.cli import app
from cartflow.store import Store
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
    assert {r.population: r.count for r in rows} == dict(counts)
    assert {r.panel_id for r in rows} == {tube}
    from cartflow.panels.config import load_config

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
    assert "identity.yaml line 1: unknown identity rule(s): patient_keyword" in result.output
    assert "4 problem(s)" in result.output  # both bcell layouts lack the template
    # any command given the folder refuses it in one line naming file and line
    gated = runner.invoke(app, ["gate", "x.fcs", "--config", str(config)])
    assert gated.exit_code == 1 and f"memory-lyric.yaml line {line}" in gated.output


def test_the_shipped_configuration_is_the_default_and_cartflow_config_names_another(
    tmp_path, monkeypatch
):
    from cartflow.panels import PANEL_DIR
    from cartflow.panels.config import content_hash, load_config

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


def test_an_antigen_read_as_another_only_when_declared_and_shown(tmp_path, cli_cohort):
    """CCR7 is not CD62L: a lab reading one as the other declares it, and panel check says so."""
    memory = next(cli_cohort.rglob("*memory*.fcs"))
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


def _leaf_commands(command, path=()):
    """Every command of the CLI, walked from the command group typer builds (no hand list)."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path, command


def test_every_command_accepts_config():
    import typer

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    assert {("run",), ("kinetics",), ("export",), ("demo",), ("config", "check")} <= set(commands)
    lacking = [" ".join(path) for path, command in commands.items()
               if not any("--config" in p.opts for p in command.params)]  # fmt: skip
    assert lacking == []
    for path in commands:  # and each says so in its help
        assert "--config" in _ok([*path, "--help"]).output


def test_every_command_refuses_a_bad_configuration_naming_its_file_and_line(tmp_path, monkeypatch):
    """A bad analysis.yaml stops every command before any work, naming file and line (each
    argument and required option is given an empty folder)."""
    import typer

    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    (config / "analysis.yaml").write_text("bootstrap: 100\nhorizon_days: soon\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for path, command in _leaf_commands(typer.main.get_command(app)):
        if path == ("panel", "draft"):
            continue  # reads only the marker names: the folder may hold unfinished drafts
        given = []
        for param in command.params:
            if param.param_type_name == "argument" and param.name == "sample":
                given.append("1")  # a stored sample's id
            elif param.param_type_name == "argument":  # config check's is the folder itself
                given.append(str(config if path == ("config", "check") else empty))
            elif param.required:
                given += [param.opts[0], str(empty)]
        result = runner.invoke(app, [*path, *given, "--config", str(config)])
        assert result.exit_code == 1, (path, result.output)
        assert "analysis.yaml line 2: horizon_days: 'soon' is not a number" in result.output, (
            path,
            result.output,
        )
    assert not any(empty.iterdir())  # nothing was written


BAD_ENTRIES = {  # file: (text replaced, bad text, what the error says)
    "markers.yaml": ("CD95: [CD95, FAS]", "CD95: FAS", "CD95: expected a list of spellings"),
    "fluorochromes.yaml": ("- V450\n", "- 450\n", "450 is not a fluorochrome name"),
    "memory-lyric.yaml": ("marker: CD27,", "marker: CD 27,", "marker 'CD 27'"),
    "templates/memory.yaml": ("parent: CARneg_CD8, phenotype: CD45RA+",
                              "parent: nowhere, phenotype: CD45RA+", "nowhere"),
    "identity.yaml": ("", "tube_keywords: [TUBE NAME]\npatient_keywords: PATIENT\n",
                      "patient_keywords: expected a list of texts"),
    "hematotox.yaml": ('rules: [["< 75", 2]', 'rules: [["about 75", 2]',
                       "item platelets: rule ['about 75', 2] is not ['< 1.5', points]"),
    "analysis.yaml": ("", "bootstrap: 100\nconfidence: [0.9]\n",
                      "confidence: [0.9] is not a number"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_a_bad_entry_in_each_configuration_file_is_named_by_file_and_line(name, tmp_path):
    old, new, problem = BAD_ENTRIES[name]
    config = tmp_path / "lab"
    _ok(["config", "init", str(config)])
    path = config / name
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert old in text
    text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    bad = new.strip().splitlines()[-1]
    line = 1 + next(i for i, t in enumerate(text.splitlines()) if bad in t)
    checked = runner.invoke(app, ["config", "check", str(config)])
    assert checked.exit_code == 1
    assert f"{path} line {line}: " in checked.output and problem in checked.output, checked.output
    if name.startswith("templates/"):
        return  # a template is read when its tube is gated: `config check` names it
    refused = runner.invoke(app, ["kinetics", "--config", str(config)])
    assert refused.exit_code == 1
    assert f"{path} line {line}: " in refused.output and problem in refused.output, refused.output


def test_a_changed_panel_or_marker_name_regates_exactly_its_tube(tmp_path):
    """On a real SQLite store: a changed panel re-gates the samples of its tube, a changed
    spelling of a marker re-gates the tubes whose panels carry it, and nothing else."""
    from tests.conftest import FIXTURE_COHORT

    batch = tmp_path / "batch"
    batch.mkdir()
    for source in sorted(FIXTURE_COHORT.glob("CART-001 D1[14]_*.fcs")):
        if "memory" in source.name or "BCELL" in source.name:
            shutil.copy(source, batch / source.name)
    config, db = tmp_path / "lab", tmp_path / "store.sqlite"
    _ok(["config", "init", str(config)])

    def run() -> dict[str, list[tuple]]:
        _ok(["run", str(batch), "--db", str(db), "--out", str(tmp_path / "out"), "--no-report",
             "--workers", "1", "--config", str(config)])  # fmt: skip
        with sqlite3.connect(db) as connection:
            rows = connection.execute(
                "select s.tube, g.id, g.recorded_at, g.status, g.panel_sha256, count(p.id) "
                "from gatings g join samples s on s.id = g.sample_id "
                "left join populations p on p.gating_id = g.id group by g.id order by g.id"
            ).fetchall()
        found: dict[str, list[tuple]] = {}
        for tube, *rest in rows:
            found.setdefault(tube, []).append(tuple(rest))
        return found

    def edit(name: str, old: str, new: str) -> None:
        path = config / name
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    first = run()
    assert sorted(first) == ["bcell", "memory"] and all(len(g) == 2 for g in first.values())
    assert all(
        status == "ok" and populations for g in first.values() for *_, status, _, populations in g
    )
    assert run() == first  # nothing changed: nothing gated again

    edit("bcell-lyric.yaml", "description: B-cell", "description: Our B-cell")
    second = run()
    assert second["memory"] == first["memory"]  # the other tube's rows, timestamps included
    assert second["bcell"][:2] == first["bcell"] and len(second["bcell"]) == 4
    new = second["bcell"][2:]
    assert min(g[1] for g in new) > max(g[1] for g in first["memory"] + first["bcell"])
    assert {g[3] for g in new} != {g[3] for g in first["bcell"]}  # keyed by the new panel
    assert [g[4] for g in new] == [g[4] for g in first["bcell"]]  # same counts rows

    edit("markers.yaml", "CD27: [CD27]", "CD27: [CD27, TNFRSF7]")  # CD27: memory tube only
    third = run()
    assert third["bcell"] == second["bcell"]
    assert third["memory"][:2] == second["memory"] and len(third["memory"]) == 4

    edit("markers.yaml", "Ki67: [KI67, KI-67]", "Ki67: [KI67, KI-67, MKI67]")  # no tube here
    assert run() == third


def test_kinetics_and_export_take_the_expansion_threshold_of_the_configuration(tmp_path):
    from tests.conftest import FIXTURE_COHORT

    batch = tmp_path / "batch"
    batch.mkdir()
    for source in sorted(FIXTURE_COHORT.glob("CART-001 D*_CAR-T memory*.fcs")):
        shutil.copy(source, batch / source.name)
    db, config = tmp_path / "store.sqlite", tmp_path / "lab"
    _ok(["run", str(batch), "--db", str(db), "--out", str(tmp_path / "run"), "--no-report",
         "--workers", "1", "--manifest", str(FIXTURE_COHORT / "manifest.csv")])  # fmt: skip
    _ok(["config", "init", str(config)])
    shipped = _ok(["kinetics", "--db", str(db), "--out", str(tmp_path / "shipped")])
    assert "kinetics: 1 patient(s)" in shipped.output
    peak = pd.read_csv(tmp_path / "shipped" / "kinetics.csv")["car_t_cmax"].iloc[0]
    assert peak > 5 and pd.read_csv(tmp_path / "shipped" / "kinetics.csv")["expanded"].all()
    (config / "analysis.yaml").write_text(f"expansion_threshold_per_ul: {peak * 2}\n",
                                          encoding="utf-8")  # fmt: skip
    _ok(["kinetics", "--db", str(db), "--out", str(tmp_path / "lab-out"), "--config", str(config)])
    assert not pd.read_csv(tmp_path / "lab-out" / "kinetics.csv")["expanded"].any()
    _ok(["export", "--db", str(db), "--out", str(tmp_path / "export"), "--config", str(config)])
    assert not pd.read_csv(tmp_path / "export" / "kinetics.csv")["expanded"].any()
    with sqlite3.connect(db) as connection:  # the configuration is in the run's provenance
        parameters = connection.execute(
            "select parameters from runs where command = 'kinetics' order by id desc limit 1"
        ).fetchone()[0]
    from cartflow.panels.config import load_config

    assert json.loads(parameters)["config_sha256"] == load_config(config).sha256
