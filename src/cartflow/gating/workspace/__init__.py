"""A lab's gating as its software saved it: FlowJo 10 workspaces (read through FlowKit).

Each gate is addressed by its full path from the sample root (``Time/Singlets/CD3+/CD8+``),
so equal names under different parents stay distinct. Every population the workspace holds
for a sample is checked to have arrived: one FlowKit could not read is an error naming its
path and what FlowJo calls it, never a silent omission. FlowJo's own counts are kept with
each population, so what cartflow counts can be compared with them.

A data file is matched to its workspace sample by name (the sample name or its file's
name), then by ``$FIL``, then by event count when exactly one sample has it; otherwise the
error names the file and the workspace's samples.
"""

from cartflow.gating.samples import match_sample
from cartflow.gating.workspace.flowjo10 import (
    FLOWKIT_RESERVED,
    NODE_TAGS,
    READABLE_KINDS,
    READABLE_SCALES,
    FlowJoWorkspace,
    StoredPopulation,
    WorkspaceSample,
    read_flowjo_workspace,
)
from cartflow.gating.workspace.loading import MAX_WORKSPACE_BYTES, load_lab_gates
from cartflow.gating.workspace.sources import GatingMLGates, TemplateSource, WorkspaceGroup

__all__ = [
    "FLOWKIT_RESERVED",
    "MAX_WORKSPACE_BYTES",
    "NODE_TAGS",
    "READABLE_KINDS",
    "READABLE_SCALES",
    "FlowJoWorkspace",
    "GatingMLGates",
    "StoredPopulation",
    "TemplateSource",
    "WorkspaceGroup",
    "WorkspaceSample",
    "load_lab_gates",
    "match_sample",
    "read_flowjo_workspace",
]
