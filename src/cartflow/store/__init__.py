"""The results store: one SQLAlchemy schema on SQLite (default, WAL) or PostgreSQL (by URL).

Every stored number belongs to a run (software version, parameters, panel and template
hashes, timestamps) and to a file identified by its SHA-256. A file's rows are written in
one transaction, so an interrupted write leaves all of them or none.
"""

from cartflow.pipeline.records import (
    IDENTITY_FIELDS,
    STORED_KEYWORDS,
    FileRecord,
    GateRecord,
    PopulationRecord,
    SampleRecord,
    stored_keywords,
)
from cartflow.store.connection import DEFAULT_DB, MAKE_ONE, NO_STORE, normalise_url
from cartflow.store.corrections import OVERRIDES, REGATING, corrections_key
from cartflow.store.schema import (
    KEY_LENGTH,
    TABLES,
    Base,
    CorrectionRow,
    FcsFileRow,
    FileName,
    FlagRow,
    GateRow,
    GatingRow,
    KineticsRow,
    PopulationRow,
    QuarantineRow,
    ReplacementRow,
    Run,
    RunOwner,
    SampleRow,
)
from cartflow.store.store import Store

__all__ = [
    "DEFAULT_DB",
    "IDENTITY_FIELDS",
    "KEY_LENGTH",
    "MAKE_ONE",
    "NO_STORE",
    "OVERRIDES",
    "REGATING",
    "STORED_KEYWORDS",
    "TABLES",
    "Base",
    "CorrectionRow",
    "FcsFileRow",
    "FileName",
    "FileRecord",
    "FlagRow",
    "GateRecord",
    "GateRow",
    "GatingRow",
    "KineticsRow",
    "PopulationRecord",
    "PopulationRow",
    "QuarantineRow",
    "ReplacementRow",
    "Run",
    "RunOwner",
    "SampleRecord",
    "SampleRow",
    "Store",
    "corrections_key",
    "normalise_url",
    "stored_keywords",
]
