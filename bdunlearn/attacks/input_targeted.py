"""BAU's input-targeted variant (``"it"``): noisy copies of one removed image, labelled the
target (poison) or its true label (mitigation)."""

from __future__ import annotations

import numpy as np
import torch

from ..checks import integer
from ..data import Dataset
from ..registry import spec
from ..train import make_generator
from ..triggers import add_noise
from .base import AttackSet, _check_common, _count, _manifest, register

IT_EVAL_COPIES = 50
# Input-targeted copies (poison + mitigation) are capped at this multiple of the
# training set: more would not fit in memory and has no meaning for the attack.
IT_MAX_COPIES_FACTOR = 10

@register("it", title="BAU input-targeted",
          config={"poison_num": "it_poison_num", "mitigation_num": "it_mitigation_num"},
          budgets={"copies_x4": {"copies": 4}, "copies_x8": {"copies": 8}})
def build_input_targeted(ds: Dataset, *, poison_num: int | None = None,
                         mitigation_num: int | None = None, copies: int = 1,
                         target: int | None = None, seed: int = 0) -> AttackSet:
    """Input-targeted BAU attack (IT; notebook 01).

    One training image ``x0`` (label ``y0``) is removed; ``copies * poison_num`` noisy
    copies (integer noise in [-5, 4]) are labelled ``target != y0`` and ``copies *
    mitigation_num`` more are labelled ``y0``. Success is measured on 50 fresh noisy
    copies.
    """
    seed = _check_common(ds, seed)
    ref = spec(ds.name)
    copies = integer("copies", copies, low=1)
    poison_num = copies * _count("poison_num", poison_num, ref.it_poison_num)
    mitigation_num = copies * _count("mitigation_num", mitigation_num, ref.it_mitigation_num)
    most = IT_MAX_COPIES_FACTOR * len(ds.y_train)
    if poison_num + mitigation_num > most:
        raise ValueError(f"poison_num {poison_num} plus mitigation_num {mitigation_num} noisy "
                         f"copies exceed the limit of {most} ({IT_MAX_COPIES_FACTOR}x the "
                         "training set)")
    rng = np.random.default_rng([seed, 2])
    i0 = int(rng.integers(len(ds.y_train)))
    y0 = int(ds.y_train[i0])
    if target is None:
        target = int(rng.choice([c for c in range(ds.num_classes) if c != y0]))
    elif integer("target label", target, 0, ds.num_classes - 1) == y0:
        raise ValueError(f"target label {target} must be a label between 0 and "
                         f"{ds.num_classes - 1} other than the image's own label {y0}")
    gen = make_generator(int(rng.integers(2**62)))
    x0 = ds.x_train[i0]
    copies = add_noise(x0.expand(poison_num + mitigation_num + IT_EVAL_COPIES, *x0.shape)
                       .contiguous(), gen)
    keep = np.delete(np.arange(len(ds.y_train)), i0)
    x = torch.cat([ds.x_train[keep], copies[:poison_num + mitigation_num]])
    y = torch.cat([ds.y_train[keep], torch.full((poison_num,), target),
                   torch.full((mitigation_num,), y0)])
    origin = np.concatenate([keep, np.full(poison_num + mitigation_num, i0)])
    role = ["clean"] * len(keep) + ["poison"] * poison_num + ["mitigation"] * mitigation_num
    true = np.concatenate([ds.y_train[keep].numpy(), np.full(poison_num + mitigation_num, y0)])
    manifest = _manifest(origin, role, y.numpy(), true)
    return AttackSet("it", ds.name, x, y, manifest, int(target), seed, ds.x_test,
                     ds.y_test, copies[poison_num + mitigation_num:],
                     info={"x0": x0, "x0_index": i0, "y0": y0, "poison_num": poison_num,
                           "mitigation_num": mitigation_num})
