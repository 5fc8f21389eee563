"""A batch end to end: N memory-tube files of ~1M events through `run_batch` (ingest, gate,
counts, kinetics; no HTML report), against flowkit's Session applying the same final gates
to the same files one by one, in one run. Prints the time ratio and cartflow's peak memory
for each batch size, so that memory can be seen to stay bounded as the batch grows.

Usage: python bench/batch_speed.py [--files 50 200] [--events 1000000] [--workers 2]
        [--flowkit-sample 20]   (flowkit is timed on that many files and scaled per file)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def _write_batch(folder: Path, count: int, events: int) -> Path:
    from files import write_memory_files

    return write_memory_files(folder, count, events)[0].parent


def _cartflow(batch: Path, workers: int, db: str) -> tuple[float, int]:
    """Time and peak memory (largest RSS of the run's own process or any of its workers),
    measured in a fresh process so nothing else in this one counts."""
    import json
    import subprocess
    import sys

    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from cartflow.run.batch import RunSettings, run_batch\n"
        "from cartflow.store import Store\n"
        "batch, workers, db = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]\n"
        "store = Store(db)\n"
        "start = time.perf_counter()\n"
        "summary = run_batch(batch, store, RunSettings(out=batch.parent / 'out',"
        " workers=workers, html_report=False))\n"
        "seconds = time.perf_counter() - start\n"
        "peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(json.dumps({'seconds': seconds, 'peak_kib': peak,"
        " 'failed': len(summary.failed)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(batch), str(workers), db],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == 0, done.stdout
    return result["seconds"], result["peak_kib"] * 1024


def _flowkit(files: list[Path]) -> float:
    import flowkit

    from cartflow.gating.gatingml import export_gatingml
    from cartflow.pipeline.gate import gate_file

    total = 0.0
    for path in files:
        xml = path.with_suffix(".xml")
        export_gatingml(gate_file(path).placed.gate_set, xml)
        start = time.perf_counter()
        session = flowkit.Session(
            gating_strategy=flowkit.parse_gating_xml(str(xml)),
            fcs_samples=[flowkit.Sample(str(path))],
        )
        session.analyze_samples()
        session.get_gating_results(session.get_sample_ids()[0])
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flowkit-sample", type=int, default=20)
    parser.add_argument("--skip-flowkit", action="store_true", help="time and memory only")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import flowkit  # noqa: F401 - imports stay out of the timings

    import cartflow.run.batch  # noqa: F401

    print(
        f"{'files':>6} {'events':>10} {'cartflow s':>11} {'flowkit s':>10} {'ratio':>7} "
        f"{'peak RSS MiB':>13} {'matrix MiB':>11}"
    )
    for count in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            batch = _write_batch(Path(tmp), count, args.events)
            db = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
            ours, peak = _cartflow(batch, args.workers, db)
            files = sorted(batch.glob("*.fcs"))
            sample = files[: max(1, min(args.flowkit_sample, count))]
            theirs = float("nan") if args.skip_flowkit else _flowkit(sample) * count / len(sample)
            matrix = args.events * 14 * 4
            print(
                f"{count:>6} {args.events:>10,} {ours:>11.1f} {theirs:>10.1f} "
                f"{theirs / ours:>6.1f}x {peak / 2**20:>13.0f} {matrix / 2**20:>11.0f}"
            )


if __name__ == "__main__":
    main()
