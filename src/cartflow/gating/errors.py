"""The one exception the gating engine raises for bad input: it names the source and the problem."""

from __future__ import annotations

from pathlib import Path

from cartflow.io.errors import CartflowError


class GatingError(CartflowError):
    """A gate definition, Gating-ML document or event matrix cannot be used for gating.

    ``source`` names what was wrong (a file path, or ``gate 'CD3+'``), ``problem`` says what;
    the message is ``"source: problem"``.
    """

    code = "gating"

    def __init__(self, source: str | Path, problem: str) -> None:
        super().__init__(source, problem)
