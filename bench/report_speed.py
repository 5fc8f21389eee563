"""What the HTML report adds to `cartflow run`, and a study-sized run end to end.

On a simulated cohort (3 patients x 50,000 events by default), in one run: `cartflow run`
without the report and with it, each on a fresh store, in turns (A B A B …, so a drift of the
machine's speed hits both), then a re-run with nothing new (its plots drawn: 0). Then a larger
cohort (24 patients) end to end with the report: wall time and the report's size on disk.
Times are whole `cartflow run` processes (what the lab waits for), wall seconds and the CPU
seconds of the process and its workers (on a machine shared with other work the CPU seconds
vary less than the wall seconds).

Usage: python bench/report_speed.py [--patients 3] [--events 50000] [--pairs 2] [--workers 2]
        [--study-patients 24]   (0 skips the study-sized run)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRAWN = re.compile(r"\((\d+) samples' plots and (\d+) patient figures drawn")


def _simulate(folder: Path, patients: int, events: int) -> Path:
    cohort = folder / f"cohort{patients}"
    subprocess.run(
        [*_cartflow(), "simulate", str(cohort), "--patients", str(patients), "--seed", "7",
         "--events", str(events)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cohort


def _cartflow() -> list[str]:
    return [sys.executable, "-m", "cartflow.cli"]


def _cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _run(cohort: Path, out: Path, workers: int, report: bool) -> tuple[float, str, float]:
    """One `cartflow run` (its store in ``out``): wall seconds, what it printed and the CPU
    seconds of it and its workers."""
    out.mkdir(parents=True, exist_ok=True)
    command = [*_cartflow(), "run", str(cohort), "--manifest", str(cohort / "manifest.csv"),
               "--db", f"sqlite:///{out / 'store.sqlite'}", "--out", str(out),
               "--workers", str(workers), *([] if report else ["--no-report"])]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    cpu, start = _cpu_of_children(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    if done.returncode not in (0, 2):
        raise SystemExit(f"cartflow run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout, cpu


def _drawn(output: str) -> tuple[int, int]:
    found = DRAWN.search(" ".join(output.split()))
    if not found:
        raise SystemExit(f"no count of drawn plots in the output:\n{output[-1500:]}")
    return int(found.group(1)), int(found.group(2))


def _sizes(folder: Path) -> dict[str, int]:
    """Bytes of a folder's files by kind (suffix), largest first."""
    sizes: dict[str, int] = {}
    for f in folder.rglob("*"):
        if f.is_file():
            sizes[f.suffix or f.name] = sizes.get(f.suffix or f.name, 0) + f.stat().st_size
    return dict(sorted(sizes.items(), key=lambda kind: -kind[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--study-patients", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cohort = _simulate(folder, args.patients, args.events)
        files = len(list(cohort.glob("*.fcs")))
        plain, with_report, cpu_plain, cpu_report = [], [], [], []
        for i in range(args.pairs):
            for report, times, cpus in ((False, plain, cpu_plain), (True, with_report, cpu_report)):
                out = folder / f"out-{i}-{report}"
                seconds, output, cpu = _run(cohort, out, args.workers, report)
                times.append(seconds)
                cpus.append(cpu)
                if report:
                    drawn = _drawn(output)
                    again, output, _ = _run(cohort, out, args.workers, True)
                    redrawn = _drawn(output)
                shutil.rmtree(out)
        ratios = [r / p for p, r in zip(plain, with_report, strict=True)]
        cpu_ratios = [r / p for p, r in zip(cpu_plain, cpu_report, strict=True)]
        print(f"cohort: {args.patients} patients, {files} files x {args.events:,} events, "
              f"--workers {args.workers}")  # fmt: skip
        print(f"run --no-report s: {' '.join(f'{t:.1f}' for t in plain)}")
        print(f"run with report s: {' '.join(f'{t:.1f}' for t in with_report)}")
        print(f"report adds: {100 * (statistics.median(ratios) - 1):+.1f} % (median of pairs; "
              f"pairs {', '.join(f'{100 * (r - 1):+.1f} %' for r in ratios)})")  # fmt: skip
        print(f"CPU s without / with report: {' '.join(f'{t:.1f}' for t in cpu_plain)} / "
              f"{' '.join(f'{t:.1f}' for t in cpu_report)}; report adds "
              f"{100 * (statistics.median(cpu_ratios) - 1):+.1f} % CPU")  # fmt: skip
        print(
            f"first run drew {drawn[0]} samples' plots and {drawn[1]} patient figures; "
            f"a re-run with nothing new: {redrawn[0]} and {redrawn[1]} ({again:.1f} s)"
        )
        if args.study_patients:
            study = _simulate(folder, args.study_patients, args.events)
            files = len(list(study.glob("*.fcs")))
            out = folder / "study"
            seconds, output, cpu = _run(study, out, args.workers, True)
            drawn = _drawn(output)
            sizes = _sizes(out / "report")
            size = sum(sizes.values())
            print(f"study: {args.study_patients} patients, {files} files x {args.events:,} "
                  f"events, end to end with the report: {seconds:.1f} s ({cpu:.0f} CPU s); report "
                  f"{size / 2**20:.1f} MiB ({drawn[0]} samples' plots)")  # fmt: skip
            print("report by kind: " + ", ".join(
                f"{kind} {n / 2**20:.1f} MiB" for kind, n in sizes.items()))  # fmt: skip


if __name__ == "__main__":
    main()
