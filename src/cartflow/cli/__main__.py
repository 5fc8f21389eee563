"""``python -m cartflow.cli``: the ``cartflow`` command."""

from cartflow.cli.app import main

main()
