"""Detecting malicious unlearning requests (BAU paper, section 6).

* Model uncertainty (``"mu"``): Gini impurity ``1 - sum_c p_c(x)^2`` of the softmax of the
  constituent model that was trained on the sample.
* Sub-model similarity (``"sms"``): standard deviation, across all constituent models, of
  the probability of the sample's claimed label. Undefined for a single model.

High scores are suspicious. A :class:`RequestFilter` turns a detector and a threshold into
the ``screen`` of an unlearning service (:mod:`bdunlearn.unlearning`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .checks import integer, number
from .metrics import auroc, threshold_at_fpr
from .train import predict_proba
from .unlearning.base import sample_ids

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
    """Scores of the training samples ``ids`` of a fitted unlearning service (any
    :class:`~bdunlearn.unlearning.UnlearningService`; MU batched per model)."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    ids = sample_ids(ids, len(service.y))
    t = torch.from_numpy(ids)
    if detector == "sms":
        if service.num_models < 2:
            raise ValueError("sub-model similarity is undefined for a service with a single "
                             f"model ({type(service).__name__} with {service.num_models}): "
                             "it compares the constituent models of a sharded (S >= 2) service")
        return claimed_label_spread(service.member_proba(service.x[t]), service.y[t]).numpy()
    out = np.empty(len(ids))
    owner = service.model_of(ids)
    for m in np.unique(owner):
        sel = np.flatnonzero(owner == m)
        probs = predict_proba(service.models[m], service.x[t[sel]], device=service.device)
        out[sel] = gini(probs).numpy()
    return out


def matched_clean(service, positives, clean_ids, rng: np.random.Generator, exclude=()):
    """For each positive id, one clean id trained on by the same model (no replacement)."""
    clean_ids = np.setdiff1d(np.asarray(clean_ids, dtype=np.int64),
                             np.asarray(exclude, dtype=np.int64))
    clean_ids = clean_ids[~service.removed[clean_ids]]
    clean_owner, pos_owner = service.model_of(clean_ids), service.model_of(positives)
    by_model = {m: list(rng.permutation(clean_ids[clean_owner == m]))
                for m in np.unique(pos_owner)}
    out = []
    for m in pos_owner:
        pool = by_model[m]
        if not pool:
            raise ValueError(f"model {m} has too few clean samples to match its "
                             f"{int((pos_owner == m).sum())} positives")
        out.append(pool.pop())
    return np.asarray(out, dtype=np.int64)


def evaluate(service, mitigation_ids, clean_ids, detector: str, *, draws: int = 5,
             seed: int = 0, fpr: float = 0.05) -> dict:
    """Detection as the BAU authors evaluate it.

    Positives: the mitigation samples still in the training set. Negatives: as many clean
    samples trained on by the same models, drawn from ``clean_ids`` (pass ids that are
    neither poison nor mitigation originals). ``auroc`` is the mean over ``draws``
    independent negative draws (``aurocs``: each draw's). The operating point:
    ``threshold`` set for false-positive rate ``fpr`` on a separate draw of clean
    samples alone (disjoint from every negative), with the ``tpr`` it gives on the
    positives and the ``fpr`` it gives on the negatives (mean over draws).
    """
    draws = integer("draws", draws, 1)
    fpr = number("fpr", fpr, 0, 1, low_open=True, high_open=True)
    pos = sample_ids(mitigation_ids, len(service.y), what="mitigation id")
    pos = pos[~service.removed[pos]]
    if pos.size == 0:
        raise ValueError("no mitigation sample is left in the training set to score")
    clean = sample_ids(clean_ids, len(service.y), what="clean id")
    calib = matched_clean(service, pos, clean, np.random.default_rng([seed, 6]))
    s_pos = scores(service, pos, detector)
    thr = threshold_at_fpr(scores(service, calib, detector), fpr)
    aurocs, fprs, s_negs = [], [], []
    for d in range(draws):
        neg = matched_clean(service, pos, clean, np.random.default_rng([seed, 5, d]),
                            exclude=calib)
        s_neg = scores(service, neg, detector)
        aurocs.append(auroc(s_pos, s_neg))
        fprs.append(float((s_neg > thr).mean()))
        s_negs.append(s_neg)
    return {"detector": detector, "auroc": float(np.mean(aurocs)), "aurocs": aurocs,
            "threshold": thr, "tpr": float((s_pos > thr).mean()), "fpr": float(np.mean(fprs)),
            "positives": int(pos.size), "scores_pos": s_pos, "scores_neg": s_negs[0]}


@dataclass
class RequestFilter:
    """Refuse requested ids whose detector score exceeds ``threshold``."""

    detector: str
    threshold: float

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; "
                             f"choose one of {', '.join(DETECTORS)}")
        self.threshold = number("threshold", self.threshold)

    def __call__(self, service, ids) -> np.ndarray:
        return scores(service, ids, self.detector) > self.threshold

    @classmethod
    def calibrate(cls, service, detector: str, *, fpr: float = 0.05, sample: int = 2000,
                  seed: int = 0) -> RequestFilter:
        """Threshold from a random sample of the service's own training data.

        This is what a defender can do: it does not know which samples are malicious, so
        it assumes most of its training data is benign.
        """
        rng = np.random.default_rng([seed, 6])
        pool = np.flatnonzero(~service.removed)
        ids = rng.choice(pool, min(sample, pool.size), replace=False)
        return cls(detector, threshold_at_fpr(scores(service, ids, detector), fpr))
