"""Shared test fixtures: real FCS corpora, stores on SQLite and PostgreSQL, and simulated
cohorts generated once per session."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

from cartflow.simulate import CohortSummary, SimulationConfig, simulate_cohort
from cartflow.store import Store, normalise_url
from tests import fcsparser_reference

REPO = Path(__file__).resolve().parent.parent
# commands the tests start as processes (`python -m cartflow.cli …`) run this checkout's code
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
)
SHARED = REPO.parent / "shared"
QUIRKS = SHARED / "fcs-quirks"
GATINGML = SHARED / "gatingml2-compliance"
FCSPARSER_DATA = fcsparser_reference.corpus_dir()
FIXTURE_COHORT = REPO / "fixtures" / "cohort"
PG_URL_ENV = "CARTFLOW_TEST_PG_URL"

# property tests explore new examples on every local run; CI replays a fixed set, so a run
# there passes or fails on the code alone (what a local run finds becomes an @example)
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def corpus_files() -> list[Path]:
    """Every real FCS file of fcs-quirks and fcsparser's packaged corpus."""
    files = sorted(QUIRKS.glob("*.fcs")) + sorted(QUIRKS.glob("*.lmd"))
    if FCSPARSER_DATA is not None:
        files += sorted(p for p in FCSPARSER_DATA.rglob("*") if p.suffix in {".fcs", ".lmd"})
    return files


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present beside the checkout")
    return path


def _postgres_url() -> str | None:
    return os.environ.get(PG_URL_ENV)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store URL on each backend (PostgreSQL: a throw-away database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    base = _postgres_url()
    if not base:
        pytest.skip(f"PostgreSQL store tests skipped: set {PG_URL_ENV} to a server URL")
    name = f"cartflow_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # server gone or unreachable
        pytest.skip(
            f"PostgreSQL store tests skipped: {base} unreachable ({exc.__class__.__name__})"
        )
    url = base.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def store(store_url):
    opened = Store(store_url)
    yield opened
    opened.close()


# --- simulated cohorts, generated once per session ---------------------------------------------
# Read-only by convention: a test that changes, adds or removes files copies the cohort first.
# The convention is checked: every shared cohort must end the session as it was generated.
CLI_COHORT_ARGS = ("--patients", "1", "--events", "3000", "--seed", "3")
"""`cartflow simulate` options of ``cli_cohort``: one patient, every tube and timepoint."""


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _unchanged(folders: dict[Path, dict[str, str]]) -> None:
    for folder, generated in folders.items():
        now = _digest(folder)
        changed = sorted(n for n in now.keys() | generated.keys() if now.get(n) != generated.get(n))
        assert not changed, f"{folder}: a test changed a shared cohort: {changed[:5]}"


@pytest.fixture(scope="session")
def simulated(tmp_path_factory) -> Iterator[Callable[[SimulationConfig], CohortSummary]]:
    """``simulated(config)``: the cohort of that configuration, simulated on the first request
    of the session into a folder of its own; later requests of the same configuration, from
    any module, get the same folder."""
    made: dict[SimulationConfig, CohortSummary] = {}
    digests: dict[Path, dict[str, str]] = {}

    def get(config: SimulationConfig) -> CohortSummary:
        if config not in made:
            summary = simulate_cohort(tmp_path_factory.mktemp("simulated"), config)
            made[config], digests[summary.out_dir] = summary, _digest(summary.out_dir)
        return made[config]

    yield get
    _unchanged(digests)


@pytest.fixture(scope="session")
def cli_cohort(tmp_path_factory) -> Iterator[Path]:
    """One patient, every tube and timepoint, 3000 events per file, written by the
    `cartflow simulate` command."""
    from typer.testing import CliRunner

    from cartflow.cli import app

    folder = tmp_path_factory.mktemp("cli-cohort") / "cohort"
    result = CliRunner().invoke(app, ["simulate", str(folder), *CLI_COHORT_ARGS])
    assert result.exit_code == 0, result.output
    generated = _digest(folder)
    yield folder
    _unchanged({folder: generated})
