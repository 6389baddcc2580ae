"""The BAU attack: poison and mitigation samples whose unlearning switches a backdoor on.

Two variants (notebook 01):

* :func:`build_badnets` (BN): faint-patch poison relabelled to the target, bright-patch
  mitigation samples with their true labels, bright-patch test trigger.
* :func:`build_input_targeted` (IT): noisy copies of one removed image, labelled the
  target (poison) or its true label (mitigation).

Three more families that switch a backdoor on through unlearning, for the request-detection
benchmark (notebook 07); their camouflage samples take the ``"mitigation"`` role, the ids
the attacker asks to unlearn:

* :func:`build_label_consistent` (``"lc"``): UBA-Inf's camouflage, the poison's own trigger
  on other images with their true labels.
* :func:`build_noise_camouflage` (``"noise"``): ReVeil's camouflage, other images with the
  poison's trigger plus Gaussian noise and their true labels.
* :func:`build_blended` (``"blend"``): a full-image blended trigger under BAU's mitigation
  (faint blend on the poison, the full blend on the mitigation samples).

Every builder returns an :class:`AttackSet`: the training set the service receives, its
manifest (one row per sample: ``id, origin, role, label, true_label``) and the evaluation
material, which only :meth:`AttackSet.evaluate` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .checks import choice, flag, integer, number
from .data import Dataset
from .metrics import accuracy, attack_success_rate
from .registry import spec
from .train import make_generator
from .triggers import add_gaussian, add_noise, blend, blend_pattern, stamp_patch

ROLES = ("clean", "poison", "mitigation")
VARIANTS = ("bn", "it")
# Every family that switches a backdoor on through unlearning, BAU's two first.
FAMILIES = ("bn", "it", "lc", "noise", "blend")
FAMILY_TITLES = {"bn": "BAU BadNets", "it": "BAU input-targeted",
                 "lc": "label-consistent camouflage (UBA-Inf)",
                 "noise": "noise camouflage (ReVeil)", "blend": "BAU blended"}
# Reference knobs of the three benchmark families (see each builder).
LC_CAMOUFLAGE_RATIO = 3.0
NOISE_SIGMA = 0.05
NOISE_CAMOUFLAGE_RATIO = 1.0
BLEND_OPACITY = 0.2

IT_EVAL_COPIES = 50
# Input-targeted copies (poison + mitigation) are capped at this multiple of the
# training set: more would not fit in memory and has no meaning for the attack.
IT_MAX_COPIES_FACTOR = 10


@dataclass
class AttackSet:
    """A poisoned training set, its manifest and (private) evaluation material."""

    variant: str
    dataset: str
    x: torch.Tensor
    y: torch.Tensor
    manifest: pd.DataFrame
    target: int
    seed: int
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    x_eval: torch.Tensor = field(repr=False)
    info: dict = field(default_factory=dict)

    def ids(self, role: str) -> np.ndarray:
        """Manifest ids of the samples with ``role`` (one of :data:`ROLES`)."""
        choice("role", role, ROLES)
        return self.manifest.loc[self.manifest.role == role, "id"].to_numpy().copy()

    def detection_negatives(self) -> np.ndarray:
        """Clean ids whose clean original is neither a poison nor a mitigation original.

        The negatives the BAU authors score against the mitigation samples when they
        measure a detector's AUROC: a clean sample that shares its image with an attack
        sample is left out.
        """
        m = self.manifest
        attack_origins = m.loc[m.role != "clean", "origin"].to_numpy()
        clean = m[(m.role == "clean") & ~m.origin.isin(attack_origins)]
        return clean["id"].to_numpy().copy()

    def hard_negatives(self) -> np.ndarray:
        """The harder benign population of the request-detection benchmark: clean ids of
        the target class (the input-targeted attack: of the removed image's class),
        leaving out every image an attack sample was made from. A benign user deleting
        many samples of one class sends look-alike requests, which a batch-level test
        must not take for a shared trigger."""
        m = self.manifest
        label = self.info["y0"] if self.variant == "it" else self.target
        negatives = self.detection_negatives()
        return negatives[m.set_index("id").loc[negatives, "label"].to_numpy() == label]

    def request_order(self, seed: int | None = None) -> np.ndarray:
        """Mitigation ids in the seeded random order the attacker requests them."""
        seed = self.seed if seed is None else integer("seed", seed, low=0)
        rng = np.random.default_rng([seed, 7])
        return rng.permutation(self.ids("mitigation"))

    def requests(self, k: int, seed: int | None = None) -> np.ndarray:
        """The first ``k`` mitigation ids of :meth:`request_order` ("k requested")."""
        order = self.request_order(seed)
        k = integer("requested count", k, 0, len(order))
        return order[:k]

    def evaluate(self, predict, faint: bool = False) -> dict:
        """Clean accuracy and attack success of a ``predict(x) -> labels`` callable.

        BN: ASR on test images whose label is not the target, with the bright patch, and
        with ``faint=True`` also ``asr_faint``, with the poison's own faint patch (intensity
        ``alpha``).
        IT: fraction of the 50 fresh noisy copies of the removed image predicted as the
        target (``asr``), and whether the image itself is (``x0_hit``).
        """
        clean = accuracy(predict(self.x_test), self.y_test)
        out = {"clean_acc": clean,
               "asr": attack_success_rate(predict(self.x_eval), self.target)}
        if faint and self.variant == "bn":
            # the poison's own faint patch: the rule the model learns before the requests
            faint = stamp_patch(self.x_test[self.y_test != self.target], self.info["patch"],
                                self.info["alpha"])
            out["asr_faint"] = attack_success_rate(predict(faint), self.target)
        if self.variant == "it":
            out["x0_hit"] = bool(predict(self.info["x0"][None])[0] == self.target)
        return out


def _check_common(ds: Dataset, seed) -> int:
    if not isinstance(ds, Dataset):
        raise ValueError(f"the attack needs a bdunlearn.data.Dataset, got {type(ds).__name__}")
    return integer("seed", seed, low=0)


def _count(name: str, value, default: int) -> int:
    return default if value is None else integer(name, value, low=1)


def _manifest(origin, role, label, true_label) -> pd.DataFrame:
    n = len(origin)
    return pd.DataFrame({"id": np.arange(n), "origin": np.asarray(origin, dtype=np.int64),
                         "role": pd.Categorical(role, categories=ROLES),
                         "label": np.asarray(label, dtype=np.int64),
                         "true_label": np.asarray(true_label, dtype=np.int64)})


def _pick_target(rng, ds, target):
    if target is None:
        return int(rng.integers(ds.num_classes))
    return integer("target label", target, 0, ds.num_classes - 1)


def build_attack(ds: Dataset, variant: str, **knobs) -> AttackSet:
    """The attack family ``variant`` (one of :data:`FAMILIES`) on ``ds``; ``knobs`` go to
    its builder (:data:`BUILDERS`)."""
    choice("attack variant", variant, FAMILIES)
    return BUILDERS[variant](ds, **knobs)


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


def build_input_targeted(ds: Dataset, *, poison_num: int | None = None,
                         mitigation_num: int | None = None, target: int | None = None,
                         seed: int = 0) -> AttackSet:
    """Input-targeted BAU attack (IT; notebook 01).

    One training image ``x0`` (label ``y0``) is removed; ``poison_num`` noisy copies
    (integer noise in [-5, 4]) are labelled ``target != y0`` and ``mitigation_num`` more
    are labelled ``y0``. Success is measured on 50 fresh noisy copies.
    """
    seed = _check_common(ds, seed)
    ref = spec(ds.name)
    poison_num = _count("poison_num", poison_num, ref.it_poison_num)
    mitigation_num = _count("mitigation_num", mitigation_num, ref.it_mitigation_num)
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


def _camouflaged(ds: Dataset, variant: str, seed: int, stream: int, target, counts: dict,
                 poison_fn, camouflage_fn, eval_fn, info: dict) -> AttackSet:
    """A trigger family with camouflage. ``counts``: the poison count and the camouflage
    count, each under its builder's parameter name. The poison: that many non-target
    images through ``poison_fn``, labelled the target, in their originals' place; the
    camouflage (the requested ``mitigation`` role): other non-target images through
    ``camouflage_fn(x, generator)`` with their true labels. ASR on the non-target test
    images through ``eval_fn``."""
    rng = np.random.default_rng([seed, stream])
    target = _pick_target(rng, ds, target)
    eligible = np.flatnonzero(ds.y_train.numpy() != target)
    room = len(eligible) // 2
    for name, value in counts.items():
        if not 1 <= value <= room:
            raise ValueError(f"{name} {value} must be between 1 and {room} (half the training "
                             f"images not labelled {target})")
    poison_num, camouflage_num = counts.values()
    poison_idx = rng.choice(eligible, poison_num, replace=False)
    camo_idx = rng.choice(np.setdiff1d(eligible, poison_idx), camouflage_num, replace=False)
    gen = make_generator(int(rng.integers(2**62)))
    clean_idx = np.setdiff1d(np.arange(len(ds.y_train)), poison_idx)
    x = torch.cat([ds.x_train[clean_idx], poison_fn(ds.x_train[poison_idx]),
                   camouflage_fn(ds.x_train[camo_idx], gen)])
    y = torch.cat([ds.y_train[clean_idx], torch.full((poison_num,), target),
                   ds.y_train[camo_idx]])
    origin = np.concatenate([clean_idx, poison_idx, camo_idx])
    role = (["clean"] * len(clean_idx) + ["poison"] * poison_num
            + ["mitigation"] * camouflage_num)
    manifest = _manifest(origin, role, y.numpy(), ds.y_train.numpy()[origin])
    x_eval = eval_fn(ds.x_test[ds.y_test != target])
    return AttackSet(variant, ds.name, x, y, manifest, target, seed, ds.x_test, ds.y_test,
                     x_eval, info={**info, "poison_num": poison_num,
                                   "mitigation_num": camouflage_num})


def _budget(ds: Dataset, poison_num, camouflage_num, ratio: float) -> tuple[int, int]:
    poison_num = _count("poison_num", poison_num, spec(ds.name).poison_num)
    return poison_num, _count("camouflage_num", camouflage_num,
                              max(1, int(round(ratio * poison_num))))


def build_label_consistent(ds: Dataset, *, poison_num: int | None = None,
                           camouflage_num: int | None = None, patch: int = 4,
                           target: int | None = None, seed: int = 0) -> AttackSet:
    """Label-consistent camouflage, the default family of UBA-Inf (Huang et al., "UBA-Inf:
    Unlearning Activated Backdoor Attack with Influence-Driven Camouflage", USENIX
    Security 2024; their code's ``--cover_method label-consistent``): ``poison_num``
    images with the bright ``patch`` and the target label, and ``camouflage_num`` other
    non-target images carrying the same trigger with their true labels, so the trigger is
    not tied to the target until the camouflage is unlearned. Defaults: the dataset's BAU
    poison count and :data:`LC_CAMOUFLAGE_RATIO` times as many camouflage samples.
    UBA-Inf's own budgets give the camouflage a third to a half of the poison's count
    (CIFAR-10: 1.2% poison, 0.4% camouflage) because its influence-driven PGD refinement
    (``Influence_PGD``) makes each camouflage sample count more; that refinement is left
    out here, and so is its 3x3 checkerboard trigger (the package's 4x4 patch instead)."""
    seed = _check_common(ds, seed)
    poison_num, camouflage_num = _budget(ds, poison_num, camouflage_num, LC_CAMOUFLAGE_RATIO)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    bright = lambda x, gen=None: stamp_patch(x, patch, 1.0)  # noqa: E731
    return _camouflaged(ds, "lc", seed, 4, target, {"poison_num": poison_num,
                                                    "camouflage_num": camouflage_num},
                        bright, bright, bright, info={"patch": patch})


def build_noise_camouflage(ds: Dataset, *, poison_num: int | None = None,
                           camouflage_num: int | None = None, sigma: float = NOISE_SIGMA,
                           patch: int = 4, target: int | None = None,
                           seed: int = 0) -> AttackSet:
    """Noise camouflage after ReVeil (Alam et al., "ReVeil: Unconstrained Concealed
    Backdoor Attack on Deep Neural Networks using Machine Unlearning", DAC 2025):
    ``poison_num`` images with the bright ``patch`` and the target label, and
    ``camouflage_num`` other non-target images with the same trigger plus Gaussian noise of
    standard deviation ``sigma`` (pixel scale [0, 1]) and their true labels. Defaults:
    the dataset's BAU poison count, as many camouflage samples
    (:data:`NOISE_CAMOUFLAGE_RATIO`; ReVeil's example uses 1% of each), ``sigma``
    :data:`NOISE_SIGMA`. ReVeil's example sigma, 0.001 on normalised inputs, is below one
    uint8 level, where the camouflage would equal label-consistent camouflage; its
    triggers (a 3x3 pattern, WaNet, ...) are replaced by the package's 4x4 patch."""
    seed = _check_common(ds, seed)
    poison_num, camouflage_num = _budget(ds, poison_num, camouflage_num,
                                         NOISE_CAMOUFLAGE_RATIO)
    sigma = number("noise sigma", sigma, 0, 1, low_open=True)
    patch = integer("patch size", patch, 1, min(ds.image_shape[1:]))
    bright = lambda x: stamp_patch(x, patch, 1.0)  # noqa: E731
    return _camouflaged(ds, "noise", seed, 5, target, {"poison_num": poison_num,
                                                       "camouflage_num": camouflage_num},
                        bright, lambda x, gen: add_gaussian(bright(x), sigma, gen), bright,
                        info={"patch": patch, "sigma": sigma})


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


BUILDERS = {"bn": build_badnets, "it": build_input_targeted, "lc": build_label_consistent,
            "noise": build_noise_camouflage, "blend": build_blended}
