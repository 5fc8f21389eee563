"""Full automated gating of the memory tube against flowkit applying the same final gates.

For 100k, 1M and 5M-event files (generated), in one run: cartflow end to end (read →
compensate → place thresholds → evaluate all populations) and flowkit's Session applying the
exported Gating-ML of the same placed gates (read → compensate → transform → gate). Prints
cartflow's events per second (one core: placement runs single-threaded), the time ratio,
cartflow's peak traced memory as a multiple of the event matrix, and whether flowkit's
counts of every population equal cartflow's.

Usage: python bench/gating_speed.py [--events 100000 1000000 5000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path


def _one_file(folder: Path, events: int) -> Path:
    from files import write_memory_files

    return write_memory_files(folder, 1, events)[0]


def _ours(path: Path):
    from cartflow.pipeline.gate import gate_file

    return gate_file(path, tube="memory")


def _flowkit(path: Path, gates_xml: Path) -> dict[str, int]:
    import flowkit

    session = flowkit.Session(
        gating_strategy=flowkit.parse_gating_xml(str(gates_xml)),
        fcs_samples=[flowkit.Sample(str(path))],
    )
    session.analyze_samples()
    report = session.get_gating_results(session.get_sample_ids()[0]).report
    return dict(zip(report.gate_name, report["count"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import flowkit  # noqa: F401

    import cartflow.pipeline.gate  # noqa: F401 - imports stay out of the timings
    from cartflow.gating.gatingml import export_gatingml, xml_id

    print(
        f"{'events':>10} {'cartflow s':>11} {'M events/s':>11} {'flowkit s':>10} {'ratio':>7} "
        f"{'peak/matrix':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.events:
            path = _one_file(Path(tmp) / f"n{n}", n)
            _ours(path)  # first use: lazy imports and caches stay out of the timings
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                _ours(path)  # each result let go, as a batch lets go of each file's
                times.append(time.perf_counter() - start)
            tracemalloc.start()
            gated = _ours(path)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            matrix = gated.fcs.events.nbytes
            xml = Path(tmp) / f"gates{n}.xml"
            export_gatingml(gated.placed.gate_set, xml)
            fk_times = []
            for _ in range(max(1, args.repeat if n <= 1_000_000 else 1)):
                start = time.perf_counter()
                counts = _flowkit(path, xml)
                fk_times.append(time.perf_counter() - start)
            pops = gated.placed.populations
            same = all(counts[xml_id(p)] == gated.result.count(p) for p in pops)
            ours, theirs = statistics.median(times), statistics.median(fk_times)
            print(
                f"{gated.fcs.event_count:>10,} {ours:>11.3f} {n / ours / 1e6:>11.2f} "
                f"{theirs:>10.2f} {theirs / ours:>6.1f}x "
                f"{peak / matrix:>11.2f}x  same counts: {same}"
            )
            del gated


if __name__ == "__main__":
    main()
