"""Sub-model similarity (``"sms"``, BAU section 6): the standard deviation, across all
constituent models, of the probability of the sample's claimed label. Undefined for a
single model."""

from __future__ import annotations

import numpy as np
import torch

from .base import register


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


@register("sms", sees="every model", min_models=2, title="sub-model similarity")
def sms(view, ids: np.ndarray) -> np.ndarray:
    probs = torch.stack([view.model(m).proba(ids) for m in range(view.num_models)])
    return claimed_label_spread(probs, view.labels(ids)).numpy()
