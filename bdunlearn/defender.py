"""What a defender holds and runs: clean images outside the run's training and evaluation
sets (:func:`defender_pool`), and a defense on a copy of a model (:func:`defend`)."""

from __future__ import annotations

import numpy as np
import torch

from .checks import integer
from .config import RunConfig
from .data import load


def defender_pool(cfg: RunConfig, n: int, seed: int = 0):
    """``n`` clean images a defender holds, outside the training set and the evaluation set.

    They come from the training split's images outside ``train_subset`` when the run uses
    part of it, else from the test split's images outside ``test_subset`` (the ``default``
    and ``paper`` profiles evaluate on half of the test split and leave the other half to
    the defender); class-stratified and seeded. Raises ``ValueError`` when both splits are
    used whole (no image is left) or fewer than ``n`` images are left.
    """
    full = load(cfg.dataset, cfg.data_root)
    n = integer("defender pool size", n, 1)
    train, test = full.subset_indices(cfg.train_subset, cfg.test_subset, seed=0)
    if train is not None:
        x, y, used = full.x_train, full.y_train, train
    elif test is not None:
        x, y, used = full.x_test, full.y_test, test
    else:
        raise ValueError(f"train_subset {cfg.train_subset} and test_subset {cfg.test_subset} "
                         "use both splits whole, leaving no clean image for the defender; "
                         "set test_subset below the test split's size (for example 'half')")
    rest = torch.from_numpy(np.setdiff1d(np.arange(len(y)), used.numpy()))
    x, y = x[rest], y[rest]
    if n > len(y):
        raise ValueError(f"a defender pool of {n} images is more than the {len(y)} images "
                         "outside the run's training and evaluation sets")
    rng = np.random.default_rng([seed, 21])
    per = [rng.permutation(np.flatnonzero(y.numpy() == c)) for c in range(full.num_classes)]
    picked = np.concatenate([idx[: n // full.num_classes + (c < n % full.num_classes)]
                             for c, idx in enumerate(per)])
    picked = torch.from_numpy(rng.permutation(picked))
    return x[picked], y[picked]


def defend(model, name: str, x_clean, y_clean, num_classes: int, *, seed: int, device,
           trigger=None, cache_dir="auto", **knobs):
    """Run defense ``name`` on a copy of ``model`` with only defender data.

    With a ``cache_dir`` (``"auto"``: the checkpoint cache) the result is stored by
    content (see :func:`bdunlearn.defenses.run_defense`), so a re-run of a notebook loads
    it instead of running the defense again; a loaded result keeps the seconds measured
    when it was computed and says so in ``info["from_cache"]``.
    """
    from .defenses import DefenderView, run_defense

    view = DefenderView(model, x_clean, y_clean, num_classes, trigger=trigger, device=device)
    return run_defense(name, view, seed=seed, cache_dir=cache_dir, **knobs)
