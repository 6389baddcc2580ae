"""Detecting malicious unlearning requests (BAU paper, section 6).

* Model uncertainty (``"mu"``): Gini impurity ``1 - sum_c p_c(x)^2`` of the softmax of the
  constituent model that was trained on the sample.
* Sub-model similarity (``"sms"``): standard deviation, across all constituent models, of
  the probability of the sample's claimed label. Undefined for a single model.

Detectors of the request-detection benchmark (notebook 07), beside BAU's two:

* Loss (``"loss"``): cross-entropy of the claimed label under the sample's own model.
* Feature-space neighbours (``"knn"``, after Deep k-NN, Peri et al. 2020): how many of the
  sample's :data:`KNN_K` nearest neighbours, among a fixed sample of its own model's
  training data, in that model's penultimate layer (cosine), carry a label other than
  the sample's claimed label; ties between equal counts are broken by how much nearer
  the nearest other-label neighbour is than the nearest same-label one. Scaled to
  [0, 1]: ``(disagreeing + tie-breaker in [0, 1]) / (KNN_K + 1)``. Without the
  tie-breaker the score takes only ``KNN_K + 1`` values, and a threshold on benign
  requests falls on a tie (more than 1% of benign samples have no agreeing neighbour).
* Batch (``"batch"``, :func:`batch_scores`): a whole request batch at once; the mean
  pairwise cosine similarity of the batch's penultimate features, each centred on the
  mean feature of its claimed class in a fixed sample of training data, averaged over
  the constituent models. An attacker's requests share a trigger, a benign user's do
  not; centring per class keeps a benign batch of one class (a user deleting their
  photos of one kind) from looking alike for its label alone.

:data:`NEEDS` says what each needs to see. High scores are suspicious. A
:class:`RequestFilter` (per sample) or :class:`BatchFilter` turns a detector and a
threshold into the ``screen`` of an unlearning service (:mod:`bdunlearn.unlearning`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .checks import integer, number
from .metrics import auroc, threshold_at_fpr
from .train import features, predict_logits, predict_proba
from .unlearning.base import sample_ids

DETECTORS = ("mu", "sms")  # BAU's (notebooks 04 and 06)
SAMPLE_DETECTORS = ("mu", "sms", "loss", "knn")
BATCH_DETECTORS = ("batch",)
BENCHMARK_DETECTORS = SAMPLE_DETECTORS + BATCH_DETECTORS
NEEDS = {"mu": "the model that trained the sample", "sms": "every constituent model (S >= 2)",
         "loss": "the model that trained the sample",
         "knn": "the sample's model's features and a sample of its training data",
         "batch": "every constituent model's features and a sample of training data"}
KNN_K = 10
REFERENCE_SIZE = 2000


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


def _check_detector(detector, allowed) -> str:
    if detector not in allowed:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(allowed)}")
    return detector


_MEMO: dict | None = None


@contextmanager
def memo():
    """Within this block, each model's probabilities and features of each training sample
    are computed once (a benchmark scores the same samples under several detectors and
    populations). Only for models that do not change inside the block."""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def _outputs(service, model: int, ids: np.ndarray, what: str) -> torch.Tensor:
    """``"proba"``, ``"logits"`` or ``"features"`` of the training samples ``ids`` under
    constituent model ``model`` (memoised inside :func:`memo`)."""
    net = service.models[model]
    fn = {"proba": predict_proba, "logits": predict_logits, "features": features}[what]
    if _MEMO is None:
        return fn(net, service.x[torch.from_numpy(ids)], device=service.device)
    have, rows = _MEMO.setdefault((net, what), (np.zeros(len(service.y), dtype=bool), {}))
    new = np.unique(ids[~have[ids]])
    if new.size:
        out = fn(net, service.x[torch.from_numpy(new)], device=service.device)
        rows.update(zip(new.tolist(), out))
        have[new] = True
    return torch.stack([rows[i] for i in ids.tolist()]) if len(ids) else torch.empty(0)


def _reference(service, model: int) -> np.ndarray:
    """A fixed sample of up to :data:`REFERENCE_SIZE` ids model ``model`` trained on
    (``-1``: any retained id): a function of the service's state alone, so every score
    (calibration, test, deployed filter) is taken against the same reference."""
    pool = (np.flatnonzero(~service.removed) if model < 0
            else np.asarray(service.training_ids(model), dtype=np.int64))
    rng = np.random.default_rng([31, model + 1])
    return np.sort(rng.choice(pool, min(REFERENCE_SIZE, pool.size), replace=False))


def _knn(service, model: int, ids: np.ndarray) -> np.ndarray:
    """The ``"knn"`` score (module docstring) of each sample against model ``model``'s
    reference samples, itself left out."""
    ref = _reference(service, model)
    f_ref = torch.nn.functional.normalize(_outputs(service, model, ref, "features"), dim=1)
    f_q = torch.nn.functional.normalize(_outputs(service, model, ids, "features"), dim=1)
    sim = (f_q @ f_ref.T).double()
    sim[torch.from_numpy(ids).view(-1, 1) == torch.from_numpy(ref).view(1, -1)] = -2.0
    k = min(KNN_K, len(ref) - 1)
    y_ref, y_q = service.y[torch.from_numpy(ref)], service.y[torch.from_numpy(ids)]
    disagree = (y_ref[sim.topk(k, dim=1).indices] != y_q.view(-1, 1)).double().sum(1)
    same = y_ref.view(1, -1) == y_q.view(-1, 1)
    margin = (sim.masked_fill(~same, -2.0).amax(1)
              - sim.masked_fill(same, -2.0).amax(1))  # nearest same minus nearest other
    tie = (2.0 - margin.clamp(-2.0, 2.0)) / 4.0  # 1: the nearest other-label one is nearer
    return ((disagree + tie) / (k + 1)).numpy()


def scores(service, ids, detector: str) -> np.ndarray:
    """Per-sample scores (:data:`SAMPLE_DETECTORS`) of the training samples ``ids`` of a
    fitted unlearning service (any :class:`~bdunlearn.unlearning.UnlearningService`;
    batched per model). A sample's score does not depend on what is scored with it."""
    _check_detector(detector, SAMPLE_DETECTORS)
    ids = sample_ids(ids, len(service.y))
    t = torch.from_numpy(ids)
    if detector == "sms":
        if service.num_models < 2:
            raise ValueError("sub-model similarity is undefined for a service with a single "
                             f"model ({type(service).__name__} with {service.num_models}): "
                             "it compares the constituent models of a sharded (S >= 2) service")
        probs = torch.stack([_outputs(service, m, ids, "proba")
                             for m in range(service.num_models)])
        return claimed_label_spread(probs, service.y[t]).numpy()
    out = np.empty(len(ids))
    owner = service.model_of(ids)
    for m in np.unique(owner):
        sel = np.flatnonzero(owner == m)
        if detector == "knn":
            out[sel] = _knn(service, int(m), ids[sel])
        elif detector == "mu":
            out[sel] = gini(_outputs(service, int(m), ids[sel], "proba")).numpy()
        else:  # from the logits: a softmax near 1 would round every confident sample to 0
            logp = torch.log_softmax(_outputs(service, int(m), ids[sel], "logits").double(), 1)
            out[sel] = (-logp.gather(1, service.y[t[sel]].view(-1, 1)).squeeze(1)).numpy()
    return out


def batch_scores(service, batches) -> np.ndarray:
    """One score per request batch (a list of id arrays, each of two or more ids): the
    ``"batch"`` detector (see the module docstring). A class absent from the reference
    sample is centred on the reference's mean feature."""
    batches = [sample_ids(b, len(service.y), what="request id") for b in batches]
    if any(b.size < 2 for b in batches):
        raise ValueError("a batch score needs batches of at least two request ids")
    if not batches:
        return np.empty(0)
    ref = _reference(service, -1)
    y_ref = service.y[torch.from_numpy(ref)]
    every = np.unique(np.concatenate(batches))
    by_size: dict[int, list[int]] = {}
    for b, ids in enumerate(batches):
        by_size.setdefault(len(ids), []).append(b)
    out = np.zeros(len(batches))
    with memo():  # every batch's samples and the reference, once per model
        for m in range(service.num_models):
            f_ref = _outputs(service, m, ref, "features").double()
            centres = f_ref.mean(0).repeat(service.num_classes, 1)
            for c in y_ref.unique().tolist():
                centres[c] = f_ref[y_ref == c].mean(0)
            f = _outputs(service, m, every, "features").double()
            unit = torch.nn.functional.normalize(
                f - centres[service.y[torch.from_numpy(every)]], dim=1)
            for n, which in by_size.items():  # the batches of one size at once
                rows = np.searchsorted(every, np.stack([batches[b] for b in which]))
                fb = unit[torch.from_numpy(rows)]  # (batches, n, features)
                sim = fb @ fb.transpose(1, 2)
                pairs = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
                out[which] += (pairs / (n * (n - 1))).numpy()
    return out / len(service.models)


def batches_of(ids, size: int) -> list[np.ndarray]:
    """The windows a request of ``ids`` is scored in: consecutive batches of ``size``,
    where a shorter last batch is replaced by the last ``size`` ids (overlapping the batch
    before it), so that every window has ``size`` ids (a batch score's spread depends on
    the batch's size, and its threshold is set on batches of ``size``). A request of fewer
    than ``size`` ids is one window."""
    ids = np.asarray(ids, dtype=np.int64)
    size = integer("batch size", size, 2)
    n = len(ids)
    return [ids[max(0, min(i, n - size)):i + size] for i in range(0, n, size)]


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
        _check_detector(self.detector, SAMPLE_DETECTORS)
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


@dataclass
class BatchFilter:
    """Refuse whole request batches (consecutive ``size`` ids of each request, see
    :func:`batches_of`; a shorter last batch is decided by the window of the request's
    last ``size`` ids) whose ``"batch"`` score exceeds ``threshold``. It scores each
    request as sent: a request of one id is never refused, so a provider must group a
    requester's requests into batches for it to see them."""

    threshold: float
    size: int = 10
    detector = "batch"

    def __post_init__(self):
        self.threshold = number("threshold", self.threshold)
        self.size = integer("batch size", self.size, 2)

    def __call__(self, service, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size < 2:
            return np.zeros(ids.size, dtype=bool)
        flagged = batch_scores(service, batches_of(ids, self.size)) > self.threshold
        starts = range(0, ids.size, self.size)  # each window decides its own new ids
        return np.repeat(flagged, [min(self.size, ids.size - i) for i in starts])


def detector_scores(service, ids, detector: str, *, batch: int = 10, draws: int = 0,
                    seed: int = 0) -> np.ndarray:
    """Scores of ``ids`` under any of :data:`BENCHMARK_DETECTORS`: one per id for the
    per-sample detectors; for ``"batch"``, one per request batch of ``batch`` ids, either
    the consecutive batches of ``ids`` (:func:`batches_of`, ``draws=0``) or ``draws``
    random batches drawn with ``seed``."""
    _check_detector(detector, BENCHMARK_DETECTORS)
    if detector != "batch":
        return scores(service, ids, detector)
    ids = sample_ids(ids, len(service.y), what="request id")
    batch = integer("batch size", batch, 2)
    draws = integer("draws", draws, 0)
    if draws:
        rng = np.random.default_rng([integer("seed", seed, low=0), 32, len(ids)])
        size = min(batch, len(ids))
        groups = [rng.choice(ids, size, replace=False) for _ in range(draws)]
    else:
        groups = batches_of(ids, batch)
    return batch_scores(service, groups)


def benchmark(service, positives, populations: dict, detector: str, *,
              fprs=(0.01, 0.05), batch: int = 10, sample: int = 2000, seed: int = 0
              ) -> dict:
    """A detector on a fitted service, as the request-detection benchmark reports it.

    ``positives``: the attacker's requests still in the training set. ``populations``:
    name -> benign request ids (clean training samples). Each population is split, seeded,
    into a calibration half and a test half (at most ``sample`` each): the threshold for
    each false-positive rate in ``fprs`` is set on the calibration half alone, the TPR it
    gives is measured on the positives and the FPR on the test half, and the AUROC is the
    positives against the test half. The batch detector scores ``sample`` random request
    batches of each (a batch of ``batch`` ids, or fewer when there are fewer positives):
    its thresholds rest on as many scores as a per-sample detector's. Returns
    ``{name: {"auroc", "tpr@<f>", "fpr@<f>", "threshold@<f>"}}``.
    """
    _check_detector(detector, BENCHMARK_DETECTORS)
    if not isinstance(populations, dict) or not populations:
        raise ValueError("populations must be a non-empty dict of name -> benign ids, got "
                         f"{type(populations).__name__}")
    batch, sample = integer("batch size", batch, 2), integer("sample", sample, 2)
    seed = integer("seed", seed, low=0)
    fprs = [number("false-positive rate", f, 0, 1, low_open=True, high_open=True)
            for f in fprs]
    pos = sample_ids(positives, len(service.y), what="request id")
    pos = pos[~service.removed[pos]]
    if pos.size < 2:
        raise ValueError("the benchmark needs at least two attack requests in the training set")
    draws = sample if detector == "batch" else 0
    with memo():
        return _benchmark(service, pos, populations, detector, fprs, batch, draws, sample,
                          seed)


def _benchmark(service, pos, populations, detector, fprs, batch, draws, sample, seed):
    s_pos = detector_scores(service, pos, detector, batch=batch, draws=draws, seed=seed)
    out = {}
    for name, ids in populations.items():
        calib, test = split_benign(service, ids, pos, sample=sample, seed=seed, name=name)
        s_cal = detector_scores(service, calib, detector, batch=batch, draws=draws,
                                seed=seed + 1)
        s_neg = detector_scores(service, test, detector, batch=batch, draws=draws,
                                seed=seed + 2)
        row = {"auroc": auroc(s_pos, s_neg)}
        for f in fprs:
            thr = threshold_at_fpr(s_cal, f)
            row |= {f"tpr@{f:g}": float((s_pos > thr).mean()),
                    f"fpr@{f:g}": float((s_neg > thr).mean()), f"threshold@{f:g}": thr}
        out[name] = row
    return out


def split_benign(service, ids, exclude=(), *, sample: int = 2000, seed: int = 0,
                 name: str = "benign") -> tuple[np.ndarray, np.ndarray]:
    """A benign population's retained ids outside ``exclude``, shuffled (seeded) and split
    into a calibration half and a test half of at most ``sample`` ids each."""
    sample, seed = integer("sample", sample, 2), integer("seed", seed, low=0)
    ids = np.setdiff1d(sample_ids(ids, len(service.y), what="benign id"),
                       np.asarray(exclude, dtype=np.int64))
    ids = np.random.default_rng([seed, 33]).permutation(ids[~service.removed[ids]])
    half = min(sample, len(ids) // 2)
    if half < 2:
        raise ValueError(f"benign population {name!r} has too few ids to calibrate on")
    return ids[:half], ids[half:2 * half]


def screen_for(detector: str, threshold: float, *, batch: int = 10):
    """The ``screen`` of a service that refuses what ``detector`` scores above
    ``threshold`` (:class:`RequestFilter` or :class:`BatchFilter`)."""
    if _check_detector(detector, BENCHMARK_DETECTORS) == "batch":
        return BatchFilter(threshold, batch)
    return RequestFilter(detector, threshold)
