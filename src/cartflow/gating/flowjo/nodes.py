"""FlowJo populations and parameter scales, as the builder makes them and the writer writes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cartflow.gating.transforms import (
    Fasinh,
    Flin,
    Flog,
    FlowJoBiex,
    FlowJoLog,
    Logicle,
    ScaleTransform,
)

COMP_PREFIX = "Comp-"
"""FlowJo's name prefix of a compensated parameter."""
FILE_MATRIX = "Acquisition-defined"
"""FlowJo's name of the data file's own spillover matrix."""

NodeKind = Literal["rectangle", "polygon", "and", "or", "not"]


@dataclass(frozen=True)
class _Scale:
    """A FlowJo parameter transformation: its element, attributes and FlowKit reading."""

    tag: str
    attrs: tuple[tuple[str, float], ...]

    def flowkit(self) -> Any:
        """The transformation FlowKit builds when it reads this element."""
        from flowkit import transforms as fkt

        a = dict(self.attrs)
        if self.tag == "linear":
            return fkt.LinearTransform(a["maxRange"], a["minRange"])
        if self.tag == "log":
            return fkt.WSPLogTransform(a["offset"], a["decades"])
        if self.tag == "logicle":
            return fkt.LogicleTransform(a["T"], a["W"], a["M"], a["A"])
        if self.tag == "biex":
            return fkt.WSPBiexTransform(a["neg"], a["width"], a["pos"], a["maxRange"])
        return fkt.AsinhTransform(a["T"], a["M"], a["A"])


def _scale_for(transform: ScaleTransform | None) -> _Scale | None:
    """The FlowJo equivalent of a scale transformation, or None if it has none."""
    match transform:
        case Flin(t=t, a=a):
            low = -a if t - a > 0 else 0.0  # FlowJo's minRange is the display minimum, -A
            return _Scale("linear", (("minRange", low), ("maxRange", t)))
        case Flog(t=t, m=m):
            return _Scale("log", (("offset", t / 10**m), ("decades", m)))
        case Logicle(t=t, w=w, m=m, a=a):
            return _Scale("logicle", (("T", t), ("W", w), ("M", m), ("A", a), ("length", 256)))
        case Fasinh(t=t, m=m, a=a):
            return _Scale("fasinh", (("T", t), ("M", m), ("A", a), ("length", 256)))
        case FlowJoLog(offset=offset, decades=decades):
            return _Scale("log", (("offset", offset), ("decades", decades)))
        case FlowJoBiex(negative=neg, width=width, positive=pos, max_value=top):
            return _Scale(
                "biex",
                (("neg", neg), ("width", width), ("pos", pos), ("maxRange", top), ("length", 256)),
            )
    return None


@dataclass(frozen=True)
class _Node:
    """One FlowJo population: a gate on parameters (raw coordinates) or a boolean node."""

    name: str
    parent: str | None
    kind: NodeKind
    params: tuple[str, ...] = ()
    limits: tuple[tuple[float | None, float | None], ...] = ()
    vertices: tuple[tuple[float, float], ...] = ()
    refs: tuple[str, ...] = ()
    label: str | None = None
    """The name FlowJo shows, when not ``name`` (unique among its siblings only)."""

    @property
    def shown(self) -> str:
        """The population's name in the workspace."""
        return self.label or self.name
