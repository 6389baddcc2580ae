"""Independent trainings in worker processes with one torch thread each.

The shards of one SISA fit or request train independently, so they can train in ``k``
single-thread processes instead of one process with ``k`` intra-op threads. Measured on
the quiet 2-core AMD EPYC with native bf16 (torch 2.13, fmnist_cnn, batch 100,
2026-11-24), threads win: the default profile's 5-shard fit (5 x 2,120 samples x 8
epochs) took 6.9 s with two threads and 10.4-11.0 s in two one-thread processes, and
``python -m bdunlearn.bench --quick`` gave 0.44x for processes (0.76x counting training
alone). So ``workers="auto"`` trains in this process; ``workers=k`` or the environment
variable ``BDUNLEARN_WORKERS=k`` asks for processes where a machine favours them (the
bench's "processes vs threads" row tells).

:func:`train_jobs` runs a list of :class:`Job` either in this process, one after another,
or in ``workers`` spawned processes. A job is a model, its own data and a list of
:class:`Stage` trained in order (the slices of a SISA shard: stage ``l`` trains on the
first ``count`` samples, continuing from stage ``l - 1``); the result of each stage is
its state dict (on the CPU) and its measured training seconds.

Bitwise identity: a worker trains with ``torch.set_num_threads(1)``. The CPU kernels sum
in an order that depends on the thread count (measured: fp32 and bf16 weights differ in
the last bits between one and two threads), so the workers' results are bitwise equal to
training the same jobs one after another in one process *with one thread*; with more
threads the sequential results differ in the last bits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import nn

from . import checks
from .train import TrainConfig, fit, resolve_device

WORKERS_ENV = "BDUNLEARN_WORKERS"


@dataclass
class Stage:
    """One training call of a job: the first ``count`` samples, ``epochs`` epochs placed at
    ``epoch_offset`` in the learning-rate schedule, batch order and augmentation from
    ``seed`` (see :func:`bdunlearn.train.fit`)."""

    count: int
    seed: int
    epochs: int
    epoch_offset: int = 0


@dataclass
class Job:
    """A model trained through ``stages`` in order on ``x`` (uint8) and ``y``."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    cfg: TrainConfig
    stages: list[Stage] = field(default_factory=list)

    @property
    def sample_epochs(self) -> int:
        return sum(s.count * s.epochs for s in self.stages)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_workers(jobs, workers="auto") -> int:
    """How many processes train ``jobs`` (any sequence, one entry per independent job);
    1 means in this process, one after another.

    An integer ``workers`` is used as given (capped at the number of jobs). ``"auto"``
    takes the integer in the environment variable ``BDUNLEARN_WORKERS`` when it is set,
    and is 1 otherwise: intra-op threads in this process were measured faster than
    one-thread worker processes (module docstring), and a CUDA device is shared anyway.
    Inside a daemonic process (a worker of a process pool), which may not start
    processes, the answer is always 1.
    """
    if workers == "auto":
        forced = os.environ.get(WORKERS_ENV, "").strip()
        if forced:
            try:
                workers = int(forced)
            except ValueError:
                raise ValueError(f"{WORKERS_ENV}={forced!r} must be a positive integer") \
                    from None
            if workers < 1:
                raise ValueError(f"{WORKERS_ENV}={forced!r} must be a positive integer")
        else:
            workers = 1
    else:
        workers = checks.integer("workers", workers, low=1)
    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(workers, len(jobs)))


def run_job(job: Job, device="cpu") -> list[tuple[dict, float]]:
    """Train ``job.model`` in place through its stages; ``(state dict on the CPU,
    training seconds)`` after each stage."""
    dev = resolve_device(device)
    out = []
    for st in job.stages:
        start = time.perf_counter()
        fit(job.model, job.x[: st.count], job.y[: st.count], job.cfg, seed=st.seed,
            device=dev, epochs=st.epochs, epoch_offset=st.epoch_offset)
        seconds = time.perf_counter() - start
        out.append(({k: v.detach().cpu().clone() for k, v in job.model.state_dict().items()},
                    seconds))
    return out


def train_jobs(jobs: list[Job], *, device="cpu", workers="auto",
               ) -> list[list[tuple[dict, float]]]:
    """Train every job; per job, the ``(state dict, seconds)`` of each of its stages.

    ``workers`` (``"auto"`` or a positive integer, see :func:`choose_workers`) decides
    between this process (the jobs' models are trained in place) and that many spawned
    processes with one torch thread each (the jobs' own models are left untouched; load
    the returned state dicts). Each worker receives only its jobs' data. A failing job
    raises one ``RuntimeError`` naming the job (the worker's traceback is attached as a
    note); Ctrl-C or any error here terminates the workers.
    """
    jobs = list(jobs)
    n = choose_workers(jobs, workers)
    if n == 1:
        return [run_job(job, device) for job in jobs]
    return _in_workers(jobs, n, str(resolve_device(device)))


def _in_workers(jobs: list[Job], n: int, device: str):  # noqa: C901
    ctx = torch.multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tasks, results, device), daemon=True)
             for _ in range(n)]
    try:
        with _main_module_hidden():
            for p in procs:
                p.start()
        for i, job in enumerate(jobs):  # pickled by value: no shared memory to keep alive
            tasks.put((i, pickle.dumps(job)))
        for _ in procs:
            tasks.put(None)
        out: list = [None] * len(jobs)
        for _ in jobs:
            i, blob, error = _next_result(results, procs)
            if error is not None:
                exc = RuntimeError(f"training job {i} failed in a worker process: {error[0]}")
                exc.add_note(error[1])
                raise exc
            out[i] = pickle.loads(blob)
        for p in procs:
            p.join()
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join()


@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-running the caller's script: a spawned process runs the
    parent's ``__main__`` file again unless it sits behind ``if __name__ == "__main__"``,
    and the workers need nothing from it (their code and the models live in bdunlearn)."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _next_result(results, procs):
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a training worker process died with exit code "
                                   f"{dead[0]} before returning its results") from None


def _worker(tasks, results, device: str) -> None:
    """Worker loop: one torch thread; Ctrl-C is the parent's to handle; ends when the
    parent sends ``None``, and at once when the parent dies (killed before it could
    terminate its workers), whatever the worker is doing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    torch.set_num_threads(1)
    while (item := tasks.get()) is not None:
        i, blob = item
        try:
            results.put((i, pickle.dumps(run_job(pickle.loads(blob), device)), None))
        except Exception as exc:  # reported to the parent, which raises it
            results.put((i, None, (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
