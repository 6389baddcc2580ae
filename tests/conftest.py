"""Shared fixtures (the digits data, a tiny clean and a tiny backdoored model, the run's
checkpoint cache, deadlines that scale with how busy the machine is) and the test tiers.

Tiers: every collected test gets exactly one of the markers registered in pyproject.toml,
assigned here in one place (:func:`pytest_collection_modifyitems`):

- ``notebook``: a notebook cell collected by nbval (``make test`` runs ``notebooks/``);
- ``cluster``: a test that starts a Ray cluster (:data:`CLUSTER`);
- ``slow``: a test that trains for longer or runs a notebook or a subprocess of the
  package (:data:`SLOW`, or ``@pytest.mark.slow`` on the test itself);
- ``unit``: everything else. ``make test-fast`` runs this tier (``-m unit``).

A test marked in its file keeps that marker; :data:`SLOW` lists the slow tests of files
that are otherwise fast, chosen from ``--durations`` of each file run alone.
"""

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TIERS = ("unit", "slow", "notebook", "cluster")

# Tests that start a Ray cluster (each one a private local cluster sweeping notebooks 01
# and 02 at a tiny size: 30-60 s alone on a busy 2-core machine, fp32 on AVX2 kernels).
CLUSTER = {
    "test_sweep.py::test_sweep_command_on_local_ray_cluster",
    "test_sweep.py::test_killed_ray_worker_leaves_a_valid_cache_and_the_sweep_completes",
    "test_sweep.py::test_a_sweep_across_two_ray_nodes_completes_when_one_node_is_removed",
}

# Slow tests by "file::name" (every parametrisation), "file::name[id]" (one) or whole
# file ("file"): tests that run a notebook (papermill), the device kit or a sweep, train
# on a full dataset, or took 10 s or more alone under --durations (2026-12-07, a 2-core
# machine busy with other training: read about 2-4x a quiet one; the quiet times above
# 60 s are in issue 46). Every other test of these files stays in the unit tier.
SLOW = {
    # notebooks through papermill (the runner's tiny ones too), the device kit, the plan
    "test_reproduce.py::test_the_defense_cost_claim_holds_at_smoke_in_fp32",
    "test_reproduce.py::test_the_device_kit_runs_on_the_cpu_and_its_runs_merge_in",
    "test_reproduce.py::test_paper_profile_starts_on_a_tiny_override",
    "test_reproduce.py::test_a_notebook_run_outside_the_runner_leaves_committed_results_alone",
    "test_reproduce.py::test_runner_publishes_a_notebook_only_when_it_passed",
    "test_reproduce.py::test_the_slices_count_names_the_other_writers_of_the_cache",
    "test_reproduce.py::test_the_plan_says_what_a_run_then_computes",
    "test_reproduce.py::test_only_a_complete_default_run_replaces_the_committed_results",
    "test_sweep.py::test_plan_is_complete_studies_retrain_nothing",
    "test_sweep.py::test_second_sweep_and_concurrent_sweeps_train_each_job_once",
    # full-size training
    "test_train.py::test_fmnist_cnn_two_epochs_on_the_full_training_set_reaches_85_percent",
    "test_train.py::test_training_learns_and_is_deterministic",  # 79 (2 x 10 epochs)
    # 10 s or more alone (seconds measured under load)
    "test_detect.py::test_screened_requests_counts_benign_refusals_out_of_one_shared_count",  # 79
    "test_detect.py::test_batch_score_is_its_definition_for_batches_of_any_size",  # 23
    "test_detect.py::test_benchmark_thresholds_come_from_benign_requests_alone",  # 14
    "test_parallel.py::test_sisa_shards_in_workers_match_one_thread_sequential_training",  # 62
    "test_parallel.py::test_workers_give_the_weights_of_one_thread_sequential_training",  # 23
    "test_store.py::test_merge_copies_new_runs_and_keeps_existing_ones",  # 26
    "test_bench.py::test_authors_loop_trains_the_model_in_a_fixed_order",  # 14
    "test_cache_faults.py::test_a_read_only_cache_is_read_and_a_missing_entry_computed_in_memory",
    "test_models.py::test_pooling_before_relu_is_bit_for_bit_the_reference_order"
    "[bf16-vgg11_bn-shape3]",  # 11
    "test_models.py::test_pooling_before_relu_is_bit_for_bit_the_reference_order"
    "[fp32-vgg11_bn-shape3]",  # 8.5
    "test_sisa.py::test_shards_trained_together_match_one_by_one",  # 38
    "test_sisa.py::test_request_retrains_touched_shard_bitwise_like_from_scratch",  # 31
    "test_sisa.py::test_exact_unlearning_equals_training_without_the_samples",  # 28
    "test_unlearning.py::test_two_processes_train_a_shared_slice_once",  # 18
}


def _tier_of(item) -> str | None:
    """The tier the lists above give ``item``, or ``None`` (then: ``unit``)."""
    path = Path(str(item.path))
    if path.suffix == ".ipynb":
        return "notebook"
    name = getattr(item, "originalname", None) or item.name
    key = f"{path.name}::{name}"
    if key in CLUSTER:
        return "cluster"
    if key in SLOW or f"{path.name}::{item.name}" in SLOW or path.name in SLOW:
        return "slow"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        own = [m.name for m in item.iter_markers() if m.name in TIERS]
        if own:
            continue  # marked in its file
        item.add_marker(getattr(pytest.mark, _tier_of(item) or "unit"))


# --- deadlines ---------------------------------------------------------------------------

# 200 single-thread 256x256 float32 matrix products: 0.068 s on a quiet 2-core AMD EPYC
# (2026-12-04); a loaded or slower machine takes longer, and deadlines stretch with it.
QUIET_SECONDS = 0.068


def slowdown() -> float:
    """How many times slower than a quiet reference machine this one runs right now
    (at least 1, at most 8): measured, not assumed, so a busy CI box gets longer deadlines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(256, 256)
        best = min(_timed(lambda: [a @ a for _ in range(200)]) for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0
    return min(8.0, max(1.0, best / QUIET_SECONDS, load))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture
def deadline():
    """Fail a test that runs past three minutes (times the machine's measured slowdown)
    instead of letting CI hang; yields the number of seconds allowed."""
    seconds = int(180 * slowdown())

    def stop(signum, frame):
        raise TimeoutError(f"test ran past its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    yield seconds
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --- data, models and the cache ----------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _outputs_in_a_temporary_folder(tmp_path_factory):
    """Tables, figures and run stores that tests write go under a temporary folder, never
    into the checkout: ``BDUNLEARN_RESULTS``/``BDUNLEARN_FIGURES`` where unset (``make
    test`` sets both; a plain ``pytest`` run would otherwise write ``results/smoke/``)."""
    patch = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("outputs")
    for name, sub in (("BDUNLEARN_RESULTS", "results"), ("BDUNLEARN_FIGURES", "figures")):
        if not os.environ.get(name):
            patch.setenv(name, str(out / sub))
    yield out
    patch.undo()



@pytest.fixture(scope="session")
def digits():
    """The digits dataset (1500 training, 297 test images of 1x28x28), loaded once per
    session. Shared: a test that changes images must change a ``.clone()``."""
    from bdunlearn.data import load

    return load("digits")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's checkpoint cache: ``BDUNLEARN_CACHE`` when it is set (``make test``
    under ``.ci/run`` sets one folder per run, which the notebooks after the tests read
    too), else a temporary folder. For tests whose models the notebooks or other tests
    may reuse; a test that counts what it trains needs its own empty ``tmp_path``."""
    value = os.environ.get("BDUNLEARN_CACHE")
    folder = Path(value).resolve() if value else tmp_path_factory.mktemp("checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# The tiny models: fmnist_cnn on 1200 digits (300 held out as the defender's clean set),
# 14 epochs of the reference settings. The backdoored one sees 20% of its images stamped
# with a bright 4x4 corner patch and relabelled 0: clean accuracy 0.85-0.86, ASR 0.95 on
# the test split (fp32, one or two threads, 2026-12-07); with 10% poisoned or fewer
# epochs the patch was not learned reliably at this size (ASR 0.11-0.66 in our trials).
TARGET, PATCH, HELD, POISON_RATE, EPOCHS = 0, 4, 300, 0.2, 14


def _tiny_split(digits):
    import torch

    from bdunlearn.train import make_generator

    perm = torch.randperm(len(digits.y_train), generator=make_generator(0))
    return perm[:HELD], perm[HELD:]


def _tiny_fit(x, y, digits):
    from bdunlearn.models import build_model
    from bdunlearn.registry import reference_config
    from bdunlearn.train import fit

    cfg = reference_config("digits", epochs=EPOCHS, precision="fp32")
    return fit(build_model("fmnist_cnn", digits.image_shape, 10, seed=0), x, y, cfg, seed=0,
               device="cpu")


@pytest.fixture(scope="session")
def tiny_model(digits):
    """A clean fmnist_cnn trained on the digits outside the defender's held-out set."""
    _, train = _tiny_split(digits)
    return _tiny_fit(digits.x_train[train], digits.y_train[train], digits)


@pytest.fixture(scope="session")
def backdoored(digits):
    """A tiny BadNets model and what a test needs around it: ``model``; ``x``, ``y``
    (the 300 held-out clean training images a defender holds); ``target``, ``patch``
    (the bright ``patch`` x ``patch`` corner trigger, see :func:`stamp`) and
    ``scores(model)`` -> (clean accuracy, ASR) on the test split."""
    import torch

    from bdunlearn.metrics import accuracy, attack_success_rate
    from bdunlearn.train import make_generator, predict
    from bdunlearn.triggers import stamp_patch

    held, train = _tiny_split(digits)
    x, y = digits.x_train[train].clone(), digits.y_train[train].clone()
    poison = torch.randperm(len(y), generator=make_generator(1))[: int(len(y) * POISON_RATE)]
    x[poison] = stamp_patch(x[poison], PATCH, 1.0)
    y[poison] = TARGET
    others = digits.x_test[digits.y_test != TARGET]

    def scores(model):
        acc = accuracy(predict(model, digits.x_test, device="cpu"), digits.y_test)
        asr = attack_success_rate(predict(model, stamp_patch(others, PATCH, 1.0),
                                          device="cpu"), TARGET)
        return acc, asr

    return SimpleNamespace(model=_tiny_fit(x, y, digits), x=digits.x_train[held],
                           y=digits.y_train[held], target=TARGET, patch=PATCH,
                           scores=scores)
