"""Detecting malicious unlearning requests: the engine behind every detector.

The detectors themselves are registered in :mod:`bdunlearn.detectors` (one module each,
with what each needs to see): BAU's model uncertainty (``"mu"``) and sub-model similarity
(``"sms"``), the loss of the claimed label (``"loss"``), feature-space neighbours
(``"knn"``) and a batch-level test (``"batch"``). This module scores requests with any
registered detector (:func:`scores` per sample, :func:`batch_scores` per batch), measures
them as the BAU authors do (:func:`evaluate`) and as the request-detection benchmark
does (:func:`benchmark`: thresholds on benign requests alone), and turns a detector and a
threshold into the ``screen`` of an unlearning service (:class:`RequestFilter`,
:class:`BatchFilter`, :func:`screen_for`). High scores are suspicious.

The names :data:`SAMPLE_DETECTORS`, :data:`BATCH_DETECTORS`, :data:`BENCHMARK_DETECTORS`
and :data:`NEEDS` are read from the registry each time, so a detector registered from
another module is among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import detectors as registry
from .checks import integer, number
from .detectors.base import REFERENCE_SIZE, ModelView, ServiceView, memo  # noqa: F401
from .detectors.base import outputs as _outputs  # noqa: F401
from .detectors.base import reference as _reference  # noqa: F401
from .detectors.knn import KNN_K  # noqa: F401
from .detectors.mu import gini  # noqa: F401
from .detectors.sms import claimed_label_spread  # noqa: F401
from .metrics import auroc, threshold_at_fpr
from .unlearning.base import sample_ids

DETECTORS = ("mu", "sms")  # BAU's (notebooks 04 and 06)


def __getattr__(name: str):
    """The registry's current names (a detector registered later is among them)."""
    if name == "SAMPLE_DETECTORS":
        return registry.names("sample")
    if name == "BATCH_DETECTORS":
        return registry.names("batch")
    if name == "BENCHMARK_DETECTORS":
        return registry.names(benchmark=True)
    if name == "NEEDS":
        return {d.name: d.needs for d in registry.REGISTRY.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


AGGREGATES = ("mean", "max")  # how a per-sample detector's scores make one batch score


def aggregated(detector: str, how: str) -> str:
    """The name of per-sample ``detector`` scored per batch by the ``how`` (one of
    :data:`AGGREGATES`) of its scores over the batch's ids: ``"mu@mean"``."""
    base = registry.get(detector, "sample")
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r} of per-sample scores over a batch; "
                         f"choose one of {', '.join(AGGREGATES)}")
    return f"{base.name}@{how}"


def detector_of(name, unit: str | None = None):
    """The detector ``name`` (of ``unit`` when given): a registered one
    (:func:`bdunlearn.detectors.get`), or a per-sample one scored per batch,
    ``"<detector>@<mean|max>"`` (:func:`aggregated`): a batch detector that scores a batch
    by the mean or max of the per-sample detector's scores over the batch's ids, with
    the per-sample detector's version, needs and shard minimum. Aggregates are not in
    the registry (its names are words): the engine derives them on demand."""
    if not (isinstance(name, str) and "@" in name):
        return registry.get(name, unit)
    base_name, _, how = name.partition("@")
    if base_name not in registry.names("sample") or how not in AGGREGATES:
        raise ValueError(f"unknown detector {name!r}; an aggregated detector is "
                         f"'<per-sample detector>@<{'|'.join(AGGREGATES)}>' with a per-sample "
                         f"detector among {', '.join(registry.names('sample'))}")
    if unit is not None and unit != "batch":
        raise ValueError(f"detector {name!r} scores batches, not single ids (unit "
                         f"'batch', not {unit!r})")
    base = registry.get(base_name, "sample")
    return registry.Detector(
        name, _aggregate_fn(base.name, how), "every model", "batch", base.features,
        base.version, base.min_models, f"{base.title} ({how} over the batch)",
        f"{base.needs}; its {how} over the batch", False)


def aggregate(values, batches, ids, how: str) -> np.ndarray:
    """Per-batch ``how`` (``"mean"`` or ``"max"``) of per-sample ``values``, one per id of
    the sorted unique ``ids``, over each batch's ids."""
    fn = {"mean": np.mean, "max": np.max}[how]
    values, ids = np.asarray(values, dtype=np.float64), np.asarray(ids)
    return np.array([fn(values[np.searchsorted(ids, b)]) for b in batches], dtype=np.float64)


def _aggregate_fn(base: str, how: str):
    def fn(view, batches):
        service = view._service  # the engine's own view: score the ids per sample
        every = np.unique(np.concatenate(batches))
        return aggregate(scores(service, every, base), batches, every, how)
    fn.__qualname__ = f"aggregate_{base}_{how}"
    return fn


def _too_few_models(service, det) -> ValueError:
    n = service.num_models
    return ValueError(f"{det.title} is undefined for a service with "
                      f"{'a single model' if n == 1 else f'{n} models'} "
                      f"({type(service).__name__} with {n}): it compares the constituent "
                      f"models of a sharded (S >= {det.min_models}) service")


def scores(service, ids, detector: str) -> np.ndarray:
    """Per-sample scores (any registered detector of unit ``"sample"``) of the training
    samples ``ids`` of a fitted unlearning service (any
    :class:`~bdunlearn.unlearning.UnlearningService`; batched per model for a detector
    that sees one model). A sample's score does not depend on what is scored with it."""
    det = detector_of(detector, "sample")
    _fitted(service)
    ids = sample_ids(ids, len(service.y))
    if service.num_models < det.min_models:
        raise _too_few_models(service, det)
    if det.sees == "every model":
        return _checked(det, det.fn(ServiceView(service, det), ids), len(ids))
    out = np.empty(len(ids))
    owner = service.model_of(ids)
    for m in np.unique(owner):
        sel = np.flatnonzero(owner == m)
        out[sel] = _checked(det, det.fn(ModelView(service, int(m), det), ids[sel]), len(sel))
    return out


def _fitted(service) -> None:
    """Detectors read a service's trained models: one not fitted yet fails with one
    sentence, not an ``AttributeError`` deep in a model call."""
    if getattr(service, "fitted", True) is False:
        raise ValueError(f"{type(service).__name__} is not fitted; call fit() before scoring "
                         "requests")


def _checked(det, values, n: int) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"detector {det.name!r} returned scores of shape {out.shape} for "
                         f"{n} {'batches' if det.unit == 'batch' else 'ids'}; it must "
                         f"return one score per {det.unit}")
    return out


def batch_scores(service, batches, detector: str = "batch") -> np.ndarray:
    """One score per request batch (a list of id arrays, each of two or more ids) under a
    registered batch detector (``"batch"`` by default)."""
    det = detector_of(detector, "batch")
    _fitted(service)
    batches = [sample_ids(b, len(service.y), what="request id") for b in batches]
    if any(b.size < 2 for b in batches):
        raise ValueError("a batch score needs batches of at least two request ids")
    if not batches:
        return np.empty(0)
    if service.num_models < det.min_models:
        raise _too_few_models(service, det)
    return _checked(det, det.fn(ServiceView(service, det), batches), len(batches))


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
        detector_of(self.detector, "sample")
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
    last ``size`` ids) whose ``detector`` score exceeds ``threshold``. It scores each
    request as sent: a request of one id is never refused, so a provider must group a
    requester's requests into batches for it to see them."""

    threshold: float
    size: int = 10
    detector: str = "batch"

    def __post_init__(self):
        self.threshold = number("threshold", self.threshold)
        self.size = integer("batch size", self.size, 2)
        detector_of(self.detector, "batch")

    def __call__(self, service, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size < 2:
            return np.zeros(ids.size, dtype=bool)
        flagged = batch_scores(service, batches_of(ids, self.size),
                               self.detector) > self.threshold
        starts = range(0, ids.size, self.size)  # each window decides its own new ids
        return np.repeat(flagged, [min(self.size, ids.size - i) for i in starts])


def detector_scores(service, ids, detector: str, *, batch: int = 10, draws: int = 0,
                    seed: int = 0) -> np.ndarray:
    """Scores of ``ids`` under any registered detector: one per id for a per-sample
    detector; for a batch detector, one per request batch of ``batch`` ids, either the
    consecutive batches of ``ids`` (:func:`batches_of`, ``draws=0``) or ``draws`` random
    batches drawn with ``seed``."""
    if detector_of(detector).unit == "sample":
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
    return batch_scores(service, groups, detector)


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
    unit = detector_of(detector).unit
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
    draws = sample if unit == "batch" else 0
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
    if detector_of(detector).unit == "batch":
        return BatchFilter(threshold, batch, detector)
    return RequestFilter(detector, threshold)
