"""Train a profile's planned jobs on Ray or in local worker processes, then run the notebooks.

``python -m bdunlearn.sweep --profile P [-p NAME VALUE ...] [--only 01,04]
[--ray none|auto|local|ADDRESS] [--workers N] [--no-notebooks]``

The jobs come from :func:`bdunlearn.plan.plan`; each trains one SISA slice checkpoint, or
runs one request chain (the request filter's or an Amnesiac trajectory), into the
checkpoint cache (``BDUNLEARN_CACHE``; on a cluster, a folder every node sees). A job is
submitted only after the jobs it builds on have finished. Every task runs
on one thread (``num_cpus=1``) or, for a CUDA job, on a share of a GPU sized to its model.
Inside the task the service locks the job's key and checks the cache again
(:mod:`bdunlearn.cache`), so two sweeps on the same cache never train the same job twice;
checkpoints are written atomically, so a worker killed mid-task leaves nothing partial,
and Ray retries the task (``max_retries``). A second sweep trains only what is missing.
Then (unless ``--no-notebooks``) the notebooks run through :mod:`bdunlearn.reproduce` and
find every planned model in the cache.

``--ray none`` (the default) runs the jobs in local spawned worker processes and needs
no Ray; ``local`` starts a private Ray cluster on this machine (``--workers`` CPUs);
``auto`` joins the cluster ``ray start`` began on this machine (or ``RAY_ADDRESS``);
anything else is a cluster address such as ``ray://head:10001``. Ray is imported only
when asked for (``pip install "bdunlearn[cluster]"``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .cache import default_cache_dir
from .config import PROFILES, profile_datasets, profile_name
from .layout import available, parse_only
from .plan import Chain, Job, plan
from .reproduce import _value, writing

MAX_RETRIES = 3  # Ray re-runs a task whose worker died this many times


# ----------------------------------------------------------------------------- worker side
def run_job(job: Job | Chain, cache_dir: str) -> dict:
    """Train ``job`` into ``cache_dir`` on one thread unless it is cached already.

    The service holds the checkpoint's cache lock while it trains and looks in the cache
    again once it holds it, so a job another sweep is training (or has trained) is loaded,
    not trained twice. Returns ``{"key", "trained", "seconds", "pid"}``; ``trained`` is
    ``False`` when everything the job needed was already cached.
    """
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    trained = job.run(cache_dir)
    return {"key": job.key, "trained": trained, "seconds": time.perf_counter() - start,
            "pid": os.getpid()}


# ----------------------------------------------------------------------------- backends
class LocalBackend:
    """Jobs in ``workers`` spawned one-thread processes; a dead worker's jobs run again."""

    def __init__(self, workers: int):
        self.workers = workers
        self.slots = workers
        self._pool = self._new_pool()

    def _new_pool(self):
        return cf.ProcessPoolExecutor(self.workers,
                                      mp_context=multiprocessing.get_context("spawn"))

    def check(self, jobs: list[Job]) -> None:
        if any(j.device == "cuda" for j in jobs):
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("the plan trains on CUDA but this machine has no GPU; "
                                 "run the sweep with -p device cpu or on a GPU machine")

    def submit(self, job: Job, cache_dir: str):
        return self._pool.submit(run_job, job, cache_dir)

    def wait(self, handles, timeout: float):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle) -> dict:
        return handle.result()

    def lost(self, error: BaseException) -> bool:
        """Whether ``error`` means a worker died (its job can run again)."""
        if isinstance(error, cf.process.BrokenProcessPool):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return True
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Jobs as Ray tasks: one CPU each, or a model-sized share of a GPU for CUDA jobs."""

    def __init__(self, address: str, workers: int | None):
        try:
            import ray
        except ImportError:
            raise SystemExit('--ray needs Ray: pip install "bdunlearn[cluster]" '
                             "(or use --ray none for local worker processes)") from None
        self.ray = ray
        kw = dict(include_dashboard=False, log_to_driver=False)
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), **kw)
        else:
            try:
                ray.init(address=address, **kw)
            except ConnectionError as err:
                raise SystemExit(f"no Ray cluster at --ray {address} ({err}); start one with "
                                 "`ray start --head` or use --ray local") from None
        self.resources = ray.cluster_resources()
        self.slots = workers or max(1, int(self.resources.get("CPU", 0)))
        self._task = ray.remote(max_retries=MAX_RETRIES)(run_job)

    @staticmethod
    def gpu_share(job: Job) -> float:
        """A GPU packs up to 20 small models; about 20M parameters take a whole one."""
        per_gpu = min(20, max(1, int(20e6 // max(job.model_params, 1))))
        return math.floor(10_000 / per_gpu) / 10_000

    def check(self, jobs: list[Job]) -> None:
        gpus = self.resources.get("GPU", 0)
        if any(j.device == "cuda" for j in jobs) and gpus == 0:
            raise SystemExit("the plan trains on CUDA but the Ray cluster has no GPU; add a "
                             "GPU node or run the sweep with -p device cpu")
        if any(j.device != "cuda" for j in jobs) and self.resources.get("CPU", 0) < 1:
            raise SystemExit("the plan has CPU jobs but the Ray cluster offers no CPU")

    def submit(self, job: Job, cache_dir: str):
        if job.device == "cuda":
            opts = dict(num_cpus=1, num_gpus=self.gpu_share(job))
        else:
            opts = dict(num_cpus=1, num_gpus=0)
        return self._task.options(**opts).remote(job, cache_dir)

    def wait(self, handles, timeout: float):
        done, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return done

    def result(self, handle) -> dict:
        return self.ray.get(handle)

    def lost(self, error: BaseException) -> bool:
        return False  # Ray already retried a dead worker's task MAX_RETRIES times

    def close(self) -> None:
        self.ray.shutdown()


# ----------------------------------------------------------------------------- scheduler
@dataclass
class SweepResult:
    """What a sweep did: jobs planned, trained here, found cached; seconds it took."""

    planned: int
    trained: int
    cached: int
    seconds: float


def execute(jobs: list[Job | Chain], backend, cache_dir: str | Path | None = None,
            progress: bool = True) -> SweepResult:
    """Run ``jobs`` on ``backend``, each after the jobs it needs (``job.needs``), at most
    ``backend.slots`` at a time. Progress shows jobs done, running and left."""
    cache_dir = str(Path(cache_dir) if cache_dir else default_cache_dir())
    backend.check(jobs)
    keys = {j.key for j in jobs}
    waiting = list(jobs)
    running: dict = {}
    finished: set[str] = set()
    retries: dict[str, int] = {}
    trained = cached = 0
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="sweep", unit="job", disable=not progress)
    try:
        while waiting or running:
            ready = [j for j in waiting
                     if all(k in finished or k not in keys for k in j.needs)]
            for job in ready[: max(0, backend.slots - len(running))]:
                waiting.remove(job)
                running[backend.submit(job, cache_dir)] = job
            bar.set_postfix(done=len(finished), running=len(running), left=len(waiting))
            for handle in backend.wait(list(running), timeout=5.0):
                job = running.pop(handle)
                try:
                    out = backend.result(handle)
                except Exception as err:
                    if backend.lost(err) and retries.get(job.key, 0) < MAX_RETRIES:
                        retries[job.key] = retries.get(job.key, 0) + 1
                        waiting.append(job)
                        for other in running.values():  # the same dead pool held them
                            waiting.append(other)
                        running.clear()
                        break
                    where = (f" shard {job.shard} slice {job.slice}" if isinstance(job, Job)
                             else f" ({job.kind} chain)")
                    raise RuntimeError(f"job {job.label}{where} failed: {err}") from err
                finished.add(job.key)
                trained += out["trained"]
                cached += not out["trained"]
                bar.update(1)
    finally:
        bar.close()
    return SweepResult(len(jobs), trained, cached, time.perf_counter() - start)


def backend_for(ray: str, workers: int | None):
    """``LocalBackend`` for ``ray="none"``, else a :class:`RayBackend` on that address."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers {workers!r} must be a positive integer")
    if ray == "none":
        return LocalBackend(workers or os.cpu_count() or 1)
    return RayBackend(ray, workers)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, choices=sorted(PROFILES),
                    help="default: $BDUNLEARN_PROFILE, else 'default'")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (Python literal), e.g. -p seeds 0,1")
    ap.add_argument("--ray", default="none", metavar="none|auto|local|ADDRESS",
                    help="none: local worker processes (default); local: a private Ray "
                         "cluster here; auto: the running cluster; or a cluster address")
    ap.add_argument("--workers", type=int, help="concurrent jobs (default: all CPUs)")
    ap.add_argument("--only", help="comma-separated notebook numbers or stems, e.g. 01,04")
    ap.add_argument("--no-notebooks", action="store_true",
                    help="only train the plan; do not run the notebooks afterwards")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    try:
        profile = profile_name(args.profile)
    except ValueError as exc:
        raise SystemExit(f"BDUNLEARN_PROFILE: {exc}") from None
    if not params.get("dataset"):
        for why in available(profile_datasets(profile), params.get("data_root"))[1]:
            print(f"not planned: {why}", flush=True)
    try:
        only = parse_only(args.only)
        jobs = plan(profile, only=only, **params)
        backend = backend_for(args.ray, args.workers)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    chains = sum(isinstance(j, Chain) for j in jobs)
    print(f"sweep: {len(jobs) - chains} slice checkpoints and {chains} request chains planned "
          f"for profile {profile}, cache {default_cache_dir()}", flush=True)
    try:
        with writing("sweep"):  # a runner on the same cache names this process
            result = execute(jobs, backend)
    finally:
        backend.close()
    print(f"sweep: {result.trained} trained, {result.cached} already cached, "
          f"{result.seconds:.1f} s", flush=True)
    if not args.no_notebooks:
        from .reproduce import run

        run(profile, only, params=params)


if __name__ == "__main__":
    # Run the importable module's main, so workers find run_job by its module name.
    from bdunlearn.sweep import main as _main

    sys.exit(_main())
