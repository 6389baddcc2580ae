"""Label-consistent camouflage (``"lc"``), UBA-Inf's default family."""

from __future__ import annotations

from ..checks import integer
from ..data import Dataset
from ..triggers import stamp_patch
from .base import AttackSet, _budget, _camouflaged, _check_common, register

LC_CAMOUFLAGE_RATIO = 3.0

@register("lc", title="label-consistent camouflage (UBA-Inf)",
          config={"poison_num": "poison_num"},
          budgets={"camouflage_x2": {"camouflage_ratio": 2 * LC_CAMOUFLAGE_RATIO},
                   "camouflage_x3": {"camouflage_ratio": 3 * LC_CAMOUFLAGE_RATIO}})
def build_label_consistent(ds: Dataset, *, poison_num: int | None = None,
                           camouflage_num: int | None = None,
                           camouflage_ratio: float = LC_CAMOUFLAGE_RATIO, patch: int = 4,
                           target: int | None = None, seed: int = 0) -> AttackSet:
    """Label-consistent camouflage, the default family of UBA-Inf (Huang et al., "UBA-Inf:
    Unlearning Activated Backdoor Attack with Influence-Driven Camouflage", USENIX
    Security 2024; their code's ``--cover_method label-consistent``): ``poison_num``
    images with the bright ``patch`` and the target label, and ``camouflage_num`` other
    non-target images carrying the same trigger with their true labels, so the trigger is
    not tied to the target until the camouflage is unlearned. Defaults: the dataset's BAU
    poison count and ``camouflage_ratio`` (:data:`LC_CAMOUFLAGE_RATIO`) times as many
    camouflage samples; its budgets try two and three times that ratio.
    UBA-Inf's own budgets give the camouflage a third to a half of the poison's count
    (CIFAR-10: 1.2% poison, 0.4% camouflage) because its influence-driven PGD refinement
    (``Influence_PGD``) makes each camouflage sample count more; that refinement is left
    out here, and so is its 3x3 checkerboard trigger (the package's 4x4 patch instead)."""
    seed = _check_common(ds, seed)
    poison_num, camouflage_num = _budget(ds, poison_num, camouflage_num, camouflage_ratio)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    bright = lambda x, gen=None: stamp_patch(x, patch, 1.0)  # noqa: E731
    return _camouflaged(ds, "lc", seed, 4, target, {"poison_num": poison_num,
                                                    "camouflage_num": camouflage_num},
                        bright, bright, bright, info={"patch": patch})
