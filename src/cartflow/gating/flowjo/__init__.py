"""FlowJo 10 workspace (.wsp) export of one sample's gates, through FlowKit.

FlowKit writes the workspace around the sample (its keywords, group and spillover matrix) and
reads workspaces back; the gate tree is written here, because FlowKit's writer knows only
polygon and rectangle gates on linear and logicle scales. Each gate becomes FlowJo
populations as follows:

- range and rectangle gates: FlowJo range (1-D) or rectangle (2-D) gates; a box on more
  than two axes is a chain of nested rectangles, the last one named after the gate;
- polygons stay polygons; a 2-D ellipsoid becomes a polygon with enough vertices that every
  event of its parent population lies on the same side as for the ellipse;
- a quadrant gate becomes one rectangle population per quadrant;
- an 'and' of gates drawn on its own parent is nested (its first part, the others inside);
  any other boolean is a FlowJo And/Or/Not node, a complemented reference a Not node.

Compensated dimensions carry FlowJo's ``Comp-`` prefix and the matrix is stored in the
sample, where FlowJo and FlowKit look for it. Scales: flin, flog, logicle and fasinh have
FlowJo equivalents (flog as FlowJo's log, which clips below its offset); a range on another
scale is written at its raw cut, which selects the same events. Before anything is written
each gate is checked on the sample: on its parent's events, FlowKit's reading of the
workspace gate must select exactly the events the gate selects, or a :class:`GatingError`
names the gate. Gates a workspace cannot hold (fratio dimensions, polygons on a hyperlog
scale, 3-D ellipsoids, several compensation matrices) are refused the same way.
"""

from cartflow.gating.flowjo.builder import HELPER_MARK, MAX_VERTICES, MIN_VERTICES, USE_GATINGML
from cartflow.gating.flowjo.elements import DATATYPE_NS, TRANSFORM_NS
from cartflow.gating.flowjo.export import (
    batch_workspace,
    batch_workspace_bytes,
    export_flowjo,
    workspace_bytes,
)
from cartflow.gating.flowjo.nodes import COMP_PREFIX, FILE_MATRIX, NodeKind

__all__ = [
    "COMP_PREFIX",
    "DATATYPE_NS",
    "FILE_MATRIX",
    "HELPER_MARK",
    "MAX_VERTICES",
    "MIN_VERTICES",
    "TRANSFORM_NS",
    "USE_GATINGML",
    "NodeKind",
    "batch_workspace",
    "batch_workspace_bytes",
    "export_flowjo",
    "workspace_bytes",
]
