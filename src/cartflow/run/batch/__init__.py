"""Orchestration of a batch: ingest → gate → counts → kinetics, results into the store and
tables into the output folder. Each stage is a module of its own; this package only wires them.

Modules: ``work`` (what is gated and what gating produced), ``one_file`` (gating one file),
``workers`` (gating in parallel), ``steps`` (the steps after gating), ``inputs`` (the
tables a run reads once at its start), ``run`` (a run from start to end), ``watch`` (files
that finished arriving); each imports only those before it.
"""

from cartflow.run.batch.inputs import RunInputs, read_run_inputs
from cartflow.run.batch.one_file import gate_one, regate_sample
from cartflow.run.batch.run import Advance, RunSettings, RunSummary, StageProgress, run_batch
from cartflow.run.batch.steps import (
    FollowUp,
    follow_up,
    outcome_inputs,
    outcomes_stage,
    review_state,
)
from cartflow.run.batch.watch import ArrivalWatch
from cartflow.run.batch.work import (
    FixedGates,
    GateWork,
    Override,
    PendingFile,
    SampleCorrections,
    pending_gating,
    sample_corrections,
    write_gating,
)
from cartflow.run.batch.workers import (
    PR_SET_PDEATHSIG,
    WORKER_ATTEMPTS,
    gate_batch,
    gate_in_processes,
    gate_parallel,
)

__all__ = [
    "PR_SET_PDEATHSIG",
    "WORKER_ATTEMPTS",
    "Advance",
    "ArrivalWatch",
    "FixedGates",
    "FollowUp",
    "GateWork",
    "Override",
    "PendingFile",
    "RunInputs",
    "RunSettings",
    "RunSummary",
    "SampleCorrections",
    "StageProgress",
    "follow_up",
    "gate_batch",
    "gate_in_processes",
    "gate_one",
    "gate_parallel",
    "outcome_inputs",
    "outcomes_stage",
    "pending_gating",
    "read_run_inputs",
    "regate_sample",
    "review_state",
    "run_batch",
    "sample_corrections",
    "write_gating",
]
