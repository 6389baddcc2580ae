"""The sweep: its plan is complete, and it trains each job once, locally or on Ray.

A tiny smoke plan (digits, one epoch, few requests) keeps every test within seconds of
training; the Ray tests start a private two-CPU cluster and stop it in a ``finally``.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from bdunlearn import attack, studies
from bdunlearn.cache import load as load_entry
from bdunlearn.plan import Chain, Job, plan
from bdunlearn.studies import benchmark, fidelity
from bdunlearn.sweep import LocalBackend, RayBackend, backend_for, execute
from bdunlearn.unlearning import amnesiac, sisa

TINY = dict(dataset="digits", epochs=1, poison_num=20, mitigation_num=40, shards=(1, 2),
            request_steps=2, defense_steps=2, defender_size=60, nc_steps=4, train_subset=1000,
            defense_samples=(2,))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BDUNLEARN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An empty run store: every run is still to compute, so the plan lists them all."""
    return str(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def jobs(store):
    return plan("smoke", store_dir=store, **TINY)


# The concurrent-sweep and Ray tests sweep notebooks 01 and 02 (13 jobs at TINY, against
# 44 for 01-06 and 107 for all): slice jobs (clean, attacked and unlearned models, one shard
# and two) and a request chain (02's Amnesiac trajectory), both kinds of job a sweep runs.
# Concurrent sweeps, node loss, a killed worker and resumption need no more; the
# plan-is-complete test checks every notebook's plan.
FEW = ("01", "02")


@pytest.fixture(scope="module")
def few_jobs(store):
    jobs = plan("smoke", store_dir=store, only=FEW, **TINY)
    assert {type(j) for j in jobs} == {Job, Chain}
    return jobs


def checkpoints(cache: Path) -> dict[str, float]:
    return {p.stem: p.stat().st_mtime_ns for p in cache.glob("*.pt")}


def assert_valid(folder: Path, keys) -> None:
    """Every planned checkpoint is there, loads, and carries its own key; no temp files."""
    assert not list(folder.glob(".tmp-*"))
    for key in keys:
        entry = load_entry(folder / f"{key}.pt")
        assert entry is not None and entry[1]["key"] == key


def slice_keys(jobs) -> set[str]:
    return {j.key for j in jobs if isinstance(j, Job)}


def test_plan_lists_each_checkpoint_once_after_its_predecessor(jobs, store):
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    # 01: clean + bn/it before and after; 02 adds S=2's fit and 2 batches on 2 shards
    assert len(jobs) >= 1 + 2 * 2 + 2
    assert {j.label.split()[1] for j in jobs} >= {"01", "02", "03"}
    assert all(j.after is None for j in jobs if isinstance(j, Job) and j.slice == 0)
    # the request filter's and Amnesiac trajectories, each one chain after its base slices
    chains = [j for j in jobs if isinstance(j, Chain)]
    # 02's Amnesiac trajectory, 04's filter, notebook 06's Amnesiac grid (each its knobs),
    # and notebook 07's filters: one per attack family, shard count and detector (at
    # smoke every family but BN at one model, screened by the batch test only)
    smoke = SimpleNamespace(profile="smoke", shards=TINY["shards"])
    assert benchmark.screens("lc", smoke) == benchmark.screens("it", smoke) == ((1, "batch"),)
    assert {s for s, _ in benchmark.screens("bn", smoke)} == {1, 2}
    screened = sum(len(benchmark.screens(v, smoke)) for v in attack.FAMILIES)
    # the grid's fine-tuning is capped at the training epochs, so some settings coincide
    grid = {(min(k["finetune_epochs"], TINY["epochs"]), k["scale"])
            for k in fidelity.grid(fidelity.AMNESIAC, smoke).values()}
    assert sorted(c.kind for c in chains) == (["amnesiac"] * (1 + len(grid)) + ["filter"]
                                              + ["screened"] * screened)
    assert len({c.knobs for c in chains if c.kind == "amnesiac"}) == 1 + len(grid)
    assert len({(c.recipe, c.knobs) for c in chains if c.kind == "screened"}) == screened
    assert all(set(c.needs) <= slice_keys(jobs) for c in chains)
    assert next(c for c in chains if c.kind == "filter").needs
    assert plan("smoke", store_dir=store, **TINY) == jobs  # same parameters, same plan


def test_plan_rejects_a_name_no_notebook_has():
    with pytest.raises(ValueError, match="'sahrds' is not a notebook parameter"):
        plan("smoke", sahrds=3)


def test_plan_is_complete_studies_retrain_nothing(jobs, cache, tmp_path, monkeypatch,
                                                  deadline):
    result = execute(jobs, LocalBackend(2), progress=False)
    slices = sum(isinstance(j, Job) for j in jobs)
    # every slice trains; a chain trains nothing new when its filter refuses all of the
    # requests or none (or the same ids as another chain)
    assert result.trained + result.cached == len(jobs) and result.trained >= slices
    before = checkpoints(cache)
    assert slice_keys(jobs) < set(before)  # the filter chain wrote its own slices too

    def no_training(*args, **kwargs):
        raise AssertionError("a study trained a slice the plan did not list")

    monkeypatch.setattr(sisa, "fit", no_training)
    monkeypatch.setattr(sisa, "fit_stacked", no_training)
    monkeypatch.setattr(amnesiac, "fit", no_training)
    served = []
    real = sisa.SisaService.fit
    monkeypatch.setattr(sisa.SisaService, "fit",
                        lambda self: served.append(self) or real(self))
    store = str(tmp_path / "store")
    for stem in studies.STEMS:  # every run of every notebook, computed as the notebook does
        nb = studies.Notebook(stem, studies.config(stem, "smoke", store_dir=store, **TINY),
                              str(cache))
        for table in {r.table for r in nb.runs()}:
            assert not nb.collect(table, progress=False).empty, table
    assert checkpoints(cache) == before  # nothing written, nothing rewritten
    for svc in served:  # every model a fit or request needed came from the cache
        per = svc.slices
        assert svc.fit_cost.cache_hits == svc.shards * per
        assert all(c.cache_hits == c.shards_retrained * per for c in svc.log)
    # the cost logs still report what each request needed, independent of the cache
    assert any(c.slices_retrained > 0 for svc in served for c in svc.log)
    # with every run stored, nothing is left to plan; one more seed plans only its own jobs
    # (notebook 07's budgets run on seeds of their own, whatever the run's: stored already)
    assert plan("smoke", store_dir=store, **TINY) == []
    one_more = plan("smoke", store_dir=store, **{**TINY, "seeds": (0, 1)})
    assert one_more and {j.recipe.seed for j in one_more} == {1}
    alone = plan("smoke", store_dir=str(tmp_path / "empty"), **{**TINY, "seeds": 1})
    assert {j.recipe.seed for j in alone} == {1, *benchmark.BUDGET_SEEDS[:1]}
    assert {j.key for j in one_more} == {
        j.key for j in alone if j.recipe.seed not in benchmark.BUDGET_SEEDS}


def test_a_job_run_here_trains_into_its_cache_and_leaves_the_callers_env(jobs, cache,
                                                                          tmp_path):
    job = next(j for j in jobs if isinstance(j, Job) and j.after is None)
    elsewhere = tmp_path / "elsewhere"
    assert job.run(str(elsewhere))
    assert_valid(elsewhere, [job.key])
    assert not list(cache.glob("*.pt"))
    assert os.environ["BDUNLEARN_CACHE"] == str(cache)


def test_second_sweep_and_concurrent_sweeps_train_each_job_once(few_jobs, cache, deadline):
    # slice jobs: each is one checkpoint, so "trained once" is exact per job. (A request
    # chain is several checkpoints; two concurrent sweeps may each train part of one,
    # never the same checkpoint, which the per-entry cache lock ensures.)
    jobs = few_jobs
    slices = [j for j in jobs if isinstance(j, Job)]
    first = slices[: len(slices) // 2]
    env = dict(os.environ)
    assert execute(first, LocalBackend(1), progress=False).trained == len(first)
    assert dict(os.environ) == env  # the sweep passes the cache folder, writes no variable
    results = []
    runs = [threading.Thread(target=lambda: results.append(
        execute(slices, LocalBackend(1), progress=False))) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert sum(r.trained for r in results) == len(slices) - len(first)
    assert all(r.planned == r.trained + r.cached for r in results)
    assert_valid(cache, slice_keys(jobs))
    # a sweep after them finds every slice and runs only the chains
    again = execute(jobs, LocalBackend(2), progress=False)
    assert again.cached >= len(slices) and again.planned == len(jobs)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers 0 must be a positive integer"):
        backend_for("none", 0)


def test_gpu_share_is_sized_to_the_model(jobs):
    small = jobs[0]
    assert RayBackend.gpu_share(small) == 0.05  # 20 small models per GPU
    assert RayBackend.gpu_share(replace(small, model_params=9_231_114)) == 0.5  # VGG11
    assert RayBackend.gpu_share(replace(small, model_params=11_172_170)) == 1.0  # ResNet-18


@pytest.fixture(autouse=True)
def _no_ray_token(monkeypatch):
    """Ray clusters of these tests (and their subprocesses) run without token
    authentication, so nothing is written to ~/.ray; the library leaves the choice to
    the user's environment."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def _ray():
    return pytest.importorskip(
        "ray", reason='Ray is not installed (pip install "bdunlearn[cluster]")')


def test_sweep_command_on_local_ray_cluster(few_jobs, store, cache, deadline):
    jobs = few_jobs
    _ray()
    args = [a for k, v in TINY.items() for a in ("-p", k, repr(v))]
    cli = subprocess.run([sys.executable, "-m", "bdunlearn.sweep", "--profile", "smoke", *args,
                          "--ray", "local", "--workers", "2", "--no-notebooks",
                          "--only", ",".join(FEW),
                          "-p", "store_dir", repr(store)],
                         capture_output=True, text=True, timeout=deadline - 10)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"sweep: {len(jobs)} trained, 0 already cached" in cli.stdout
    assert not (Path.home() / ".ray" / "auth_token").exists()
    assert_valid(cache, slice_keys(jobs))
    backend = RayBackend("local", 2)
    try:
        with pytest.raises(SystemExit, match="the Ray cluster has no GPU"):
            backend.check([replace(jobs[0], device="cuda")])  # at once, never queued forever
        again = execute(jobs, backend, progress=False)
        assert (again.trained, again.cached) == (0, len(jobs))
    finally:
        backend.close()


def _ray_task_pids() -> list[int]:
    """Worker processes of this machine's Ray cluster running a sweep job right now."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::run_job"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_killed_ray_worker_leaves_a_valid_cache_and_the_sweep_completes(cache, deadline):
    _ray()
    jobs = plan("smoke", store_dir=str(cache.parent / "store"), only=FEW,
                **{**TINY, "epochs": 4})
    backend = RayBackend("local", 2)
    results, killed = [], []
    try:
        sweep = threading.Thread(target=lambda: results.append(
            execute(jobs, backend, progress=False)))
        sweep.start()
        while sweep.is_alive() and not killed:
            pids = _ray_task_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)
        sweep.join()
    finally:
        backend.close()
    assert killed, "no Ray worker was caught running a job"
    assert results and results[0].trained + results[0].cached == len(jobs)
    assert_valid(cache, slice_keys(jobs))


def _collect_everything(store: str, cache: Path, monkeypatch, overrides: dict) -> None:
    """Every notebook's runs, computed as the notebooks do, with training forbidden."""
    def no_training(*args, **kwargs):
        raise AssertionError("a notebook trained a slice the sweep should have trained")

    monkeypatch.setattr(sisa, "fit", no_training)
    monkeypatch.setattr(sisa, "fit_stacked", no_training)
    monkeypatch.setattr(amnesiac, "fit", no_training)
    for stem in (s for s in studies.STEMS if s.split("_")[0] in FEW):
        nb = studies.Notebook(stem, studies.config(stem, "smoke", store_dir=store, **overrides),
                              str(cache))
        for table in {r.table for r in nb.runs()}:
            assert not nb.collect(table, progress=False).empty, table


def test_a_sweep_across_two_ray_nodes_completes_when_one_node_is_removed(
        cache, tmp_path, monkeypatch, deadline):
    ray = _ray()
    from ray.cluster_utils import Cluster

    overrides = {**TINY, "epochs": 4}
    store = str(tmp_path / "store")
    jobs = plan("smoke", store_dir=store, only=FEW, **overrides)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={f"node{i}": 1}) for i in range(2)]
        cluster.wait_for_nodes()
        backend = RayBackend(cluster.address, 2)
        results, removed = [], []
        sweep = threading.Thread(target=lambda: results.append(
            execute(jobs, backend, progress=False)))
        sweep.start()
        while sweep.is_alive() and not removed:
            if len(list(cache.glob("*.pt"))) >= 2:  # mid-sweep: some jobs done, more to do
                cluster.remove_node(nodes[1])
                removed.append(nodes[1])
            time.sleep(0.1)
        sweep.join()
        assert removed, "the sweep ended before a node could be removed"
        assert results and results[0].planned == len(jobs)
        assert results[0].trained + results[0].cached == len(jobs)  # nothing lost
        assert_valid(cache, slice_keys(jobs))
        before = checkpoints(cache)
        again = execute(jobs, backend, progress=False)  # nothing trained twice
        assert (again.trained, again.cached) == (0, len(jobs))
        assert checkpoints(cache) == before
    finally:
        ray.shutdown()
        cluster.shutdown()
    _collect_everything(store, cache, monkeypatch, overrides)  # the notebooks train nothing
    assert checkpoints(cache) == before
