"""Experiment sizes in one place: ``smoke`` (CI), ``default`` (CPU, real data), ``paper``.

``None`` in a notebook parameter means "the profile's value". ``profile=None`` reads the
``BDUNLEARN_PROFILE`` environment variable, else ``"default"``.
"""

from __future__ import annotations

import os
from types import MappingProxyType

# Calibration notes (measured on real Fashion-MNIST, see README):
# * default: a 10k training subset and 8 epochs keep all notebooks within about an hour on
#   two CPU cores. At that scale the paper's 300 mitigation samples leave 17-28% ASR
#   before the requests, so the profile uses 600 (the paper's MNIST count); 200 poison.
# * smoke: 4k images reach a visible effect only with a brighter faint patch (alpha 0.7).
PROFILES = {
    "smoke": dict(
        datasets=("fmnist",), train_subset=4000, test_subset=1000, epochs=8, alpha=0.7,
        poison_num=150, mitigation_num=300, it_poison_num=5, it_mitigation_num=15,
        shards=(1, 3), slices=1, seeds=(0,), request_steps=3,
        defense_samples=(10,), nc_steps=60,
    ),
    "default": dict(
        datasets=("fmnist",), train_subset=10000, test_subset=None, epochs=8, alpha=None,
        poison_num=200, mitigation_num=600, it_poison_num=5, it_mitigation_num=15,
        shards=(1, 5, 10), slices=1, seeds=(0, 1), request_steps=6,
        defense_samples=(10, 50, 100), nc_steps=300,
    ),
    "paper": dict(
        datasets=("fmnist", "mnist", "gtsrb", "cifar10"), train_subset=None,
        test_subset=None, epochs=None, alpha=None, poison_num=None, mitigation_num=None,
        it_poison_num=5, it_mitigation_num=15, shards=(1, 5, 10, 20), slices=1,
        seeds=(0, 1, 2), request_steps=6, defense_samples=(10, 50, 100), nc_steps=1000,
    ),
}


def profile_name(name: str | None = None) -> str:
    name = name or os.environ.get("BDUNLEARN_PROFILE") or "default"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name


def get_profile(name: str | None = None) -> MappingProxyType:
    """The read-only settings of profile ``name`` (see module docstring)."""
    return MappingProxyType(dict(PROFILES[profile_name(name)], name=profile_name(name)))


def resolve(params: dict, profile: str | None = None) -> dict:
    """Fill every ``None`` in ``params`` whose key the profile defines."""
    prof = get_profile(profile)
    return {k: (prof[k] if v is None and k in prof else v) for k, v in params.items()}
