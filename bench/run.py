"""Benchmarks, reported as ratios measured in one run (never as timed unit tests).

Reading: cartflow's reader against fcsparser, FlowIO and flowkit on the same file.
Usage: python bench/run.py [--events N] [--repeat R]
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

    from pipeline.fcs import read_fcs

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_read(args.events, args.repeat)


if __name__ == "__main__":
    main()
