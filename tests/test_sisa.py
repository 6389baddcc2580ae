import numpy as np
import pytest
import torch

from bdunlearn import cache
from bdunlearn.models import build_model
from bdunlearn.registry import reference_config
from bdunlearn.train import derive_seed, fit
from bdunlearn.unlearning import sisa
from bdunlearn.unlearning.sisa import SisaService, slice_epochs


@pytest.fixture(scope="module")
def small(digits):
    ds = digits.subset(600, 200, seed=0)
    return ds.x_train, ds.y_train


def make(small, tmp_path=None, **kw):
    x, y = small
    kw.setdefault("shards", 3)
    return SisaService(x, y, arch="fmnist_cnn", num_classes=10,
                       cfg=reference_config("digits", epochs=2), seed=4, device="cpu",
                       cache_dir=tmp_path, **kw)


def states_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_slice_epochs_never_zero():
    assert slice_epochs(20, 1) == [20]
    assert min(slice_epochs(2, 10)) == 1  # the reference code gives zeros here
    assert sum(slice_epochs(10, 4)) >= 10 * 2 * 4 / 5 - 4


def test_partition_covers_every_id_once(small):
    svc = make(small, shards=4, slices=3)
    ids = np.concatenate([np.concatenate(sh) for sh in svc.layout])
    assert sorted(ids) == list(range(600))
    assert {len(np.concatenate(sh)) for sh in svc.layout} == {150}


def test_request_retrains_touched_shard_bitwise_like_from_scratch(small, tmp_path):
    svc = make(small, tmp_path, slices=2).fit()
    before = [m.state_dict() for m in svc.models]
    before = [{k: v.clone() for k, v in s.items()} for s in before]
    victim = int(svc.layout[1][1][0])  # in shard 1, slice 1
    cost = svc.unlearn([victim])
    assert cost.shards_retrained == 1 and cost.slices_retrained == 1 and cost.cache_hits == 1
    for s in (0, 2):  # untouched shards: not retrained, same weights
        assert all(torch.equal(v, svc.models[s].state_dict()[k]) for k, v in before[s].items())
    for s in range(3):  # no constituent model was trained on a removed id
        assert victim not in svc.training_ids(s)
    # shard 1 from scratch on its retained ids, with the service's seeds
    x, y = small
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=derive_seed(4, "init", 1))
    done = 0
    for sl, ep in enumerate(svc.epochs):
        ids = torch.from_numpy(svc.retained(1, sl))
        fit(model, x[ids], y[ids], svc.cfg, seed=derive_seed(4, "train", 1, sl), device="cpu",
            epochs=ep, epoch_offset=done)
        done += ep
    assert states_equal(model, svc.models[1])


def test_exact_unlearning_equals_training_without_the_samples(small):
    svc = make(small, shards=1).fit()
    removed = [int(i) for i in svc.layout[0][0][:5]]
    svc.unlearn(removed)
    x, y = small
    keep = torch.from_numpy(svc.training_ids(0))
    assert not set(removed) & set(keep.tolist())
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=derive_seed(4, "init", 0))
    fit(model, x[keep], y[keep], svc.cfg, seed=derive_seed(4, "train", 0, 0), device="cpu")
    assert states_equal(model, svc.models[0])


def test_cache_reuse_and_resume_after_interruption(small, tmp_path, monkeypatch):
    calls = []
    real_fit = sisa.fit

    def dying_fit(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while training the third shard
        calls.append(1)
        return real_fit(*args, **kw)

    monkeypatch.setattr(sisa, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        make(small, tmp_path).fit()
    monkeypatch.setattr(sisa, "fit", real_fit)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not list(tmp_path.glob(".tmp-*"))
    resumed = make(small, tmp_path).fit()
    assert resumed.fit_cost.cache_hits == 2 and resumed.fit_cost.slices_retrained == 1
    again = make(small, tmp_path).fit()
    assert again.fit_cost.slices_retrained == 0
    assert all(states_equal(a, b) for a, b in zip(resumed.models, again.models))


def test_corrupt_and_mismatched_checkpoints_are_retrained(small, tmp_path):
    first = make(small, tmp_path).fit()
    files = sorted(tmp_path.glob("*.pt"))
    files[0].write_bytes(b"not a checkpoint")
    state, meta = cache.load(files[1])
    cache.save(files[1], state, {**meta, "key": "0" * 40})  # a valid entry of another key
    with pytest.warns(RuntimeWarning, match="does not load .*it holds another key"):
        second = make(small, tmp_path).fit()
    assert second.fit_cost.slices_retrained == 2 and second.fit_cost.cache_hits == 1
    assert all(states_equal(a, b) for a, b in zip(first.models, second.models))


def test_bad_requests_change_nothing(small):
    svc = make(small, requestable=np.arange(500, 600)).fit()
    svc.unlearn([510])
    snapshot = (svc.removed.copy(), [m.state_dict()["net.0.0.weight"].clone() for m in svc.models])
    for ids, msg in (([600], "unknown sample id 600"), ([510], "already unlearned"),
                     ([3], "not one of the requester's own samples"),
                     ([520, 520], "same sample id twice"), ([520, -1], "unknown sample id -1")):
        with pytest.raises(ValueError, match=msg):
            svc.unlearn(ids)
    assert np.array_equal(svc.removed, snapshot[0]) and len(svc.log) == 1
    assert all(torch.equal(a, m.state_dict()["net.0.0.weight"])
               for a, m in zip(snapshot[1], svc.models))


def test_bad_service_settings(small):
    with pytest.raises(ValueError, match="1000 shards x 1 slices is more than the 600 samples"):
        make(small, shards=1000)
    with pytest.raises(ValueError, match="shards 0"):
        make(small, shards=0)
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        make(small, aggregation="max")


def test_aggregations(small):
    svc = make(small).fit()
    x = small[0][:50]
    votes = svc.predict_proba(x, "vote")
    assert torch.allclose(votes.sum(1), torch.ones(50))
    assert torch.allclose(votes * 3, (votes * 3).round())  # shares of 3 votes
    mean = svc.predict_proba(x, "mean")
    assert torch.allclose(mean, svc.member_proba(x).mean(0))
    pred = svc.predict(x)
    assert (votes.gather(1, pred[:, None]).squeeze(1) == votes.max(1).values).all()


def count_training(monkeypatch) -> list[str]:
    """Record every training call the SISA service makes (one model, stacked, or in
    worker processes): the list a test reads to see what was trained."""
    calls = []
    for name in ("fit", "fit_stacked", "train_jobs"):
        real = getattr(sisa, name)
        monkeypatch.setattr(sisa, name, lambda *a, _real=real, _name=name, **kw:
                            calls.append(_name) or _real(*a, **kw))
    return calls


def test_request_cost_does_not_depend_on_the_cache(small, tmp_path, monkeypatch):
    first = make(small, tmp_path).fit()
    victims = [int(first.layout[0][0][0]), int(first.layout[2][0][0])]
    trained = count_training(monkeypatch)
    fresh = first.unlearn(victims)
    assert trained  # the request's two shards were trained
    trained.clear()
    replay = make(small, tmp_path).fit().unlearn(victims)  # same request, all cached
    assert trained == []  # nothing trained: every slice came from the cache
    assert fresh.cache_hits == 0 and replay.cache_hits == 2
    assert (replay.shards_retrained, replay.slices_retrained, replay.sample_epochs) == \
        (fresh.shards_retrained, fresh.slices_retrained, fresh.sample_epochs) == (2, 2, 2 * 199 * 2)
    assert replay.seconds == pytest.approx(fresh.seconds)  # the stored seconds, replayed


def test_shards_trained_together_match_one_by_one(small):
    kw = dict(shards=3, slices=2)
    apart = make(small, stacked=False, **kw).fit()
    together = make(small, stacked=True, **kw).fit()
    request = np.concatenate([apart.layout[s][1][:2] for s in range(3)])  # every shard
    costs = [svc.unlearn(request) for svc in (apart, together)]
    assert costs[0].sample_epochs == costs[1].sample_epochs
    assert costs[0].shards_retrained == costs[1].shards_retrained == 3
    for a, b in zip(apart.models, together.models):
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="stacked"):
        make(small, stacked="yes")
