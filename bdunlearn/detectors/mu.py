"""Model uncertainty (``"mu"``, BAU section 6): the Gini impurity ``1 - sum_c p_c(x)^2``
of the softmax of the constituent model that was trained on the sample."""

from __future__ import annotations

import numpy as np
import torch

from .base import register


def gini(probs: torch.Tensor) -> torch.Tensor:
    """Gini impurity of each row of a probability matrix ``(N, K)``."""
    if probs.dim() != 2:
        raise ValueError(f"gini needs probabilities of shape (N, K), got {tuple(probs.shape)}")
    return 1.0 - (probs.double() ** 2).sum(1)


@register("mu", sees="own model", title="model uncertainty")
def mu(view, ids: np.ndarray) -> np.ndarray:
    return gini(view.proba(ids)).numpy()
