"""Gating a batch's pending files in parallel (forked worker processes or a Dask cluster) and
storing each as it finishes; a worker that dies costs only its file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import wait as wait_for

from cartflow.run.batch.one_file import gate_one
from cartflow.run.batch.work import GateWork, PendingFile, write_gating
from cartflow.store import Store


def _one_thread_each() -> None:
    """Worker set-up: one BLAS/OpenMP thread per process (the processes are the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


PR_SET_PDEATHSIG = 1
WORKER_ATTEMPTS = 2
"""A file whose worker process is killed is tried once more, then given up (quarantined)."""


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the process that started it dies, even by
    kill -9 (Linux); elsewhere, and if the parent is already gone, stop now."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's clean-up still stops workers
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Held back while a worker is forked: a stop arriving mid-fork would land in the fork's
own hooks, where Python ignores the exception it raises, and the run would go on."""


@contextmanager
def _stops_held():
    """Stops that arrive inside the block are noted and delivered when it ends. The handlers
    are swapped, not the signal mask: a mask holds only this thread, and the kernel may hand
    a stop to any other thread (a BLAS pool), whose handler then runs mid-fork all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    handlers = {stop: signal.signal(stop, lambda signum, _frame: arrived.append(signum))
                for stop in _STOP_SIGNALS}  # fmt: skip
    try:
        yield
    finally:
        for stop, handler in handlers.items():
            signal.signal(stop, handler)
        for stop in dict.fromkeys(arrived):
            signal.raise_signal(stop)


def _gate_in_worker(item: PendingFile, sender, parent_pid: int) -> None:
    for stop in _STOP_SIGNALS:  # a stopped worker ends quietly, not with a traceback
        signal.signal(stop, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    _one_thread_each()
    sender.send(gate_one(item))
    sender.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        how = " (as the out-of-memory killer does)" if name == "SIGKILL" else ""
        return f"killed by {name}{how}"
    return f"ended with exit code {exitcode} before reporting"


def gate_in_processes(pending: Sequence[PendingFile], workers: int) -> Iterator[GateWork]:
    """Gate each file in a forked process of its own, ``workers`` at a time. A process that
    dies (kill -9, out of memory) costs only its file: tried once more, then reported as a
    failed work with ``worker_died``; workers die with this process."""
    context = multiprocessing.get_context("fork")
    if any(item.plots is not None for item in pending):
        from cartflow.report.density import load_png_writer

        load_png_writer()  # here once, not in each forked worker
    queue = deque((item, 1) for item in pending)
    running: dict = {}  # receiving end -> (process, item, attempt)
    try:
        while queue or running:
            while queue and len(running) < workers:
                item, attempt = queue.popleft()
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_gate_in_worker, args=(item, sender, os.getpid()), daemon=True
                )
                with _stops_held():  # a stop that came meanwhile is delivered after it
                    process.start()
                sender.close()
                running[receiver] = (process, item, attempt)
            for receiver in wait_for(list(running)):
                process, item, attempt = running.pop(receiver)
                try:
                    work = receiver.recv()
                except (EOFError, OSError, ValueError, TypeError, AttributeError):
                    work = None  # died before or while reporting
                receiver.close()
                process.join()
                if work is not None:
                    yield work
                elif attempt < WORKER_ATTEMPTS:
                    queue.append((item, attempt + 1))
                else:
                    yield GateWork(
                        item.path, item.sha256, item.sample_id, "", "", worker_died=True,
                        error=f"worker process {_death(process.exitcode)}, "
                        f"{WORKER_ATTEMPTS} times",
                    )  # fmt: skip
    finally:  # interrupted: stop the workers still gating, without waiting on them long
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def gate_parallel(
    pending: Sequence[PendingFile], workers: int = 1, scheduler: str | None = None
) -> Iterator[GateWork]:
    """Gate files as they finish: in this process, in local worker processes, or on a Dask
    distributed cluster (``scheduler`` = ``tcp://host:port``)."""
    if not pending:
        return
    if scheduler:
        from dask.distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.map(gate_one, list(pending), pure=False)
            for future in as_completed(futures):
                yield future.result()
        return
    if workers <= 1:
        yield from map(gate_one, pending)
        return
    yield from gate_in_processes(pending, workers)


def gate_batch(
    store: Store,
    run_id: int,
    pending: Sequence[PendingFile],
    on_file: Callable[[GateWork], None] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> list[GateWork]:
    """Gate pending files (in parallel when asked) and store each as it finishes; returns
    those this run stored (not those another run stored first meanwhile) and those whose
    worker died."""
    done = []
    for work in gate_parallel(pending, workers, scheduler):
        # a file whose worker died is not stored as gated: a later run tries it again
        if work.worker_died or write_gating(store, run_id, work):
            done.append(work)
        if on_file:
            on_file(work)
    return done
