"""The ``cartflow`` command line: the Typer app, its commands and its entry point."""

from cartflow.cli import batch, config, data, gating, inspect, review, tools  # register commands
from cartflow.cli.app import app, main

__all__ = ["app", "batch", "config", "data", "gating", "inspect", "main", "review", "tools"]
