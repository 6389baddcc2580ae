"""Feature-space neighbours (``"knn"``, after Deep k-NN, Peri et al. 2020): how many of the
sample's :data:`KNN_K` nearest neighbours, among a fixed sample of its own model's
training data, in that model's penultimate layer (cosine), carry a label other than the
sample's claimed label; ties between equal counts are broken by how much nearer the
nearest other-label neighbour is than the nearest same-label one. Scaled to [0, 1]:
``(disagreeing + tie-breaker in [0, 1]) / (KNN_K + 1)``. Without the tie-breaker the
score takes only ``KNN_K + 1`` values, and a threshold on benign requests falls on a tie
(more than 1% of benign samples have no agreeing neighbour).

Version 2: the tie-breaker (version 1, the benchmark's first stored runs, had none)."""

from __future__ import annotations

import numpy as np
import torch

from .base import register

KNN_K = 10


@register("knn", sees="own model", features=True, version=2, title="feature k-NN")
def knn(view, ids: np.ndarray) -> np.ndarray:
    """The score of each sample against its model's reference samples, itself left out."""
    ref = view.reference()
    f_ref = torch.nn.functional.normalize(view.features(ref), dim=1)
    f_q = torch.nn.functional.normalize(view.features(ids), dim=1)
    sim = (f_q @ f_ref.T).double()
    sim[torch.from_numpy(ids).view(-1, 1) == torch.from_numpy(ref).view(1, -1)] = -2.0
    k = min(KNN_K, len(ref) - 1)
    y_ref, y_q = view.labels(ref), view.labels(ids)
    disagree = (y_ref[sim.topk(k, dim=1).indices] != y_q.view(-1, 1)).double().sum(1)
    same = y_ref.view(1, -1) == y_q.view(-1, 1)
    margin = (sim.masked_fill(~same, -2.0).amax(1)
              - sim.masked_fill(same, -2.0).amax(1))  # nearest same minus nearest other
    tie = (2.0 - margin.clamp(-2.0, 2.0)) / 4.0  # 1: the nearest other-label one is nearer
    return ((disagree + tie) / (k + 1)).numpy()
