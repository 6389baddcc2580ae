"""Evaluation metrics, each defined once. Only evaluation code sees ground truth."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Clean accuracy: fraction of predictions equal to the true labels."""
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((pred == y).float().mean())


def attack_success_rate(pred: torch.Tensor, target: int) -> float:
    """ASR: fraction of triggered non-target inputs predicted as ``target``.

    The caller passes predictions on triggered inputs whose true label is not the target.
    """
    if len(pred) == 0:
        raise ValueError("attack success rate of an empty set is undefined")
    return float((pred == target).float().mean())


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve: P(score_pos > score_neg), ties counted one half."""
    pos = np.asarray(scores_pos, dtype=np.float64)
    neg = np.asarray(scores_neg, dtype=np.float64)
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
    if not 0 <= fpr < 1:
        raise ValueError(f"target false-positive rate {fpr} must be in [0, 1)")
    neg = np.sort(np.asarray(scores_neg, dtype=np.float64))
    if neg.size == 0:
        raise ValueError("a threshold needs at least one negative score")
    k = int(np.floor(fpr * neg.size))
    return float(neg[neg.size - 1 - k]) if k < neg.size else float(neg[0])
