"""The adaptive track of notebook 07 (bdunlearn.adaptive): each attacker strategy's request
stream on a constructed plan, correlated benign users, the aggregated per-sample baselines
and the stream detector, without training a model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bdunlearn import adaptive, detect, detectors
from bdunlearn.adaptive import Plan, Request

MITIGATION = np.arange(1000, 1030)  # 30 attack ids
OWN = np.arange(2000, 2300)  # the attacker's own clean ids
BENIGN = [np.arange(i * 10, i * 10 + 10) for i in range(20)]  # 20 users of 10 ids


def plan(**kw):
    return Plan(MITIGATION, OWN, **kw)


def attack_requests(stream):
    return [r for r in stream if r.attack]


def test_every_strategy_sends_the_benign_requests_unchanged_in_order():
    for name in adaptive.STRATEGIES:
        kw = {"surrogate": -MITIGATION.astype(float)} if name == "aware" else {}
        s = adaptive.stream(name, plan(**kw), BENIGN, np.random.default_rng(0))
        users = [r.ids for r in s if not r.attack]
        assert len(users) == len(BENIGN)
        assert all(np.array_equal(a, b) for a, b in zip(users, BENIGN)), name


def test_single_sends_one_id_per_request_in_one_burst():
    s = adaptive.stream("single", plan(), BENIGN, np.random.default_rng(1))
    mine = attack_requests(s)
    assert [len(r.ids) for r in mine] == [1] * 30
    assert np.array_equal(np.concatenate([r.ids for r in mine]), MITIGATION)
    at = [i for i, r in enumerate(s) if r.attack]
    assert at == list(range(at[0], at[0] + 30))  # back to back
    assert {r.account for r in mine} == {"attacker"}


@pytest.mark.parametrize("k", adaptive.DILUTIONS)
def test_dilution_puts_exactly_k_attack_ids_in_each_request(k):
    s = adaptive.stream(f"dilute{k}", plan(), BENIGN, np.random.default_rng(2))
    mine = attack_requests(s)
    counts = [int(np.isin(r.ids, MITIGATION).sum()) for r in mine]
    assert counts == [k] * (30 // k)  # 30 is a multiple of 1, 3 and 5
    assert all(len(r.ids) == adaptive.REQUEST_SIZE for r in mine)
    rest = np.concatenate([r.ids[~np.isin(r.ids, MITIGATION)] for r in mine])
    assert np.isin(rest, OWN).all() and len(np.unique(rest)) == len(rest)
    assert np.array_equal(np.sort(np.concatenate([r.ids for r in mine])[
        np.isin(np.concatenate([r.ids for r in mine]), MITIGATION)]), MITIGATION)


def test_sybil_spreads_single_requests_over_accounts_among_benign_users():
    s = adaptive.sybil(plan(), BENIGN, np.random.default_rng(3), accounts=6)
    mine = attack_requests(s)
    assert len({r.account for r in mine}) == 6 and all(len(r.ids) == 1 for r in mine)
    assert np.array_equal(np.sort(np.concatenate([r.ids for r in mine])), MITIGATION)
    kinds = [r.attack for r in s]
    # interleaved: the attack's requests are not one burst
    first, last = kinds.index(True), len(kinds) - 1 - kinds[::-1].index(True)
    assert not all(kinds[first:last + 1])
    # consecutive attack requests come from different accounts (round robin)
    accounts = [r.account for r in mine]
    assert all(a != b for a, b in zip(accounts, accounts[1:]))


def test_detector_aware_selection_requests_the_least_suspicious():
    surrogate = np.arange(30, dtype=float)[::-1]  # the last mitigation ids least suspicious
    s = adaptive.stream("aware", plan(surrogate=surrogate), BENIGN, np.random.default_rng(4))
    sent = np.concatenate([r.ids for r in attack_requests(s)])
    assert np.array_equal(sent, MITIGATION[::-1][:15])  # half, least suspicious first
    picked = adaptive.least_suspicious(plan(surrogate=surrogate), keep=0.2)
    assert np.array_equal(picked, MITIGATION[[29, 28, 27, 26, 25, 24]])


def test_correlated_users_are_clusters_of_near_neighbours():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 16)) * 10
    feats = np.repeat(centres, 10, axis=0) + rng.normal(size=(60, 16)) * 0.1
    order = rng.permutation(60)
    ids = np.arange(500, 560)[order]
    users = adaptive.clusters(torch.tensor(feats[order]), ids, 6, 10, rng)
    assert len(users) == 6
    for u in users:
        assert len(np.unique((u - 500) // 10)) == 1  # every id of one cluster
    assert len(np.unique(np.concatenate(users))) == 60


class _FakeService(SimpleNamespace):
    """What the engine reads of a service for a detector that sees no model output."""

    def model_of(self, ids):
        return np.asarray(ids) % self.num_models


@pytest.fixture
def idscore():
    """A per-sample detector whose score of an id is the id / 100 (unregistered after)."""
    @detectors.register("idscore", sees="own model", benchmark=False)
    def idscore(view, ids):
        return np.asarray(ids, dtype=float) / 100
    yield "idscore"
    detectors.REGISTRY.pop("idscore", None)


def test_aggregated_baselines_are_the_mean_and_max_of_per_sample_scores(idscore):
    svc = _FakeService(y=torch.zeros(100, dtype=torch.long), num_models=2,
                       removed=np.zeros(100, dtype=bool))
    batches = [np.array([3, 50, 7]), np.array([90, 10])]
    per = [detect.scores(svc, b, idscore) for b in batches]
    assert np.allclose(detect.batch_scores(svc, batches, f"{idscore}@mean"),
                       [p.mean() for p in per])
    assert np.allclose(detect.batch_scores(svc, batches, f"{idscore}@max"),
                       [p.max() for p in per])
    assert detect.aggregated(idscore, "max") == "idscore@max"
    det = detect.detector_of("idscore@mean")
    assert (det.unit, det.version, det.sees) == ("batch", 1, "every model")
    assert "idscore@mean" not in detectors.REGISTRY  # derived on demand
    flt = detect.screen_for("idscore@max", 0.55, batch=2)
    assert flt(svc, np.array([1, 2, 60, 3])).tolist() == [False, False, True, True]


def test_the_stream_detector_catches_a_spread_out_attack_per_request_batches_miss():
    """A Sybil attacker sends single ids from many accounts; a batch screen on each
    request as sent never sees two of them together, the same screen on the pooled
    stream does. The batch score here: the share of attack ids in the window."""
    attack = set(MITIGATION.tolist())

    def screen(ids):  # a batch filter: windows of 10, flagged when half are attack ids
        return detect.BatchFilter.__call__(
            SimpleNamespace(size=10, detector="x", threshold=0.5), _Scorer(attack), ids)

    s = adaptive.sybil(plan(), BENIGN[:3], np.random.default_rng(6), accounts=10)
    per_request = adaptive.screen_stream(s, screen)
    pooled = adaptive.screen_stream(s, screen, pooled=True)
    mine = [i for i, r in enumerate(s) if r.attack]
    assert not any(per_request[i].any() for i in mine)
    caught = np.mean([pooled[i].all() for i in mine])
    assert caught > 0.5
    assert [len(f) for f in pooled] == [len(r.ids) for r in s]


class _Scorer(SimpleNamespace):
    """Stands in for a service: detect.batch_scores is replaced by the attack share."""

    def __init__(self, attack):
        super().__init__(attack=attack)


@pytest.fixture(autouse=True)
def _share_score(monkeypatch):
    real = detect.batch_scores

    def fake(service, batches, detector="batch"):
        if isinstance(service, _Scorer):
            return np.array([np.mean([int(i) in service.attack for i in b]) for b in batches])
        return real(service, batches, detector)
    monkeypatch.setattr(detect, "batch_scores", fake)


def test_screen_stream_keeps_one_flag_per_id():
    reqs = [Request("a", np.array([1, 2])), Request("b", np.array([3]))]
    out = adaptive.screen_stream(reqs, lambda ids: ids > 1, pooled=True)
    assert [f.tolist() for f in out] == [[False, True], [True]]


# ------------------------------------------------------------------ bad input, one sentence

@pytest.mark.parametrize("call, message", [
    (lambda: adaptive.stream("shotgun", plan(), BENIGN, np.random.default_rng(0)),
     "unknown attacker strategy 'shotgun'; choose one of batches, single, dilute1"),
    (lambda: adaptive.dilute(plan(), BENIGN, np.random.default_rng(0), k=10),
     "attack ids per request k 10 must be an integer between 1 and 9"),
    (lambda: adaptive.dilute(plan(), BENIGN, np.random.default_rng(0), k=0),
     "attack ids per request k 0 must be an integer between 1 and 9"),
    (lambda: adaptive.dilute(Plan(MITIGATION, OWN[:5]), BENIGN, np.random.default_rng(0), k=1),
     "dilution at k = 1 needs 270 of the attacker's own clean ids .* the plan holds 5"),
    (lambda: adaptive.sybil(plan(), BENIGN, np.random.default_rng(0), accounts=0),
     "Sybil accounts 0 must be an integer >= 1"),
    (lambda: adaptive.aware(plan(), BENIGN, np.random.default_rng(0)),
     "detector-aware selection needs the plan's surrogate scores, got None"),
    (lambda: adaptive.least_suspicious(plan(surrogate=np.zeros(3))),
     "the surrogate scores 3 ids, the plan holds 30 mitigation ids"),
    (lambda: adaptive.least_suspicious(plan(surrogate=np.zeros(30)), keep=1.5),
     r"share kept 1.5 must be in \(0, 1\]"),
    (lambda: adaptive.clusters(np.zeros((4, 2)), np.arange(4), 2, 3,
                               np.random.default_rng(0)),
     "2 correlated users of 3 ids need 6 ids, the population holds 4"),
    (lambda: detect.detector_of("mu@median"),
     "unknown detector 'mu@median'; an aggregated detector is '<per-sample detector>@<mean|max>'"),
    (lambda: detect.detector_of("batch@mean"), "unknown detector 'batch@mean'"),
    (lambda: detect.aggregated("mu", "sum"), "unknown aggregate 'sum'"),
    (lambda: detect.detector_of("mu@mean", "sample"), "scores batches, not single ids"),
])
def test_bad_adaptive_knobs_fail_in_one_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_study_declares_the_adaptive_runs_and_narrows_them_at_smoke():
    from bdunlearn import studies
    from bdunlearn.studies import benchmark

    smoke = studies.config("07", "smoke")
    runs = [r for r in benchmark.runs(smoke) if r.table == benchmark.ADAPTIVE]
    assert {r["variant"] for r in runs} == {"bn"} and {r["shards"] for r in runs} == {1}
    assert {(r["strategy"], r["detector"]) for r in runs} == {
        (s, d) for s in ("single", "sybil") for d in ("batch", "batch@stream")}
    default = studies.config("07", "default")
    full = [r for r in benchmark.runs(default) if r.table == benchmark.ADAPTIVE]
    assert {r["shards"] for r in full} == {1, 5}
    assert {r["strategy"] for r in full} == set(adaptive.STRATEGIES)
    dets = {r["detector"] for r in full if r["shards"] == 5}
    assert {"mu", "sms", "mu@mean", "sms@max", "batch", "batch@stream"} <= dets
    assert "sms@mean" not in {r["detector"] for r in full if r["shards"] == 1}
    # the non-adaptive runs are those stored before (same keys)
    plain = [r for r in benchmark.runs(default) if r.table == benchmark.TABLE]
    assert {r["detector"] for r in plain} == set(benchmark.detectors(5))
    assert all(len(r.setting) == 5 for r in plain)
    with pytest.raises(ValueError, match="needs a batch detector before '@stream'"):
        benchmark.base_detector("mu@stream")
