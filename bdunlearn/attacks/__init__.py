"""Attacks that switch a backdoor on through unlearning, one module per family, found
through one registry (:mod:`.base`).

Built in, BAU's two first: BadNets-based (:mod:`.badnets`, ``"bn"``) and input-targeted
(:mod:`.input_targeted`, ``"it"``); label-consistent camouflage after UBA-Inf
(:mod:`.label_consistent`, ``"lc"``); noise camouflage after ReVeil
(:mod:`.noise_camouflage`, ``"noise"``); BAU's mitigation with a blended trigger
(:mod:`.blended`, ``"blend"``). Classical BadNets (:mod:`.classic_badnets`) is the
defenses' baseline, not a family. The camouflage samples take the ``"mitigation"`` role:
the ids the attacker asks to unlearn.

Every builder returns an :class:`AttackSet`: the training set the service receives, its
manifest (one row per sample: ``id, origin, role, label, true_label``) and the evaluation
material, which only :meth:`AttackSet.evaluate` reads. A family of one's own is
registered from any module with :func:`register` (``docs/extending.md``).
"""

from __future__ import annotations

import inspect

# isort: off
from .base import REGISTRY, ROLES, AttackSet, Family, budgets, get, names, register, title
from . import badnets, input_targeted, label_consistent, noise_camouflage, blended, varied  # noqa: F401
from .badnets import build_badnets
from .blended import BLEND_OPACITY, build_blended
from .classic_badnets import build_classic_badnets
from .input_targeted import IT_EVAL_COPIES, IT_MAX_COPIES_FACTOR, build_input_targeted
from .label_consistent import LC_CAMOUFLAGE_RATIO, build_label_consistent
from .noise_camouflage import NOISE_CAMOUFLAGE_RATIO, NOISE_SIGMA, build_noise_camouflage
# isort: on

VARIANTS = ("bn", "it")  # BAU's two


def build_attack(ds, variant: str, *, cfg=None, **knobs) -> AttackSet:
    """The attack family ``variant`` (a registered name, :func:`names`) on ``ds``. With a
    run configuration ``cfg``, the knobs the family routes from it (its ``config``) take
    the run's values; ``knobs`` (``seed`` among them) go to the builder and win."""
    family = get(variant)
    if cfg is not None:
        knobs = {**{knob: getattr(cfg, name) for knob, name in family.config}, **knobs}
    params = inspect.signature(family.build).parameters
    takes = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY
             or (p.kind is p.POSITIONAL_OR_KEYWORD and n != "ds")]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(knobs) - set(takes))
        if unknown:
            raise ValueError(f"attack family {variant!r} has no knob {unknown[0]!r}; use "
                             f"{', '.join(takes)}")
    return family.build(ds, **knobs)


def __getattr__(name: str):
    """The registry's current families (one registered later is among them)."""
    if name == "FAMILIES":
        return names()
    if name == "FAMILY_TITLES":
        return {f.name: f.title for f in REGISTRY.values()}
    if name == "BUILDERS":
        return {f.name: f.build for f in REGISTRY.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY", "ROLES", "VARIANTS", "AttackSet", "Family", "budgets", "build_attack",
           "build_badnets", "build_blended", "build_classic_badnets", "build_input_targeted",
           "build_label_consistent", "build_noise_camouflage", "get", "names", "register", "title",
           "BLEND_OPACITY", "IT_EVAL_COPIES", "IT_MAX_COPIES_FACTOR", "LC_CAMOUFLAGE_RATIO",
           "NOISE_CAMOUFLAGE_RATIO", "NOISE_SIGMA"]
