"""fcsparser, the reference FCS reader the tests hold cartflow's reader against.

fcsparser 0.2.8 needs numpy < 2 (it calls ``ndarray.newbyteorder``), while cartflow runs on
numpy 2. So fcsparser lives in an environment of its own (``.venv-fcsparser``, made by
``make test``; another interpreter can be named by ``CARTFLOW_FCSPARSER_PYTHON``) and is run
there as it is, unpatched; events come back as ``.npy`` files, keywords as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON_ENV = "CARTFLOW_FCSPARSER_PYTHON"

_PARSE = """
import json, sys, warnings
import numpy as np
import fcsparser
out = sys.argv[1]
reformat = sys.argv[2] == "1"
paths = sys.argv[3:]
result = {}
for i, path in enumerate(paths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            meta, frame = fcsparser.parse(path, reformat_meta=reformat)
        except Exception as exc:
            result[path] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
    np.save(f"{out}/{i}.npy", frame.to_numpy(dtype=np.float64))
    keywords = {k: v for k, v in meta.items() if not str(k).startswith("_")}
    result[path] = {"events": f"{out}/{i}.npy", "meta": keywords, "columns": list(frame.columns)}
print(json.dumps(result, default=str))
"""


def _interpreter() -> Path:
    configured = os.environ.get(PYTHON_ENV)
    return Path(configured) if configured else REPO / ".venv-fcsparser" / "bin" / "python"


def available() -> bool:
    return _interpreter().is_file()


def require() -> None:
    """Skip the calling test, saying how to make fcsparser's environment, when there is none."""
    if not available():
        pytest.skip(f"fcsparser's environment {_interpreter()} is missing: `make test` makes it")


def _run(code: str, *args: str) -> str:
    require()
    done = subprocess.run(
        [str(_interpreter()), "-c", code, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"fcsparser's environment failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


@cache
def corpus_dir() -> Path | None:
    """fcsparser's own packaged corpus of real cytometer files (None without its environment)."""
    if not available():
        return None
    code = "import fcsparser, os; print(os.path.dirname(fcsparser.__file__))"
    return Path(_run(code).strip()) / "tests" / "data" / "FlowCytometers"


class Parsed(NamedTuple):
    """A file as fcsparser reads it."""

    meta: dict[str, str]
    columns: list[str]
    events: np.ndarray


def parse_many(paths: list[Path], reformat_meta: bool = False) -> dict[Path, Parsed | str]:
    """Each file as fcsparser reads it, in one run: keywords and events (float64), or the
    error fcsparser raised for it."""
    with tempfile.TemporaryDirectory() as out:
        parsed = json.loads(_run(_PARSE, out, "1" if reformat_meta else "0", *map(str, paths)))
        return {
            path: entry["error"]
            if "error" in (entry := parsed[str(path)])
            else Parsed(entry["meta"], entry["columns"], np.load(entry["events"]))
            for path in paths
        }


def parse(path: Path, reformat_meta: bool = False) -> Parsed:
    """One file's keywords and events as fcsparser reads them."""
    result = parse_many([path], reformat_meta)[path]
    if isinstance(result, str):
        raise RuntimeError(f"fcsparser could not read {path}: {result}")
    return result


_events: dict[Path, np.ndarray] = {}


def events(path: Path, batch: list[Path] = ()) -> np.ndarray:
    """One file's events as fcsparser reads them. The files of ``batch`` are read in the same
    run and kept for later calls (each run starts an interpreter)."""
    if path not in _events:
        wanted = list(dict.fromkeys([path, *(p for p in batch if p not in _events)]))
        for p, result in parse_many(wanted).items():
            if not isinstance(result, str):
                _events[p] = result.events
    if path not in _events:
        return parse(path).events  # raises with fcsparser's error
    return _events[path]
