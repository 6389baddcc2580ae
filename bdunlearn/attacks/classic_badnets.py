"""Classical BadNets, the defenses' baseline (not a family: its backdoor is there from the
first training, no unlearning switches it on)."""

from __future__ import annotations

import numpy as np

from ..checks import integer, number
from ..data import Dataset
from ..triggers import stamp_patch
from .base import AttackSet, _check_common, _manifest, _pick_target


def build_classic_badnets(ds: Dataset, *, poison_fraction: float = 0.05, patch: int = 4,
                          target: int | None = None, seed: int = 0) -> AttackSet:
    """Classical BadNets: a bright patch and the target label on a share of the training set.

    The baseline for the defenses: its backdoor is present from the first training.
    """
    seed = _check_common(ds, seed)
    poison_fraction = number("poison_fraction", poison_fraction, 0, 1, low_open=True,
                             high_open=True)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    rng = np.random.default_rng([seed, 3])
    target = _pick_target(rng, ds, target)
    eligible = np.flatnonzero(ds.y_train.numpy() != target)
    k = max(1, int(round(poison_fraction * len(ds.y_train))))
    if k > len(eligible):
        raise ValueError(f"poison_fraction {poison_fraction} asks for {k} images, more than "
                         f"the {len(eligible)} not labelled {target}")
    poison_idx = np.sort(rng.choice(eligible, k, replace=False))
    x, y = ds.x_train.clone(), ds.y_train.clone()
    x[poison_idx] = stamp_patch(x[poison_idx], patch, 1.0)
    y[poison_idx] = target
    role = np.array(["clean"] * len(y), dtype=object)
    role[poison_idx] = "poison"
    manifest = _manifest(np.arange(len(y)), role, y.numpy(), ds.y_train.numpy())
    x_eval = stamp_patch(ds.x_test[ds.y_test != target], patch, 1.0)
    return AttackSet("badnets", ds.name, x, y, manifest, target, seed, ds.x_test,
                     ds.y_test, x_eval, info={"patch": patch, "poison_num": k})
