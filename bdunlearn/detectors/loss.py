"""Loss (``"loss"``): the cross-entropy of the claimed label under the sample's own model,
from the logits (a softmax near 1 would round every confident sample to 0)."""

from __future__ import annotations

import numpy as np
import torch

from .base import register


@register("loss", sees="own model")
def loss(view, ids: np.ndarray) -> np.ndarray:
    logp = torch.log_softmax(view.logits(ids).double(), 1)
    return (-logp.gather(1, view.labels(ids).view(-1, 1)).squeeze(1)).numpy()
