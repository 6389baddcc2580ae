"""Worker-process training: bitwise equal to one-thread sequential training, clear errors."""

import copy

import pytest
import torch

from bdunlearn import parallel
from bdunlearn.models import build_model
from bdunlearn.parallel import Job, Stage, choose_workers, train_jobs
from bdunlearn.train import TrainConfig


@pytest.fixture(scope="module")
def jobs(digits):
    ds = digits
    cfg = TrainConfig(epochs=2, batch_size=50, momentum=0.9, precision="auto",
                      shuffle="once")
    out = []
    for j in range(2):
        part = slice(200 * j, 200 * j + 200)
        out.append(Job(build_model("fmnist_cnn", ds.image_shape, 10, seed=j),
                       ds.x_train[part], ds.y_train[part], cfg,
                       [Stage(100, seed=10 + j, epochs=1), Stage(200, seed=20 + j, epochs=1,
                                                                 epoch_offset=1)]))
    return out


def test_workers_give_the_weights_of_one_thread_sequential_training(jobs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = train_jobs(copy.deepcopy(jobs), device="cpu", workers=1)
    finally:
        torch.set_num_threads(threads)
    in_workers = train_jobs(jobs, device="cpu", workers=2)
    assert len(in_workers) == 2 and all(len(r) == 2 for r in in_workers)
    for seq_job, par_job in zip(sequential, in_workers):
        for (seq_state, _), (par_state, seconds) in zip(seq_job, par_job):
            assert seconds > 0
            assert seq_state.keys() == par_state.keys()
            assert all(torch.equal(seq_state[k], par_state[k]) for k in seq_state)
    # the stages continue one another: the second stage's weights moved on from the first
    first, second = in_workers[0][0][0], in_workers[0][1][0]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_a_failing_job_raises_one_error_naming_it(jobs):
    bad = copy.deepcopy(jobs)
    bad[1].x = bad[1].x[:, :, :5]  # images too small for the model
    with pytest.raises(RuntimeError, match="training job 1 failed in a worker process"):
        train_jobs(bad, device="cpu", workers=2)


def test_worker_count_rule(jobs, monkeypatch):
    monkeypatch.delenv(parallel.WORKERS_ENV, raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    big = [copy.copy(j) for j in jobs]
    for j in big:
        j.stages = [Stage(200, seed=0, epochs=200)]
    # threads in this process were measured faster than one-thread processes
    assert choose_workers(jobs) == 1 and choose_workers(big) == 1
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    assert choose_workers(jobs) == 2
    assert choose_workers(jobs, workers=1) == 1
    assert choose_workers(jobs, workers=8) == 2  # never more than the jobs


@pytest.mark.parametrize("workers, message", [
    (0, "workers 0 must be an integer >= 1"), (1.5, "workers 1.5 must be an integer"),
    (True, "workers True must be an integer"), ("many", "workers 'many' must be an integer"),
])
def test_bad_worker_counts_are_refused(jobs, workers, message):
    with pytest.raises(ValueError, match=message):
        choose_workers(jobs, workers)


def test_bad_environment_value_is_refused(jobs, monkeypatch):
    monkeypatch.setenv(parallel.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="BDUNLEARN_WORKERS='two' must be a positive integer"):
        choose_workers(jobs)


def test_sisa_shards_in_workers_match_one_thread_sequential_training(monkeypatch, tmp_path,
                                                                       digits):
    """A 3-shard, 2-slice fit and a request, in worker processes and in this process."""
    from bdunlearn.registry import reference_config
    from bdunlearn.unlearning.sisa import SisaService

    ds = digits.subset(600, 100, seed=0)

    def service(workers, cache_dir):
        monkeypatch.setenv(parallel.WORKERS_ENV, str(workers))
        svc = SisaService(ds.x_train, ds.y_train, arch="fmnist_cnn", num_classes=10,
                          cfg=reference_config("digits", epochs=2), shards=3, slices=2,
                          seed=4, device="cpu", cache_dir=cache_dir).fit()
        victims = [int(svc.training_ids(s)[0]) for s in (0, 2)]  # touches two shards
        return svc, svc.unlearn(victims)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential, seq_cost = service(1, tmp_path / "sequential")
    finally:
        torch.set_num_threads(threads)
    pools = []
    real = parallel._in_workers
    monkeypatch.setattr(parallel, "_in_workers",
                        lambda jobs, n, dev: pools.append(n) or real(jobs, n, dev))
    in_workers, par_cost = service(3, tmp_path / "workers")
    assert pools == [3, 2]  # the fit's three shards, then the request's two
    for a, b in zip(sequential.models, in_workers.models):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                     b.state_dict().values()))
    assert par_cost.shards_retrained == seq_cost.shards_retrained == 2
    assert par_cost.sample_epochs == seq_cost.sample_epochs > 0
    assert in_workers.fit_cost.seconds > 0


def test_a_daemonic_process_trains_in_itself(jobs, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(parallel.multiprocessing, "current_process",
                        lambda: SimpleNamespace(daemon=True))
    assert choose_workers(jobs, workers=2) == 1


_DYING_PARENT = """
import multiprocessing, os, threading, time, torch
from bdunlearn import parallel
from bdunlearn.models import build_model
from bdunlearn.train import TrainConfig
x = torch.zeros((2000, 1, 28, 28), dtype=torch.uint8)
y = torch.zeros(2000, dtype=torch.long)
jobs = [parallel.Job(build_model("fmnist_cnn", (1, 28, 28), 10), x, y,
                     TrainConfig(epochs=50), [parallel.Stage(2000, 0, 50)]) for _ in range(2)]
threading.Thread(target=parallel.train_jobs, args=(jobs,), kwargs={"workers": 2},
                 daemon=True).start()
while len(multiprocessing.active_children()) < 2:
    time.sleep(0.1)
time.sleep(3)
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
os._exit(9)
"""


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A script without a main guard starts workers; killed, it leaves none behind."""
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "dying.py"
    script.write_text(_DYING_PARENT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 9, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not open(f"/proc/{pid}/stat").read().split()[2] == "Z"

    deadline = time.monotonic() + 60
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(p) for p in pids)
