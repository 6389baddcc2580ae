"""BAU BadNets with a trigger of its own per sample (``"bn_varied"``): the adaptive
track's strategy (d), the attacker who removes the feature a batch test looks for."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..data import Dataset
from ..triggers import CORNERS, stamp_patch
from .badnets import build_badnets
from .base import AttackSet, register


def stamp_corners(x: torch.Tensor, corners: np.ndarray, size: int, intensity: float
                  ) -> torch.Tensor:
    """``x`` with image ``i``'s patch in corner ``CORNERS[corners[i]]``."""
    out = x.clone()
    for k, corner in enumerate(CORNERS):
        rows = np.flatnonzero(corners == k)
        if len(rows):
            out[rows] = stamp_patch(x[rows], size, intensity, corner=corner)
    return out


@register("bn_varied", title="BAU BadNets, varied triggers",
          config={"poison_num": "poison_num", "mitigation_num": "mitigation_num",
                  "alpha": "alpha"})
def build_varied(ds: Dataset, *, poison_num: int | None = None,
                 mitigation_num: int | None = None, alpha: float | None = None,
                 patch: int = 4, target: int | None = None, seed: int = 0) -> AttackSet:
    """BAU BadNets-based with varied triggers: each poison sample (faint patch, target
    label) and each mitigation sample (bright patch, true label) carries its patch in one
    of the image's four corners, drawn per sample, so the requested samples share no
    patch position; the test trigger is a bright patch in a corner drawn per test image.
    The samples, counts, target and ``alpha`` are :func:`build_badnets`'s at the same
    seed (the same ids, only the patches move)."""
    base = build_badnets(ds, poison_num=poison_num, mitigation_num=mitigation_num,
                         alpha=alpha, patch=patch, target=target, seed=seed)
    rng = np.random.default_rng([base.seed, 11])
    x, origin = base.x.clone(), base.manifest.origin.to_numpy()
    for role, intensity in (("poison", base.info["alpha"]), ("mitigation", 1.0)):
        ids = base.ids(role)
        x[ids] = stamp_corners(ds.x_train[origin[ids]], rng.integers(len(CORNERS), size=len(ids)),
                               base.info["patch"], intensity)
    nontarget = ds.y_test != base.target
    corners = rng.integers(len(CORNERS), size=int(nontarget.sum()))
    x_eval = stamp_corners(ds.x_test[nontarget], corners, base.info["patch"], 1.0)
    return replace(base, variant="bn_varied", x=x, x_eval=x_eval,
                   info={**base.info, "corners": "one per sample"})
