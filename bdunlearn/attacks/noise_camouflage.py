"""Noise camouflage (``"noise"``), after ReVeil."""

from __future__ import annotations

from ..checks import integer, number
from ..data import Dataset
from ..triggers import add_gaussian, stamp_patch
from .base import AttackSet, _budget, _camouflaged, _check_common, register

NOISE_SIGMA = 0.05
NOISE_CAMOUFLAGE_RATIO = 1.0

@register("noise", title="noise camouflage (ReVeil)", config={"poison_num": "poison_num"},
          budgets={"camouflage_x2": {"camouflage_ratio": 2 * NOISE_CAMOUFLAGE_RATIO},
                   "camouflage_x4": {"camouflage_ratio": 4 * NOISE_CAMOUFLAGE_RATIO}})
def build_noise_camouflage(ds: Dataset, *, poison_num: int | None = None,
                           camouflage_num: int | None = None,
                           camouflage_ratio: float = NOISE_CAMOUFLAGE_RATIO,
                           sigma: float = NOISE_SIGMA, patch: int = 4,
                           target: int | None = None, seed: int = 0) -> AttackSet:
    """Noise camouflage after ReVeil (Alam et al., "ReVeil: Unconstrained Concealed
    Backdoor Attack on Deep Neural Networks using Machine Unlearning", DAC 2025):
    ``poison_num`` images with the bright ``patch`` and the target label, and
    ``camouflage_num`` other non-target images with the same trigger plus Gaussian noise of
    standard deviation ``sigma`` (pixel scale [0, 1]) and their true labels. Defaults:
    the dataset's BAU poison count, ``camouflage_ratio`` times as many camouflage samples
    (:data:`NOISE_CAMOUFLAGE_RATIO`; ReVeil's example uses 1% of each; its budgets try
    two and four times as many), ``sigma``
    :data:`NOISE_SIGMA`. ReVeil's example sigma, 0.001 on normalised inputs, is below one
    uint8 level, where the camouflage would equal label-consistent camouflage; its
    triggers (a 3x3 pattern, WaNet, ...) are replaced by the package's 4x4 patch."""
    seed = _check_common(ds, seed)
    poison_num, camouflage_num = _budget(ds, poison_num, camouflage_num, camouflage_ratio)
    sigma = number("noise sigma", sigma, 0, 1, low_open=True)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    bright = lambda x: stamp_patch(x, patch, 1.0)  # noqa: E731
    return _camouflaged(ds, "noise", seed, 5, target, {"poison_num": poison_num,
                                                       "camouflage_num": camouflage_num},
                        bright, lambda x, gen: add_gaussian(bright(x), sigma, gen), bright,
                        info={"patch": patch, "sigma": sigma})
