"""Detecting malicious unlearning requests (BAU paper, section 6).

* Model uncertainty (``"mu"``): Gini impurity ``1 - sum_c p_c(x)^2`` of the softmax of the
  constituent model that was trained on the sample.
* Sub-model similarity (``"sms"``): standard deviation, across all constituent models, of
  the probability of the sample's claimed label. Undefined for a single model.

High scores are suspicious. A :class:`RequestFilter` turns a detector and a threshold into
the ``screen`` of a :class:`~bdunlearn.sisa.SisaService`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import auroc, threshold_at_fpr
from .train import predict_proba

DETECTORS = ("mu", "sms")


def gini(probs: torch.Tensor) -> torch.Tensor:
    """Gini impurity of each row of a probability matrix ``(N, K)``."""
    if probs.dim() != 2:
        raise ValueError(f"gini needs probabilities of shape (N, K), got {tuple(probs.shape)}")
    return 1.0 - (probs.double() ** 2).sum(1)


def claimed_label_spread(member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Std across models of each sample's claimed-label probability; input ``(S, N, K)``."""
    if member_probs.dim() != 3:
        raise ValueError("sub-model similarity needs probabilities of shape (models, N, K)")
    if member_probs.shape[0] < 2:
        raise ValueError("sub-model similarity is undefined for a single model: "
                         "it compares the constituent models of a sharded (S >= 2) service")
    idx = labels.view(1, -1, 1).expand(member_probs.shape[0], -1, 1)
    p = member_probs.double().gather(2, idx).squeeze(2)
    return p.std(0, unbiased=False)


def scores(service, ids, detector: str) -> np.ndarray:
    """Scores of the training samples ``ids`` of a fitted service (batched per shard)."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
    t = torch.from_numpy(ids)
    if detector == "sms":
        if service.shards < 2:
            raise ValueError("sub-model similarity is undefined for a single model: "
                             "it compares the constituent models of a sharded (S >= 2) service")
        return claimed_label_spread(service.member_proba(service.x[t]), service.y[t]).numpy()
    out = np.empty(len(ids))
    shard = service.shard_of[ids]
    for s in np.unique(shard):
        sel = np.flatnonzero(shard == s)
        probs = predict_proba(service.models[s], service.x[t[sel]], device=service.device)
        out[sel] = gini(probs).numpy()
    return out


def matched_clean(service, positives, clean_ids, rng: np.random.Generator, exclude=()):
    """For each positive id, one clean id from the same shard (without replacement)."""
    clean_ids = np.setdiff1d(clean_ids, np.asarray(exclude, dtype=np.int64))
    clean_ids = clean_ids[~service.removed[clean_ids]]
    by_shard = {s: list(rng.permutation(clean_ids[service.shard_of[clean_ids] == s]))
                for s in np.unique(service.shard_of[positives])}
    out = []
    for p in positives:
        pool = by_shard[service.shard_of[p]]
        if not pool:
            raise ValueError(f"shard {service.shard_of[p]} has too few clean samples to match")
        out.append(pool.pop())
    return np.asarray(out, dtype=np.int64)


def evaluate(service, mitigation_ids, clean_ids, detector: str, *, seed: int = 0,
             fpr: float = 0.05) -> dict:
    """AUROC of mitigation samples against as many clean samples from the same shards.

    The operating point: a threshold set on a second, disjoint draw of same-shard clean
    samples alone for false-positive rate ``fpr``; the true- and false-positive rates it
    gives on the evaluation sets.
    """
    pos = np.asarray(mitigation_ids, dtype=np.int64)
    pos = pos[~service.removed[pos]]
    if pos.size == 0:
        raise ValueError("no mitigation sample is left in the training set to score")
    rng = np.random.default_rng([seed, 5])
    neg = matched_clean(service, pos, clean_ids, rng)
    calib = matched_clean(service, pos, clean_ids, rng, exclude=neg)
    s_pos, s_neg = scores(service, pos, detector), scores(service, neg, detector)
    thr = threshold_at_fpr(scores(service, calib, detector), fpr)
    return {"detector": detector, "auroc": auroc(s_pos, s_neg), "threshold": thr,
            "tpr": float((s_pos > thr).mean()), "fpr": float((s_neg > thr).mean()),
            "positives": int(pos.size), "scores_pos": s_pos, "scores_neg": s_neg}


@dataclass
class RequestFilter:
    """Refuse requested ids whose detector score exceeds ``threshold``."""

    detector: str
    threshold: float

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; "
                             f"choose one of {', '.join(DETECTORS)}")

    def __call__(self, service, ids) -> np.ndarray:
        return scores(service, ids, self.detector) > self.threshold

    @classmethod
    def calibrate(cls, service, detector: str, *, fpr: float = 0.05, sample: int = 2000,
                  seed: int = 0) -> "RequestFilter":
        """Threshold from a random sample of the service's own training data.

        This is what a defender can do: it does not know which samples are malicious, so
        it assumes most of its training data is benign.
        """
        rng = np.random.default_rng([seed, 6])
        pool = np.flatnonzero(~service.removed)
        ids = rng.choice(pool, min(sample, pool.size), replace=False)
        return cls(detector, threshold_at_fpr(scores(service, ids, detector), fpr))
