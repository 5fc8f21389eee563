"""Benchmarks, reported as ratios measured in one run (never as timed unit tests).

read: cartflow's reader against fcsparser, FlowIO and flowkit on the same file.
simulate: generation time of a 24-patient cohort at 50,000 events per file.
Usage: python bench/run.py [read] [simulate] [--events N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _write_file(path: Path, events: int) -> None:
    import flowio

    rng = np.random.default_rng(0)
    names = [
        "FSC-A",
        "FSC-H",
        "SSC-A",
        "BV421-A",
        "BV510-A",
        "BV605-A",
        "FITC-A",
        "PE-A",
        "PerCP-Cy5.5-A",
        "PE-Cy7-A",
        "APC-A",
        "APC-R700-A",
        "APC-H7-A",
        "Time",
    ]
    data = rng.lognormal(6, 1.5, size=(events, len(names))).astype(np.float32)
    data[:, -1] = np.arange(events, dtype=np.float32) / 100
    with path.open("wb") as fh:
        flowio.create_fcs(fh, data.ravel().tolist(), names)


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_read(events: int, repeat: int) -> None:
    import fcsparser
    import flowio
    import flowkit

    from cartflow.io.fcs import read_fcs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.fcs"
        _write_file(path, events)
        warnings.simplefilter("ignore")
        contenders = {
            "cartflow read_fcs (float32, scaled)": lambda: read_fcs(path),
            "fcsparser.parse": lambda: fcsparser.parse(str(path), reformat_meta=False),
            "flowio.FlowData": lambda: flowio.FlowData(str(path)),
            "flowkit.Sample": lambda: flowkit.Sample(str(path)),
        }
        results = {name: _median_seconds(fn, repeat) for name, fn in contenders.items()}
    ours = results["cartflow read_fcs (float32, scaled)"]
    print(f"read {events:,} events x 14 channels (median of {repeat})")
    for name, seconds in results.items():
        print(f"  {name:40s} {seconds * 1000:8.1f} ms   ratio to cartflow {seconds / ours:6.1f}x")


def bench_simulate(patients: int, events: int) -> None:
    """Cohort generation time (target: 24 patients x 9 timepoints x 3 tubes at 50k in < 60 s)."""
    from cartflow.simulate import SimulationConfig, simulate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = simulate_cohort(
            Path(tmp) / "cohort", SimulationConfig(patients=patients, seed=1, events=events)
        )
        seconds = time.perf_counter() - start
    print(
        f"simulate {patients} patients: {len(summary.files)} files x {events:,} events in "
        f"{seconds:.1f} s ({seconds / 60:.2f} of the one-minute budget)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", nargs="*", default=["read", "simulate"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if "read" in args.what:
        bench_read(args.events, args.repeat)
    if "simulate" in args.what:
        bench_simulate(24, 50_000)


if __name__ == "__main__":
    main()
