"""``python -m pipeline.cli``: the ``cartflow`` command."""

from pipeline.cli.app import main

main()
