"""What every attack family shares: the :class:`AttackSet` contract, the family registry
and the helpers the built-in families are made of.

A family is a builder ``build(ds, *, seed, **knobs) -> AttackSet`` registered with
:func:`register`, which declares how a run configuration's fields route to the
builder's knobs (``config``), the other budgets the benchmark may try (``budgets``) and a
``version`` that is part of the key its benchmark rows are stored under
(:mod:`bdunlearn.studies.benchmark`).

A budget is a named set of builder knobs (``{"camouflage_x2": {"camouflage_ratio": 6.0}}``);
the family at a budget is the family ``"<name>@<budget>"`` (:func:`get`), whose knobs win
over the run configuration's. The family's own paper's setting is its plain name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..checks import choice, integer, number
from ..data import Dataset
from ..metrics import accuracy, attack_success_rate
from ..registry import spec
from ..train import make_generator
from ..triggers import stamp_patch

ROLES = ("clean", "poison", "mitigation")


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
        label = self.info.get("y0", self.target)  # IT: the removed image's class
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
        if "x0" in self.info:  # IT: the removed image itself
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


def _budget(ds: Dataset, poison_num, camouflage_num, ratio) -> tuple[int, int]:
    poison_num = _count("poison_num", poison_num, spec(ds.name).poison_num)
    ratio = number("camouflage_ratio", ratio, 0, low_open=True)
    return poison_num, _count("camouflage_num", camouflage_num,
                              max(1, int(round(ratio * poison_num))))


camouflaged = _camouflaged  # the camouflage families' common builder, for one's own


@dataclass(frozen=True)
class Family:
    """A registered attack family: its ``name`` (the ``variant`` of its attack sets), a
    ``title`` for tables, its ``build`` function, ``config`` (builder knob -> run
    configuration field, the routing :func:`bdunlearn.attacks.build_attack` applies), its
    ``version`` and the ``budgets`` it declares beside its paper's setting."""

    name: str
    title: str
    build: Callable
    config: tuple
    version: int
    budgets: tuple = ()  # (budget name, ((knob, value), ...)), in declaration order


REGISTRY: dict[str, Family] = {}


def _same_function(old, new) -> bool:
    """``new`` is ``old`` defined again (a module re-imported, a notebook cell run again)."""
    return (getattr(old, "__module__", None) == getattr(new, "__module__", None)
            and getattr(old, "__qualname__", None) == getattr(new, "__qualname__", None))


def register(name: str, *, title: str | None = None, config: dict | None = None,
             version: int = 1, budgets: dict | None = None):
    """Decorator adding an attack builder to :data:`REGISTRY` under ``name``. ``config``
    maps the builder's keyword knobs to the run configuration fields that set them
    (``{"poison_num": "poison_num"}``): a notebook's run builds the family with those
    fields' values. ``budgets`` names other settings of the builder's knobs for the
    benchmark to try (``{"camouflage_x2": {"camouflage_ratio": 6.0}}``; :func:`get` builds
    ``"<name>@<budget>"``). A name already taken by another builder fails (the same builder
    defined again replaces its entry). Call it from any module (``docs/extending.md``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an attack family's name must be a word of letters, digits and "
                         f"underscores, got {name!r}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    config = {} if config is None else config
    if not isinstance(config, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
        raise ValueError("config must be a dict of builder knob -> run configuration field "
                         f"(both strings), got {config!r}")
    version = integer("attack family version", version, low=1)
    budgets = {} if budgets is None else budgets
    if not isinstance(budgets, dict) or not all(
            isinstance(b, str) and b.isidentifier() and isinstance(k, dict) and k
            and all(isinstance(knob, str) for knob in k) for b, k in budgets.items()):
        raise ValueError("budgets must be a dict of budget name (a word) -> a non-empty dict "
                         f"of builder knobs, got {budgets!r}")
    budgets = tuple((b, tuple(sorted(k.items()))) for b, k in budgets.items())

    def wrap(fn):
        if not callable(fn):
            raise ValueError(f"register({name!r}) decorates a builder function, got "
                             f"{type(fn).__name__}")
        params = inspect.signature(fn).parameters
        unknown = sorted(set(config) - set(params))
        if unknown:
            raise ValueError(f"attack family {name!r} routes {', '.join(unknown)} from the run "
                             f"configuration, but its builder takes no such knob")
        _check_budget_knobs(name, budgets, params)
        if name in REGISTRY and not _same_function(REGISTRY[name].build, fn):
            raise ValueError(f"an attack family named {name!r} is already registered; choose "
                             "another name")
        REGISTRY[name] = Family(name, title or name, fn, tuple(config.items()), version,
                                budgets)
        _AT_BUDGET.clear()
        return fn
    return wrap


def _check_budget_knobs(name: str, budgets: tuple, params) -> None:
    for budget, knobs in budgets:
        wrong = sorted(k for k, _ in knobs if k not in params or k == "seed")
        if wrong:
            raise ValueError(f"attack family {name!r}: budget {budget!r} sets {wrong[0]!r}, "
                             "which is not a knob of its builder")


def names() -> tuple[str, ...]:
    """The registered families' names, in registration order."""
    return tuple(REGISTRY)


_AT_BUDGET: dict[str, Family] = {}


def get(name) -> Family:
    """The registered family ``name``, or ``"<family>@<budget>"``: the family with that
    budget's knobs (they win over the run configuration's); an unknown name fails naming
    the known ones."""
    if isinstance(name, str) and "@" in name and name.split("@", 1)[0] in REGISTRY:
        base, budget = name.split("@", 1)
        fam = REGISTRY[base]
        knobs = dict(fam.budgets).get(budget)
        if knobs is None:
            declared = ", ".join(b for b, _ in fam.budgets) or "none"
            raise ValueError(f"attack family {base!r} has no budget {budget!r}; it declares "
                             f"{declared}")
        if name not in _AT_BUDGET:
            _AT_BUDGET[name] = Family(name, f"{fam.title}, {budget}",
                                      _with_knobs(fam.build, dict(knobs)), fam.config,
                                      fam.version)
        return _AT_BUDGET[name]
    if not isinstance(name, str) or name not in REGISTRY:
        choice("attack variant", name, names())
    return REGISTRY[name]


def _with_knobs(build: Callable, knobs: dict) -> Callable:
    @functools.wraps(build)  # the builder's signature, for build_attack's knob check
    def at_budget(ds, **given):
        return build(ds, **{**given, **knobs})
    return at_budget


def title(name: str) -> str:
    """The family's title for tables (a budget's after a comma); ``name`` itself for a
    family not registered now (one named in stored rows)."""
    try:
        return get(name).title
    except ValueError:
        return name


def budgets(name: str) -> tuple[str, ...]:
    """The family ``name`` at its paper's setting and at each budget it declares:
    ``("lc", "lc@camouflage_x2", ...)``."""
    return (name, *(f"{name}@{b}" for b, _ in get(name).budgets))
