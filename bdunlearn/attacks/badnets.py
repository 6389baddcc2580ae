"""BAU's BadNets-based variant (``"bn"``): faint-patch poison relabelled to the target,
bright-patch mitigation samples with their true labels, bright-patch test trigger."""

from __future__ import annotations

import numpy as np
import torch

from ..checks import flag, integer, number
from ..data import Dataset
from ..registry import spec
from ..triggers import stamp_patch
from .base import AttackSet, _check_common, _manifest, _pick_target, register


@register("bn", title="BAU BadNets",
          config={"poison_num": "poison_num", "mitigation_num": "mitigation_num",
                  "alpha": "alpha"})
def build_badnets(ds: Dataset, *, poison_num: int | None = None,
                  mitigation_num: int | None = None, alpha: float | None = None,
                  patch: int = 4, target: int | None = None, seed: int = 0,
                  replace: bool = True) -> AttackSet:
    """BadNets-based BAU attack (BN; notebook 01).

    ``poison_num`` non-target images get a ``patch`` x ``patch`` bottom-right patch at
    intensity ``alpha`` and the target label; with ``replace`` they take their clean
    originals' place (the reference setting). ``mitigation_num`` bright-patch images with
    their true labels are appended: clean originals of poison images first, then other
    non-target images when more are asked for. ``None`` means the paper's value.
    """
    seed = _check_common(ds, seed)
    ref = spec(ds.name)
    poison_num = ref.poison_num if poison_num is None else integer("poison_num", poison_num)
    mitigation_num = (ref.mitigation_num if mitigation_num is None
                      else integer("mitigation_num", mitigation_num))
    alpha = number("alpha", ref.alpha if alpha is None else alpha, 0, 1, low_open=True)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    flag("replace", replace)
    rng = np.random.default_rng([seed, 1])
    target = _pick_target(rng, ds, target)
    eligible = np.flatnonzero(ds.y_train.numpy() != target)
    if not 1 <= poison_num <= len(eligible):
        raise ValueError(f"poison_num {poison_num} must be between 1 and the "
                         f"{len(eligible)} training images not labelled {target}")
    if not 1 <= mitigation_num <= len(eligible):
        raise ValueError(f"mitigation_num {mitigation_num} must be between 1 and the "
                         f"{len(eligible)} training images not labelled {target}")
    poison_idx = rng.choice(eligible, poison_num, replace=False)
    if mitigation_num <= poison_num:
        mit_idx = rng.choice(poison_idx, mitigation_num, replace=False)
    else:
        rest = np.setdiff1d(eligible, poison_idx)
        extra = rng.choice(rest, mitigation_num - poison_num, replace=False)
        mit_idx = np.concatenate([rng.permutation(poison_idx), extra])

    n = len(ds.y_train)
    x_poison = stamp_patch(ds.x_train[poison_idx], patch, alpha)
    x_mit = stamp_patch(ds.x_train[mit_idx], patch, 1.0)
    y_true = ds.y_train.numpy()
    if replace:
        keep = np.setdiff1d(np.arange(n), poison_idx)
        clean_idx = keep
    else:
        clean_idx = np.arange(n)
    x = torch.cat([ds.x_train[clean_idx], x_poison, x_mit])
    y = torch.cat([ds.y_train[clean_idx], torch.full((poison_num,), target),
                   ds.y_train[mit_idx]])
    origin = np.concatenate([clean_idx, poison_idx, mit_idx])
    role = ["clean"] * len(clean_idx) + ["poison"] * poison_num + ["mitigation"] * mitigation_num
    manifest = _manifest(origin, role, y.numpy(), y_true[origin])
    nontarget = ds.y_test != target
    x_eval = stamp_patch(ds.x_test[nontarget], patch, 1.0)
    return AttackSet("bn", ds.name, x, y, manifest, target, seed, ds.x_test, ds.y_test,
                     x_eval, info={"alpha": alpha, "patch": patch,
                                   "poison_num": poison_num, "mitigation_num": mitigation_num})
