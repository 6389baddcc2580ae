import numpy as np
import pytest
import torch

from bdunlearn import detect
from bdunlearn.data import load
from bdunlearn.metrics import auroc, threshold_at_fpr
from bdunlearn.sisa import SisaService
from bdunlearn.registry import reference_config


def test_gini_on_hand_built_softmax():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert torch.allclose(detect.gini(p), torch.tensor([0.0, 0.5, 2 / 3], dtype=torch.float64))


def test_submodel_similarity_on_hand_built_softmax():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]],
                          [[0.1, 0.9], [0.2, 0.8]]])  # 2 models, 2 samples
    spread = detect.claimed_label_spread(probs, torch.tensor([0, 1]))
    assert torch.allclose(spread, torch.tensor([0.4, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="undefined for a single model"):
        detect.claimed_label_spread(probs[:1], torch.tensor([0, 1]))


def test_auroc_constructed_cases():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1, 1], [1, 1, 1]) == 0.5
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.03
    assert auroc([2, 0], [1, 1]) == 0.5


def test_threshold_at_fpr():
    neg = np.arange(100)
    thr = threshold_at_fpr(neg, 0.05)
    assert (neg > thr).mean() <= 0.05 and (neg >= thr).mean() > 0.05


@pytest.fixture(scope="module")
def service():
    ds = load("digits").subset(600, 100, seed=0)
    svc = SisaService(ds.x_train, ds.y_train, arch="fmnist_cnn", num_classes=10,
                      cfg=reference_config("digits", epochs=2), shards=2, seed=0, device="cpu")
    return svc.fit()


def test_scores_are_batched_per_shard(service):
    ids = np.arange(40)
    mu = detect.scores(service, ids, "mu")
    s0 = ids[service.shard_of[ids] == 0]
    expected = detect.gini(service.member_proba(service.x[torch.from_numpy(s0)])[0]).numpy()
    assert np.allclose(mu[service.shard_of[ids] == 0], expected)
    assert detect.scores(service, ids, "sms").shape == (40,)
    with pytest.raises(ValueError, match="unknown detector 'xyz'"):
        detect.scores(service, ids, "xyz")


def test_filter_refuses_exactly_the_flagged_ids(service):
    ids = np.arange(100, 140)
    scores = detect.scores(service, ids, "mu")
    thr = float(np.median(scores))
    flagged = set(ids[scores > thr].tolist())
    service.screen = detect.RequestFilter("mu", thr)
    before = service.removed.copy()
    cost = service.unlearn(ids)
    service.screen = None
    assert set(service.refused) == flagged and cost.refused == len(flagged)
    newly = set(np.flatnonzero(service.removed & ~before).tolist())
    assert newly == set(ids.tolist()) - flagged
