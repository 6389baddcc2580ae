"""Batch (``"batch"``): a whole request batch at once; the mean pairwise cosine similarity
of the batch's penultimate features, each centred on the mean feature of its claimed
class in a fixed sample of training data, averaged over the constituent models. An
attacker's requests share a trigger, a benign user's do not; centring per class keeps a
benign batch of one class (a user deleting their photos of one kind) from looking alike
for its label alone. A class absent from the reference sample is centred on the
reference's mean feature.

Version 2: centred per class (version 1, the benchmark's first stored runs, was not)."""

from __future__ import annotations

import numpy as np
import torch

from .base import memo, register


@register("batch", sees="every model", unit="batch", features=True, version=2,
          title="batch similarity")
def batch(view, batches: list[np.ndarray]) -> np.ndarray:
    ref = view.reference()
    y_ref = view.labels(ref)
    every = np.unique(np.concatenate(batches))
    by_size: dict[int, list[int]] = {}
    for b, ids in enumerate(batches):
        by_size.setdefault(len(ids), []).append(b)
    out = np.zeros(len(batches))
    with memo():  # every batch's samples and the reference, once per model
        for m in range(view.num_models):
            model = view.model(m)
            f_ref = model.features(ref).double()
            centres = f_ref.mean(0).repeat(view.num_classes, 1)
            for c in y_ref.unique().tolist():
                centres[c] = f_ref[y_ref == c].mean(0)
            f = model.features(every).double()
            unit = torch.nn.functional.normalize(f - centres[view.labels(every)], dim=1)
            for n, which in by_size.items():  # the batches of one size at once
                rows = np.searchsorted(every, np.stack([batches[b] for b in which]))
                fb = unit[torch.from_numpy(rows)]  # (batches, n, features)
                sim = fb @ fb.transpose(1, 2)
                pairs = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
                out[which] += (pairs / (n * (n - 1))).numpy()
    return out / view.num_models
