"""Benchmark inputs: simulated memory-tube files of an exact size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KEPT_KEYWORDS = {"$CYT", "$SPILLOVER", "$TIMESTEP", "TUBE NAME", "$DATE"}


def base_events(folder: Path, events: int):
    """One simulated memory-tube file, its rows tiled to ``events`` when the tube held fewer
    (time shifted so that it keeps increasing)."""
    from cartflow.io.fcs import read_fcs
    from cartflow.simulate import SimulationConfig, simulate_cohort

    config = SimulationConfig(
        patients=1, seed=11, events=events, tubes=("memory",), timepoints=("D11",)
    )
    fcs = read_fcs(simulate_cohort(folder, config).files[0], scale=False)
    data = fcs.events
    if data.shape[0] < events:
        reps = int(np.ceil(events / data.shape[0]))
        time_col = fcs.channel_names.index("Time")
        span = float(data[:, time_col].max()) + 1.0
        tiles = [data.copy() for _ in range(reps)]
        for i, tile in enumerate(tiles):
            tile[:, time_col] += i * span
        data = np.concatenate(tiles)[:events]
    return fcs, data


def write_memory_files(folder: Path, count: int, events: int) -> list[Path]:
    """``count`` files of ``events`` events, each its own patient (distinct SHA-256)."""
    import flowio

    fcs, data = base_events(folder / "base", events)
    batch = folder / "batch"
    batch.mkdir(parents=True, exist_ok=True)
    metadata = {k.lstrip("$").lower(): v for k, v in fcs.text.items() if k in KEPT_KEYWORDS}
    flat = data.astype(np.float32).ravel()
    labels = [c.marker or "" for c in fcs.channels]
    written = []
    for i in range(count):
        patient = f"BENCH-{i:03d}"
        meta = {**metadata, "PATIENT ID": patient, "TIMEPOINT": "D11"}
        path = batch / f"{patient} D11_CAR-T memory_001.fcs"
        with path.open("wb") as fh:
            flowio.create_fcs(
                fh, flat, fcs.channel_names, opt_channel_names=labels, metadata_dict=meta
            )
        written.append(path)
    return written
