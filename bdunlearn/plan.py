"""Every training job a profile's notebooks need, known before anything trains.

A SISA slice checkpoint is a pure function of its configuration and its exact ordered ids
(:meth:`bdunlearn.unlearning.SisaService.plan_slices` computes the keys with the service's own
key code), and every request of a trajectory is fixed by the seed. :func:`plan` therefore
builds, without training, the same services the notebooks build, walks them through the
same request schedules, and lists each slice checkpoint once as a :class:`Job`: its
content key plus what a worker needs to train it (a :class:`Recipe` for the service, the
ids unlearned before it, its shard and slice) and the key of the slice it continues from.

Two trajectories are known only as they run, so each is one :class:`Chain` job that runs
it the way its notebook does, writing every model into the cache: the request filter of
notebook 04 (which ids it refuses depends on the trained models' scores; it starts once
the model it screens with is trained) and Amnesiac unlearning in notebook 02 (each
request updates the previous model). Not planned: the defenses of notebooks 03 and 05,
which run on the planned models.
"""

from __future__ import annotations

import ast
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from . import attack as attacks
from . import experiment as ex
from .cache import content_key
from .config import RunConfig, profile_datasets, resolve
from .models import build_model
from .reproduce import available, notebooks

KINDS = ("clean", "attack", "classic")
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
STEMS = ("01_attack", "02_unlearning_trajectory", "03_defense_overhead", "04_detection",
         "05_backdoor_erasure")


@dataclass(frozen=True)
class Recipe:
    """How a notebook builds one SISA service: small, hashable, and picklable to workers.

    ``kind`` is ``"clean"`` (the clean training set, :func:`experiment.clean_baseline`),
    ``"attack"`` (:func:`experiment.attack_service` on the ``variant`` attack) or
    ``"classic"`` (classical BadNets with ``cfg.poison_fraction``); ``cfg`` is the
    notebook's resolved :class:`~bdunlearn.config.RunConfig`.
    """

    kind: str
    cfg: RunConfig
    seed: int
    shards: int = 1
    variant: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown recipe kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def attack(self):
        """The attack set this service trains on (``None`` for a clean service)."""
        return _attack(self)

    def build(self):
        """The service, untrained, exactly as the notebook builds it."""
        ds = _dataset(self.cfg)
        if self.kind == "clean":
            return ex.service(ds.x_train, ds.y_train, ds, self.cfg, seed=self.seed)
        atk = self.attack()
        if self.kind == "classic":
            return ex.service(atk.x, atk.y, ds, self.cfg, seed=self.seed)
        return ex.attack_service(atk, ds, self.cfg, shards=self.shards)


_DATASETS: dict[tuple, object] = {}


def _dataset(cfg: RunConfig):
    """``ex.dataset(cfg)``, loaded once per process for each dataset and subset."""
    key = (cfg.dataset, cfg.data_root, cfg.train_subset, cfg.test_subset)
    if key not in _DATASETS:
        _DATASETS[key] = ex.dataset(cfg)
    return _DATASETS[key]


@lru_cache(maxsize=16)
def _attack(recipe: Recipe):
    ds = _dataset(recipe.cfg)
    if recipe.kind == "classic":
        return attacks.build_classic_badnets(ds, poison_fraction=recipe.cfg.poison_fraction,
                                             seed=recipe.seed)
    if recipe.kind == "attack":
        return ex.build_attack(ds, recipe.variant, recipe.seed, recipe.cfg)
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

    @property
    def needs(self) -> tuple[str, ...]:
        """Keys of the jobs that must finish first."""
        return () if self.after is None else (self.after,)

    def run(self, cache_dir: str) -> bool:
        """Train this slice into ``cache_dir`` unless it is cached there; ``True`` when it
        trained."""
        return _service(self.recipe, cache_dir).train_slice(self.shard, self.slice,
                                                            self.removed)


@dataclass(frozen=True)
class Chain:
    """One trajectory whose models are known only as it runs, as a single job: ``kind``
    ``"filter"`` (notebook 04's request filter on the exact-unlearning service of
    ``recipe``) or ``"amnesiac"`` (notebook 02's Amnesiac service). ``key`` names the job
    (not a checkpoint); ``after`` holds the keys of the planned slices it builds on."""

    key: str
    recipe: Recipe
    kind: str
    counts: tuple[int, ...]
    after: tuple[str, ...] = ()
    label: str = ""
    device: str = "cpu"
    model_params: int = 0

    @property
    def needs(self) -> tuple[str, ...]:
        return self.after

    def run(self, cache_dir: str) -> bool:
        """Run the trajectory as the notebook does, its models cached in ``cache_dir``;
        ``True`` when any model trained."""
        cfg, atk = self.recipe.cfg, self.recipe.attack()
        ds = _dataset(cfg)
        with _cache_at(cache_dir):
            if self.kind == "filter":
                svc, _ = ex.filtered_trajectory(atk, ds, cfg, list(self.counts))
            else:
                svc = ex.amnesiac_service(atk, ds, cfg)
                ex.trajectory(atk, svc, list(self.counts), label="amnesiac")
        per = getattr(svc, "slices", 1)
        return not (svc.fit_cost.cache_hits == svc.shards * per
                    and all(c.cache_hits == c.shards_retrained * per for c in svc.log))


@lru_cache(maxsize=2)
def _service(recipe: Recipe, cache_dir: str):
    """The recipe's service in this process, built once (its cache is ``cache_dir``)."""
    with _cache_at(cache_dir):
        return recipe.build()


@contextmanager
def _cache_at(cache_dir: str):
    """Services built inside resolve ``cache_dir="auto"`` (as the notebooks' builders ask)
    to ``cache_dir``; the caller's ``BDUNLEARN_CACHE`` is restored after."""
    before = os.environ.get("BDUNLEARN_CACHE")
    os.environ["BDUNLEARN_CACHE"] = cache_dir
    try:
        yield
    finally:
        if before is None:
            del os.environ["BDUNLEARN_CACHE"]
        else:
            os.environ["BDUNLEARN_CACHE"] = before


@cache
def notebook_parameters(stem: str) -> frozenset:
    """The names in notebook ``stem``'s ``parameters`` cell (what ``-p`` can set there)."""
    cells = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return frozenset(t.id for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name))


def _config(stem: str, profile, overrides: dict) -> RunConfig:
    """The ``RunConfig`` notebook ``stem`` resolves: the user's overrides it accepts."""
    own = notebook_parameters(stem)
    return resolve(profile, **{k: v for k, v in overrides.items() if k in own})


def _states(profile, overrides: dict):
    """``(label, recipe, [removed ids after each request batch])`` for every service the
    notebooks fit or serve requests on, in notebook order (their code cells' calls)."""
    cfg = _config("01_attack", profile, overrides)
    for seed in cfg.seeds:
        yield "01 clean baseline", Recipe("clean", cfg, seed), [()]
        for variant in ("bn", "it"):
            r = Recipe("attack", cfg, seed, 1, variant)
            yield f"01 {variant} S=1", r, [(), tuple(r.attack().request_order())]

    cfg = _config("02_unlearning_trajectory", profile, overrides)
    for seed in cfg.seeds:
        for s in cfg.shards:
            r = Recipe("attack", cfg, seed, s, cfg.variant)
            yield f"02 {cfg.variant} S={s}", r, _trajectory(r, cfg.request_steps)

    cfg = _config("03_defense_overhead", profile, overrides)
    seed = cfg.seeds[0]
    yield "03 classic BadNets", Recipe("classic", cfg, seed), [()]
    r = Recipe("attack", cfg, seed, 1, "bn")
    yield "03 bn S=1", r, _trajectory(r, cfg.defense_steps)

    cfg = _config("04_detection", profile, overrides)
    for seed in cfg.seeds:
        for variant in ("bn", "it"):
            for s in ex.detection_shards(cfg, variant):
                yield f"04 {variant} S={s}", Recipe("attack", cfg, seed, s, variant), [()]
    r = Recipe("attack", cfg, cfg.seeds[0], 1, "bn")
    yield "04 bn S=1 trajectory", r, _trajectory(r, cfg.request_steps)

    cfg = _config("05_backdoor_erasure", profile, overrides)
    seed = cfg.seeds[0]
    yield "05 classic BadNets", Recipe("classic", cfg, seed), [()]
    r = Recipe("attack", cfg, seed, 1, "bn")
    yield "05 bn S=1", r, [(), tuple(r.attack().request_order())]
    for s in cfg.seeds:
        yield "05 clean", Recipe("clean", cfg, s), [()]


def _chains(profile, overrides: dict):
    """``(label, recipe, kind, counts)`` of the trajectories planned as :class:`Chain`."""
    cfg = _config("02_unlearning_trajectory", profile, overrides)
    if cfg.amnesiac:
        for seed in cfg.seeds:
            r = Recipe("attack", cfg, seed, 1, cfg.variant)
            yield (f"02 {cfg.variant} amnesiac", r, "amnesiac",
                   ex.schedule(len(r.attack().ids("mitigation")), cfg.request_steps))
    cfg = _config("04_detection", profile, overrides)
    r = Recipe("attack", cfg, cfg.seeds[0], 1, "bn")
    yield ("04 bn S=1 MU filter", r, "filter",
           ex.schedule(len(r.attack().ids("mitigation")), cfg.request_steps))


def _trajectory(recipe: Recipe, steps: int) -> list[tuple]:
    """The removed ids after each batch of :func:`experiment.trajectory`'s schedule."""
    order = recipe.attack().request_order()
    return [tuple(order[:k]) for k in ex.schedule(len(order), steps)]


def _model_params(svc) -> int:
    """The parameter count of ``svc``'s model (sizes a job's share of a GPU)."""
    return sum(t.numel() for t in build_model(svc.arch, tuple(svc.x.shape[1:]),
                                              svc.num_classes).parameters())


def plan(profile: str | None = None, *, only=None, **overrides) -> list[Job | Chain]:
    """Every slice checkpoint the notebooks need at ``profile`` with notebook parameter
    ``overrides`` (the ``-p NAME VALUE`` of :mod:`bdunlearn.reproduce`), deduplicated by
    content key, each listed after the slice it continues from; then the :class:`Chain`
    jobs (the request filter's and Amnesiac trajectories), each after the slices it
    builds on.

    Builds the notebooks' services and attacks (cheap: no training) and asks each service
    for the keys of its slices after every request batch of the notebook's schedule
    (:meth:`bdunlearn.unlearning.SisaService.plan_slices`). Without a ``dataset``
    override, every dataset of the profile that is on disk is planned, as
    :func:`bdunlearn.reproduce.run` runs them. ``only`` (notebook numbers or stems, as
    the runner's ``--only``) keeps the jobs of those notebooks.
    """
    known = set().union(*(notebook_parameters(stem) for stem in STEMS)) - {"profile"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a notebook parameter; use one of "
                         f"{', '.join(sorted(known))}")
    if overrides.get("dataset"):
        datasets = [overrides["dataset"]]
    else:  # as the runner does: the profile's datasets that are on disk
        datasets = available(profile_datasets(profile), overrides.get("data_root"))[0]
    stems = None if not only else {p.stem[:2] for p in notebooks(NOTEBOOKS, list(only))}
    jobs: dict[str, Job | Chain] = {}
    services: dict[Recipe, object] = {}
    for name in datasets:
        for label, recipe, states in _states(profile, {**overrides, "dataset": name}):
            if stems is not None and label[:2] not in stems:
                continue
            svc = services.get(recipe) or services.setdefault(recipe, recipe.build())
            size = _model_params(svc)
            for removed in states:
                for key, shard, sl, after in svc.plan_slices(removed):
                    if key not in jobs:
                        jobs[key] = Job(key, recipe, shard, sl, removed, after,
                                        f"{name} {label}", svc.device.type, size)
        for label, recipe, kind, counts in _chains(profile, {**overrides, "dataset": name}):
            if stems is not None and label[:2] not in stems:
                continue
            svc = services.get(recipe) or services.setdefault(recipe, recipe.build())
            size = _model_params(svc)
            after = () if kind == "amnesiac" else tuple(k for k, *_ in svc.plan_slices(()))
            key = f"chain-{kind}-{content_key({'recipe': repr(recipe), 'counts': counts})}"
            jobs.setdefault(key, Chain(key, recipe, kind, tuple(counts), after,
                                       f"{name} {label}", svc.device.type, size))
    return list(jobs.values())
