import errno
import multiprocessing
import os

import numpy as np
import pytest
import torch

from bdunlearn import cache
from bdunlearn.registry import reference_config
from bdunlearn.unlearning import (
    AmnesiacService,
    RequestCost,
    SisaService,
    UnlearningService,
    amnesiac,
    sisa,
)


@pytest.fixture(scope="module")
def small(digits):
    ds = digits.subset(300, 50, seed=0)
    return ds.x_train, ds.y_train


def make_sisa(small, cache_dir=None, **kw):
    x, y = small
    kw.setdefault("shards", 3)
    return SisaService(x, y, arch="fmnist_cnn", num_classes=10,
                       cfg=reference_config("digits", epochs=1), seed=2, device="cpu",
                       cache_dir=cache_dir, **kw)


def make_amnesiac(small, cache_dir=None, **knobs):
    x, y = small
    return AmnesiacService(x, y, arch="fmnist_cnn", num_classes=10,
                           cfg=reference_config("digits", epochs=1), watch=np.arange(30),
                           seed=2, device="cpu", cache_dir=cache_dir, **knobs)


def snapshot(svc):
    """Everything a request may change: flags, served weights, log, refused ids."""
    weights = [{k: v.clone() for k, v in m.state_dict().items()} for m in svc.models]
    return svc.removed.copy(), weights, list(svc.log), list(svc.refused)


def assert_unchanged(svc, snap):
    removed, weights, log, refused = snap
    assert np.array_equal(svc.removed, removed)
    assert svc.log == log and svc.refused == refused
    for m, w in zip(svc.models, weights):
        assert all(torch.equal(v, w[k]) for k, v in m.state_dict().items())  # bitwise


def one_per_shard(svc):
    """One id from slice 0 of every shard: a request that retrains every shard."""
    return [int(svc.layout[s][0][0]) for s in range(svc.shards)]


@pytest.mark.parametrize("failure", [RuntimeError("training diverged"), KeyboardInterrupt()])
def test_sisa_request_failing_mid_retrain_changes_nothing(small, tmp_path, monkeypatch,
                                                          failure):
    svc = make_sisa(small, tmp_path).fit()
    ids = one_per_shard(svc)
    snap = snapshot(svc)
    real_fit, calls = sisa.fit, []

    def dies_on_second_shard(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise failure
        return real_fit(*args, **kw)

    monkeypatch.setattr(sisa, "fit", dies_on_second_shard)
    with pytest.raises(type(failure)):
        svc.unlearn(ids)
    assert len(calls) == 2  # the first shard had retrained when the second failed
    assert_unchanged(svc, snap)
    assert all(i in svc.training_ids(s) for s, i in enumerate(ids))
    monkeypatch.setattr(sisa, "fit", real_fit)
    cost = svc.unlearn(ids)  # the retry succeeds (and reuses the first shard's work)
    assert cost.shards_retrained == 3 and cost.cache_hits == 1
    assert svc.removed[ids].all() and len(svc.log) == 1
    assert all(i not in svc.training_ids(s) for s, i in enumerate(ids))


def test_sisa_request_with_an_unwritable_cache_changes_nothing(small, tmp_path, monkeypatch):
    svc = make_sisa(small, tmp_path).fit()
    ids = one_per_shard(svc)
    snap = snapshot(svc)
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores the mode: simulate a full disk
            def full(*args):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(cache.os, "replace", full)
        with pytest.raises(cache.CacheError, match="set BDUNLEARN_CACHE to a writable folder"):
            svc.unlearn(ids)
    finally:
        tmp_path.chmod(0o755)
        monkeypatch.undo()
    assert_unchanged(svc, snap)
    svc.unlearn(ids)
    assert svc.removed[ids].all() and len(svc.log) == 1


def test_amnesiac_request_failing_mid_finetune_changes_nothing(small, monkeypatch):
    svc = make_amnesiac(small).fit()
    snap, deltas = snapshot(svc), {i: [d.clone() for d in v] for i, v in svc._delta.items()}

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(amnesiac, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        svc.unlearn([1, 2, 3])
    assert_unchanged(svc, snap)
    assert set(svc._delta) == set(deltas)
    assert all(torch.equal(a, b) for i in deltas for a, b in zip(svc._delta[i], deltas[i]))
    monkeypatch.undo()
    svc.unlearn([1, 2, 3])
    assert svc.removed[[1, 2, 3]].all() and not {1, 2, 3} & set(svc._delta)


def test_request_cost_is_the_same_on_a_warm_cache_with_several_slices(small, tmp_path,
                                                                      monkeypatch):
    cold = make_sisa(small, tmp_path, slices=3).fit()
    victim = [int(cold.layout[1][0][0])]  # slice 0 of shard 1: all 3 slices retrain
    trained = []
    for name in ("fit", "fit_stacked", "train_jobs"):  # every way SISA trains a slice
        real = getattr(sisa, name)
        monkeypatch.setattr(sisa, name, lambda *a, _real=real, _name=name, **kw:
                            trained.append(_name) or _real(*a, **kw))
    first = cold.unlearn(victim)
    assert trained in (["fit"] * 3, ["train_jobs"])  # each slice of shard 1, or in workers
    trained.clear()
    warm = make_sisa(small, tmp_path, slices=3).fit()
    replay = warm.unlearn(victim)
    assert trained == []  # the warm service trains nothing, for its fit or the request
    assert (first.cache_hits, replay.cache_hits) == (0, 3)
    assert first.slices_retrained == replay.slices_retrained == 3
    assert first.sample_epochs == replay.sample_epochs
    assert replay.seconds == pytest.approx(first.seconds, rel=1e-9)  # stored, replayed


def test_amnesiac_is_cached_by_content(small, tmp_path):
    batches = [[0, 1, 2], [5, 6]]
    cold = make_amnesiac(small, tmp_path).fit()
    cold_costs = [cold.unlearn(b) for b in batches]
    warm = make_amnesiac(small, tmp_path).fit()
    assert (cold.fit_cost.cache_hits, warm.fit_cost.cache_hits) == (0, 1)
    assert warm.fit_cost.seconds == pytest.approx(cold.fit_cost.seconds, rel=1e-9)
    assert set(warm._delta) == set(range(30))  # every recorded update loaded
    warm_costs = [warm.unlearn(b) for b in batches]
    assert [c.cache_hits for c in cold_costs] == [0, 0]
    assert [c.cache_hits for c in warm_costs] == [1, 1]
    assert [c.seconds for c in warm_costs] == pytest.approx([c.seconds for c in cold_costs])
    x = small[0][:100]
    assert torch.equal(cold.predict(x), warm.predict(x))
    assert torch.equal(cold.member_proba(x), warm.member_proba(x))
    other = make_amnesiac(small, tmp_path).fit()
    assert other.unlearn([0, 1]).cache_hits == 0  # another history: computed, not loaded


def test_amnesiac_scale_zero_subtracts_nothing(small):
    """Scale 0 is the control of notebook 06: with no fine-tuning the weights stay."""
    svc = make_amnesiac(small, scale=0.0, finetune_epochs=0).fit()
    before = snapshot(svc)[1]
    svc.unlearn([0, 1, 2])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, snapshot(svc)[1]) for k in a)
    moved = make_amnesiac(small, finetune_epochs=0).fit()  # scale 1 does subtract
    moved.unlearn([0, 1, 2])
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(before, snapshot(moved)[1])
               for k in a)


def test_one_interface(small):
    for svc in (make_sisa(small, shards=2).fit(), make_amnesiac(small).fit()):
        assert isinstance(svc, UnlearningService)
        x = small[0][:20]
        assert svc.member_proba(x).shape == (svc.num_models, 20, 10)
        owners = svc.model_of(np.arange(300))
        for m in range(svc.num_models):
            assert set(svc.training_ids(m)) == set(np.flatnonzero(owners == m))
        for call in (svc.predict, svc.predict_proba):
            with pytest.raises(ValueError, match="unknown aggregation 'median'"):
                call(x, aggregation="median")
        with pytest.raises(ValueError, match="at least one sample id"):
            svc.unlearn([])
        with pytest.raises(ValueError, match="must be integers"):
            svc.unlearn([1.0])
        assert isinstance(svc.unlearn([7]), RequestCost)
        assert svc.removed[7] and 7 not in svc.training_ids(int(svc.model_of([7])[0]))


def _fit_slice_in_child(small, cache_dir, barrier, out):
    import torch as child_torch

    child_torch.set_num_threads(1)
    svc = make_sisa(small, cache_dir, shards=1)
    barrier.wait()  # both ask for the same slice at the same moment
    svc.fit()
    out.put(svc.fit_cost.cache_hits)


def test_two_processes_train_a_shared_slice_once(small, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fit_slice_in_child, args=(small, tmp_path, barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    hits = sorted(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert hits == [0, 1]  # one trained it, the other loaded it
    assert len(list(tmp_path.glob("*.pt"))) == 1
