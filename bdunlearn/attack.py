"""The attacks' public names, kept here for existing imports: every family now lives in
its own module of :mod:`bdunlearn.attacks`, found through its registry
(:func:`bdunlearn.attacks.register`). ``FAMILIES``, ``FAMILY_TITLES`` and ``BUILDERS``
are read from the registry each time."""

from __future__ import annotations

from . import attacks as _attacks
from .attacks import (  # noqa: F401
    BLEND_OPACITY,
    IT_EVAL_COPIES,
    IT_MAX_COPIES_FACTOR,
    LC_CAMOUFLAGE_RATIO,
    NOISE_CAMOUFLAGE_RATIO,
    NOISE_SIGMA,
    ROLES,
    VARIANTS,
    AttackSet,
    build_attack,
    build_badnets,
    build_blended,
    build_classic_badnets,
    build_input_targeted,
    build_label_consistent,
    build_noise_camouflage,
    register,
)


def __getattr__(name: str):
    if name in ("FAMILIES", "FAMILY_TITLES", "BUILDERS"):
        return getattr(_attacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
