"""The ``cartflow`` Typer app: consoles, root callback, helpers every command shares, ``main``."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from typer.core import TyperGroup

from cartflow import __version__
from cartflow.io.errors import CartflowError

COMMANDS = ("inspect", "ingest", "gate", "pool", "run", "review", "override", "watch", "kinetics",
            "outcomes", "export", "simulate", "demo", "spillover", "config", "panel")  # fmt: skip
"""The order ``cartflow --help`` lists the commands in, whichever module defines them."""


class _Commands(TyperGroup):
    """The command group, listing its commands in the order of ``COMMANDS`` (others after)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMANDS)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    name="cartflow",
    help="Flow-cytometry monitoring of CAR-T cell therapy: ingest, gate, count, follow up.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
console = Console(highlight=False, markup=False)  # text from data is printed as it is
errors = Console(stderr=True, highlight=False, markup=False)


OUT_MARK = ".cartflow-out"
"""Marks a folder cartflow writes its outputs into (so that it may write there again)."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
    return typer.Exit(code)


def _writable(path: Path | None, *, folder: bool, create: bool = True) -> None:
    """Create an output folder (or an output file's folder) before any work, so that one that
    cannot be written fails at once, in one line naming it. With ``create=False`` (an output
    that may not be needed) only check that the folder could be made."""
    if path is None:
        return
    if path.exists() and path.is_dir() != folder:
        raise _fail(
            f"{path}: " + ("is a file, not a folder" if folder else "is a folder, not a file")
        )
    target = path if folder else path.parent
    if not create:
        existing = next(p for p in (target, *target.parents) if p.exists())
        if not existing.is_dir():
            raise _fail(f"{path}: cannot be written: {os.strerror(errno.ENOTDIR)}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise _fail(f"{path}: cannot be written: {os.strerror(errno.EACCES)}")
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"{path}: cannot be written: {exc.strerror or exc}") from None


def _claim_out(out: Path, force: bool) -> None:
    """Make ``out`` cartflow's output folder; one holding files of unknown origin (no mark
    of an earlier cartflow output) is refused unless ``force``."""
    _writable(out, folder=True)
    mark = out / OUT_MARK
    if mark.is_file():
        return
    foreign = sorted(p.name for p in out.iterdir())
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise _fail(
            f"{out}: holds files cartflow did not write ({shown}); choose another --out, or "
            "give --force to write there (its tables are then replaced)"
        )
    try:
        mark.write_text("cartflow output folder\n", encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{mark}: cannot be written: {exc.strerror or exc}") from None


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cartflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """cartflow command line."""


def _lab_config(config: Path | None):
    """The lab configuration folder read (the shipped one without ``--config``); a bad one
    fails in one line naming the file and line."""
    return _lab_setup(config).config


def _lab_setup(config: Path | None):
    """:func:`_lab_config` with the analysis settings and ALL-Hematotox table it read, for
    the command to hand down (a ``CheckedConfig``)."""
    from cartflow.pipeline.config_check import load_checked_setup

    try:
        return load_checked_setup(config)
    except CartflowError as exc:
        raise _fail(f"{exc} (`cartflow config check DIR` lists every problem)") from None


def _load_context(manifest: Path | None, rules: Path | None, lab=None):
    """Manifest and identity rules: ``--rules``, else the configuration's, else the default."""
    from cartflow.panels.identity_rules import IdentityRules
    from cartflow.pipeline.identity import load_manifest

    loaded_manifest = load_manifest(manifest) if manifest else None
    if rules:
        loaded_rules = IdentityRules.from_yaml(rules)
    else:
        loaded_rules = lab.identity if lab is not None else IdentityRules()
    return loaded_manifest, loaded_rules


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )


def _by(name: str | None) -> str:
    import getpass

    return name or os.environ.get("CARTFLOW_USER") or getpass.getuser()


def _store_failure(exc: BaseException) -> str | None:
    """The one-line problem of a store that failed mid-command (locked by another process,
    read-only, gone), or None for any other error."""
    if "sqlalchemy" not in sys.modules:  # not imported: the error cannot be one of its own
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from cartflow.io.errors import first_line

    if not isinstance(exc, SQLAlchemyError):
        return None
    problem = first_line(getattr(exc, "orig", None) or exc)
    if "locked" in problem:
        problem += " (another process is writing to it; try again when it is done)"
    return problem


def _terminate(signum: int, _frame) -> None:
    """SIGTERM ends the command as Ctrl-C does: runs are marked failed, workers stop."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:  # typer's exit on Ctrl-C (and on SIGTERM, through _terminate)
            errors.print("interrupted: a run in progress is marked failed; run again to finish")
        raise
    except CartflowError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # an output that could not be written after all (a full disk)
        where = f"{exc.filename}: " if exc.filename else ""
        errors.print(f"error: {where}{exc.strerror or exc}", soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        problem = _store_failure(exc)
        if problem is None:
            raise
        errors.print(f"error: the store failed: {problem}", soft_wrap=True)
        sys.exit(1)
