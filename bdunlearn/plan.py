"""Every training job a profile's notebooks need, known before anything trains.

A SISA slice checkpoint is a pure function of its configuration and its exact ordered ids
(:meth:`bdunlearn.unlearning.SisaService.plan_slices` computes the keys with the service's own
key code), and every request of a trajectory is fixed by the seed. :func:`plan` therefore
builds, without training, the same services the notebooks build, walks them through the
same request schedules, and lists each slice checkpoint once as a :class:`Job`: its
content key plus what a worker needs to train it (a :class:`Recipe` for the service, the
ids unlearned before it, its shard and slice) and the key of the slice it continues from.

Not planned: the request filter's trajectory in notebook 04, whose refused ids depend on
the trained models' scores; it is a second round (call :func:`plan` again after the
first round trained, or let the notebook train the few slices it needs). Amnesiac
unlearning (notebook 02) and the defenses keep no SISA checkpoints and are not jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from . import attack as attacks
from . import experiment as ex
from .models import build_model

KINDS = ("clean", "attack", "classic")


@dataclass(frozen=True)
class Recipe:
    """How a notebook builds one SISA service: small, hashable, and picklable to workers.

    ``kind`` is ``"clean"`` (the clean training set, :func:`experiment.clean_baseline`),
    ``"attack"`` (:func:`experiment.attack_service` on the ``variant`` attack) or
    ``"classic"`` (classical BadNets with ``poison_fraction``); ``params`` are the
    notebook's resolved settings as sorted ``(name, value)`` pairs.
    """

    kind: str
    params: tuple
    seed: int
    shards: int = 1
    variant: str | None = None
    poison_fraction: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown recipe kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def settings(self) -> dict:
        return dict(self.params)

    def attack(self):
        """The attack set this service trains on (``None`` for a clean service)."""
        return _attack(self)

    def build(self):
        """The service, untrained, exactly as the notebook builds it."""
        p, ds = self.settings(), _dataset(self.params)
        if self.kind == "clean":
            return ex.service(ds.x_train, ds.y_train, ds, p, seed=self.seed)
        atk = self.attack()
        if self.kind == "classic":
            return ex.service(atk.x, atk.y, ds, p, seed=self.seed)
        return ex.attack_service(atk, ds, p, shards=self.shards)


def _dataset(params: tuple):
    p = dict(params)
    return _subset(p["dataset"], p.get("data_root"), p.get("train_subset"), p.get("test_subset"))


@lru_cache(maxsize=4)
def _subset(name, data_root, train_subset, test_subset):
    return ex.dataset(dict(dataset=name, data_root=data_root, train_subset=train_subset,
                           test_subset=test_subset))


@lru_cache(maxsize=16)
def _attack(recipe: Recipe):
    ds = _dataset(recipe.params)
    if recipe.kind == "classic":
        return attacks.build_classic_badnets(ds, poison_fraction=recipe.poison_fraction,
                                             seed=recipe.seed)
    if recipe.kind == "attack":
        return ex.build_attack(ds, recipe.variant, recipe.seed, recipe.settings())
    return None


@dataclass(frozen=True)
class Job:
    """Train slice ``slice`` of ``shard`` of the service ``recipe`` builds, once the ids
    ``removed`` are unlearned; its checkpoint has content key ``key``. ``after`` is the
    key of slice ``slice - 1`` (trained first), ``None`` for a first slice. ``device`` is
    the device type the checkpoint is trained for (part of its key) and ``model_params``
    the model's parameter count, which sizes its share of a GPU."""

    key: str
    recipe: Recipe
    shard: int
    slice: int
    removed: tuple = field(repr=False)
    after: str | None = None
    label: str = ""
    device: str = "cpu"
    model_params: int = 0


# The parameters each notebook passes to ``ex.settings``: ``NOTEBOOK_PARAMS`` are its
# parameters cell's (the user may override them), ``_FIXED`` the literals its code passes.
_SHARED = dict(dataset=None, seeds=None, device="auto", data_root=None, poison_num=None,
               mitigation_num=None, alpha=None, epochs=None, train_subset=None)
NOTEBOOK_PARAMS = {
    "01": _SHARED,
    "02": dict(_SHARED, variant="bn", shards=None, request_steps=None),
    "03": dict(_SHARED, nc_steps=None, defense_steps=3),
    "04": dict(_SHARED, shards=None, request_steps=None),
    "05": dict(_SHARED, defense_samples=None, nc_steps=None, poison_fraction=0.05),
}
_FIXED = dict(test_subset=None, it_poison_num=None, it_mitigation_num=None)
# Notebook parameters that change no training job (accepted, ignored by the plan).
_NOT_TRAINING = ("target_fpr", "amnesiac", "defender_size")


def _settings(nb: str, profile, overrides: dict) -> dict:
    """Notebook ``nb``'s parameters (its defaults, then the user's overrides) and its
    resolved ``ex.settings``."""
    params = {**NOTEBOOK_PARAMS[nb], **{k: v for k, v in overrides.items()
                                        if k in NOTEBOOK_PARAMS[nb]}}
    own = {k: params.pop(k) for k in ("defense_steps", "poison_fraction") if k in params}
    if "defense_steps" in own:
        params["request_steps"] = own["defense_steps"]
    return params | own, ex.settings(profile, **params, **_FIXED)


def _frozen(p: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in p.items()))


def _states(profile, overrides: dict):
    """``(label, recipe, [removed ids after each request batch])`` for every service the
    notebooks fit or serve requests on, in notebook order."""
    _, p = _settings("01", profile, overrides)
    for seed in p["seeds"]:
        yield "01 clean baseline", Recipe("clean", _frozen(p), seed), [()]
        for variant in ("bn", "it"):
            r = Recipe("attack", _frozen(p), seed, 1, variant)
            yield f"01 {variant} S=1", r, [(), tuple(r.attack().request_order())]

    _, p = _settings("02", profile, overrides)
    for seed in p["seeds"]:
        for s in p["shards"]:
            r = Recipe("attack", _frozen(p), seed, int(s), p["variant"])
            yield f"02 {p['variant']} S={s}", r, _trajectory(r, p["request_steps"])

    _, p = _settings("03", profile, overrides)
    seed = p["seeds"][0]
    yield "03 classic BadNets", Recipe("classic", _frozen(p), seed, poison_fraction=0.05), [()]
    r = Recipe("attack", _frozen(p), seed, 1, "bn")
    yield "03 bn S=1", r, _trajectory(r, p["request_steps"])

    _, p = _settings("04", profile, overrides)
    for seed in p["seeds"]:
        for variant in ("bn", "it"):
            for s in p["shards"]:
                yield f"04 {variant} S={s}", Recipe("attack", _frozen(p), seed, int(s),
                                                    variant), [()]
    r = Recipe("attack", _frozen(p), p["seeds"][0], 1, "bn")
    yield "04 bn S=1 trajectory", r, _trajectory(r, p["request_steps"])

    own, p = _settings("05", profile, overrides)
    seed = p["seeds"][0]
    yield "05 classic BadNets", Recipe("classic", _frozen(p), seed,
                                       poison_fraction=own["poison_fraction"]), [()]
    r = Recipe("attack", _frozen(p), seed, 1, "bn")
    yield "05 bn S=1", r, [(), tuple(r.attack().request_order())]
    for s in p["seeds"]:
        yield "05 clean", Recipe("clean", _frozen(p), s), [()]


def _trajectory(recipe: Recipe, steps: int) -> list[tuple]:
    """The removed ids after each batch of :func:`experiment.trajectory`'s schedule."""
    order = recipe.attack().request_order()
    return [tuple(order[:k]) for k in ex.schedule(len(order), steps)]


def plan(profile: str | None = None, **overrides) -> list[Job]:
    """Every slice checkpoint the notebooks need at ``profile`` with notebook parameter
    ``overrides`` (the ``-p NAME VALUE`` of :mod:`bdunlearn.reproduce`), deduplicated by
    content key, each listed after the slice it continues from.

    Builds the notebooks' services and attacks (cheap: no training) and asks each service
    for the keys of its slices after every request batch of the notebook's schedule. The
    request filter's trajectory in notebook 04 is not planned (its refusals depend on the
    trained models); run it after this round.
    """
    jobs: dict[str, Job] = {}
    services: dict[Recipe, object] = {}
    known = set(_NOT_TRAINING).union(*NOTEBOOK_PARAMS.values())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a notebook parameter; use one of "
                         f"{', '.join(sorted(known))}")
    for label, recipe, states in _states(profile, overrides):
        svc = services.get(recipe) or services.setdefault(recipe, recipe.build())
        size = sum(t.numel() for t in build_model(svc.arch, tuple(svc.x.shape[1:]),
                                                  svc.num_classes).parameters())
        for removed in states:
            for key, shard, sl, after in svc.plan_slices(removed):
                if key not in jobs:
                    jobs[key] = Job(key, recipe, shard, sl, removed, after, label,
                                    svc.device.type, size)
    return list(jobs.values())
