"""Evaluation metrics, each defined once. Only evaluation code sees ground truth."""

from __future__ import annotations

import numpy as np
import torch

from .checks import integer, number


def _labels(name: str, values) -> torch.Tensor:
    t = torch.as_tensor(values)
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-d tensor of integer labels, got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    return t


def _scores(name: str, values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d sequence of scores, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name} holds a non-finite score {a[bad][0]} at position "
                         f"{int(np.flatnonzero(bad)[0])}; scores must be finite")
    return a


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Clean accuracy: fraction of predictions equal to the true labels.

    ``pred`` and ``y`` are 1-d integer label tensors of the same, non-zero length.
    """
    pred, y = _labels("predictions", pred), _labels("labels", y)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions for {len(y)} labels; accuracy needs one "
                         "prediction per label")
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((pred == y.to(pred.device)).float().mean())


def attack_success_rate(pred: torch.Tensor, target: int) -> float:
    """ASR: fraction of triggered non-target inputs predicted as ``target``.

    The caller passes predictions on triggered inputs whose true label is not the target.
    """
    pred = _labels("predictions", pred)
    target = integer("target label", target, low=0)
    if len(pred) == 0:
        raise ValueError("attack success rate of an empty set is undefined")
    return float((pred == target).float().mean())


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve: P(score_pos > score_neg), ties counted one half.

    Both arguments are 1-d sequences of finite scores, neither empty.
    """
    pos = _scores("positive scores", scores_pos)
    neg = _scores("negative scores", scores_neg)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(allv)
    sorted_v = allv[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def threshold_at_fpr(scores_neg, fpr: float = 0.05) -> float:
    """Smallest threshold that flags at most ``fpr`` of the negatives (score > threshold)."""
    fpr = number("target false-positive rate", fpr, 0, 1, high_open=True)
    neg = np.sort(_scores("negative scores", scores_neg))
    if neg.size == 0:
        raise ValueError("a threshold needs at least one negative score")
    k = int(np.floor(fpr * neg.size))
    return float(neg[neg.size - 1 - k]) if k < neg.size else float(neg[0])


RATES = ("asr", "acc", "auroc", "tpr", "fpr")  # a number named so lies in [0, 1]
COUNTS = ("refused", "requests", "seconds", "steps")  # a number named so is at least 0


def value_range(name: str) -> tuple[float | None, float | None]:
    """What the number ``name`` (a column, a claim's number) can take, by its name: a rate
    (ASR, accuracy, AUROC, TPR, FPR) lies in [0, 1], a rise of a rate in [-1, 1], a
    reduction (1 - after / before) is at most 1, a count or a time is at least 0, and
    anything else is unbounded."""
    if "rise" in name:
        return -1.0, 1.0
    if "reduction" in name:
        return None, 1.0
    if any(w in name for w in RATES):
        return 0.0, 1.0
    if any(w in name for w in COUNTS):
        return 0.0, None
    return None, None


def interval(values, confidence: float = 0.95, bounds: tuple = (None, None)
             ) -> tuple[float, float | None, float | None]:
    """Mean and two-sided Student-t interval of ``values`` (``None`` bounds for one value),
    clipped to ``bounds`` (``(low, high)``, ``None`` for no bound; :func:`value_range` gives a
    named number's). The caller says what the number can take: the values alone cannot
    (a count of 0 or 1 per seed is not a rate)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5)
    lo, hi = mean - half, mean + half
    low, high = bounds
    return mean, lo if low is None else max(lo, low), hi if high is None else min(hi, high)


def proportion_interval(successes: int, trials: int, confidence: float = 0.95
                        ) -> tuple[float, float, float]:
    """Rate and two-sided Wilson score interval of ``successes`` in ``trials`` yes/no
    outcomes (one per seed: "switched on", "flagged"), where a t-interval over 0s and 1s
    would leave [0, 1] or collapse to a point."""
    from scipy import stats

    trials = integer("trials", trials, 1)
    successes = integer("successes", successes, 0, trials)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * ((p * (1 - p) + z * z / (4 * trials)) / trials) ** 0.5 / (1 + z * z / trials)
    return p, max(0.0, centre - half), min(1.0, centre + half)
