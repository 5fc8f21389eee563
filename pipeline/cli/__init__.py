"""The ``cartflow`` command line: the Typer app and its entry point."""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
