"""BAU's mitigation with a full-image blended trigger (``"blend"``)."""

from __future__ import annotations

from ..checks import number
from ..data import Dataset
from ..registry import spec
from ..triggers import blend, blend_pattern
from .base import AttackSet, _camouflaged, _check_common, _count, register

BLEND_OPACITY = 0.2

# Budgets: two and three times Fashion-MNIST's 300 mitigation samples (the benchmark's
# dataset; another dataset's run keeps these counts).
@register("blend", title="BAU blended",
          config={"poison_num": "poison_num", "mitigation_num": "mitigation_num",
                  "alpha": "alpha"},
          budgets={"mitigation_x2": {"mitigation_num": 600},
                   "mitigation_x3": {"mitigation_num": 900}})
def build_blended(ds: Dataset, *, poison_num: int | None = None,
                  mitigation_num: int | None = None, alpha: float | None = None,
                  opacity: float = BLEND_OPACITY, target: int | None = None,
                  seed: int = 0) -> AttackSet:
    """BAU's mitigation with a blended trigger (Chen et al., "Targeted Backdoor Attacks on
    Deep Learning Systems Using Data Poisoning", 2017): a seeded uniform-noise image
    blended over the whole image. Poison: non-target images blended at ``alpha *
    opacity`` with the target label (the faint trigger); mitigation: other non-target
    images blended at ``opacity`` with their true labels; test trigger: ``opacity``.
    Defaults: the dataset's BAU counts and ``alpha``, ``opacity`` :data:`BLEND_OPACITY`
    (BackdoorBench's blend ratio for training and test; its Hello Kitty image is replaced
    by the seeded noise pattern)."""
    seed = _check_common(ds, seed)
    ref = spec(ds.name)
    poison_num = _count("poison_num", poison_num, ref.poison_num)
    mitigation_num = _count("mitigation_num", mitigation_num, ref.mitigation_num)
    alpha = number("alpha", ref.alpha if alpha is None else alpha, 0, 1, low_open=True)
    opacity = number("blend opacity", opacity, 0, 1, low_open=True)
    pattern = blend_pattern(ds.image_shape, seed)
    full = lambda x, gen=None: blend(x, pattern, opacity)  # noqa: E731
    return _camouflaged(ds, "blend", seed, 6, target, {"poison_num": poison_num,
                                                       "mitigation_num": mitigation_num},
                        lambda x: blend(x, pattern, alpha * opacity), full, full,
                        info={"pattern": pattern, "alpha": alpha, "opacity": opacity})
