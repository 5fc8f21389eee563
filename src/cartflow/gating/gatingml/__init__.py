"""Gating-ML 2.0 in and out, through FlowKit's parser and writer.

FlowKit reads the XML into its GatingStrategy, which is then converted into our model; export
builds a GatingStrategy from our model and lets FlowKit write it. Before FlowKit sees a
document it is checked here: size-limited, parsed without DTDs, entities or network, and
refused if it has a DOCTYPE or entity references. FlowKit is imported lazily (it is slow to
import).
"""

from cartflow.gating.gatingml.document import (
    GATING_NS,
    MAX_DOCUMENT_BYTES,
    MAX_GATES,
    MAX_WORKSPACE_GATES,
    UNCOMPENSATED,
    DoctypeFoundError,
    DoctypeGuard,
    TooManyGatesError,
    read_bounded,
    safe_parser,
)
from cartflow.gating.gatingml.reader import from_flowkit, load_gatingml
from cartflow.gating.gatingml.writer import (
    export_gatingml,
    gatingml_bytes,
    to_flowkit,
    with_xml_ids,
    xml_id,
)

__all__ = [
    "GATING_NS",
    "MAX_DOCUMENT_BYTES",
    "MAX_GATES",
    "MAX_WORKSPACE_GATES",
    "UNCOMPENSATED",
    "DoctypeFoundError",
    "DoctypeGuard",
    "TooManyGatesError",
    "export_gatingml",
    "from_flowkit",
    "gatingml_bytes",
    "load_gatingml",
    "read_bounded",
    "safe_parser",
    "to_flowkit",
    "with_xml_ids",
    "xml_id",
]
