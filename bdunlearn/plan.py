"""Every training job a profile's notebooks need, known before anything trains.

The notebooks' runs are declared once, by their studies (:mod:`bdunlearn.studies`): each
run names the services it fits or serves requests on (:class:`~bdunlearn.studies.Need`,
a :class:`~bdunlearn.studies.Recipe` plus the ids removed after each request batch). A
SISA slice checkpoint is a pure function of its configuration and its exact ordered ids
(:meth:`bdunlearn.unlearning.SisaService.plan_slices` computes the keys with the service's
own key code), so :func:`plan` lists, without training, each slice checkpoint of every
run the store does not hold yet, once, as a :class:`Job`: its content key, what a worker
needs to train it, and the key of the slice it continues from.

Two trajectories are known only as they run, so each is one :class:`Chain` job that runs
it the way its study does, writing every model into the cache: the request filter of
notebook 04 (which ids it refuses depends on the trained models' scores; it starts once
the model it screens with is trained) and Amnesiac unlearning in notebook 02 (each
request updates the previous model). Not planned: the defenses of notebooks 03 and 05,
which run on the planned models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from . import experiment as ex
from . import studies
from .cache import content_key, default_cache_dir
from .config import profile_datasets
from .models import build_model
from .reproduce import available, notebooks
from .studies import Recipe


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
        return _service(replace(self.recipe, cache_dir=str(cache_dir))).train_slice(
            self.shard, self.slice, self.removed)


@dataclass(frozen=True)
class Chain:
    """One trajectory whose models are known only as it runs, as a single job: ``kind``
    ``"filter"`` (notebook 04's request filter on the exact-unlearning service of
    ``recipe``), ``"screened"`` (notebook 07's requests behind the detector in ``knobs``)
    or ``"amnesiac"`` (notebook 02's Amnesiac service). ``key`` names the job
    (not a checkpoint); ``after`` holds the keys of the planned slices it builds on."""

    key: str
    recipe: Recipe
    kind: str
    counts: tuple[int, ...]
    after: tuple[str, ...] = ()
    label: str = ""
    device: str = "cpu"
    model_params: int = 0
    knobs: tuple = ()

    @property
    def needs(self) -> tuple[str, ...]:
        return self.after

    def run(self, cache_dir: str) -> bool:
        """Run the trajectory as the study does, its models cached in ``cache_dir``;
        ``True`` when any model trained."""
        cfg, atk = self.recipe.cfg, self.recipe.attack()
        ds = studies.dataset(cfg)
        if self.kind == "filter":
            svc, _ = ex.filtered_trajectory(atk, ds, cfg, list(self.counts),
                                            cache_dir=str(cache_dir))
        elif self.kind == "screened":
            recipe = replace(self.recipe, cache_dir=str(cache_dir))
            svc, _ = ex.screened_requests(atk, recipe.build, dict(self.knobs)["detector"], cfg)
        else:
            svc = ex.amnesiac_service(atk, ds, cfg, cache_dir=str(cache_dir),
                                      **dict(self.knobs))
            ex.trajectory(atk, svc, list(self.counts), label="amnesiac")
        per = getattr(svc, "slices", 1)
        return not (svc.fit_cost.cache_hits == svc.shards * per
                    and all(c.cache_hits == c.shards_retrained * per for c in svc.log))


@lru_cache(maxsize=2)
def _service(recipe: Recipe):
    """The recipe's service in this process, built once."""
    return recipe.build()


def _model_params(svc) -> int:
    """The parameter count of ``svc``'s model (sizes a job's share of a GPU)."""
    return sum(t.numel() for t in build_model(svc.arch, tuple(svc.x.shape[1:]),
                                              svc.num_classes).parameters())


def plan(profile: str | None = None, *, only=None, cache_dir=None, **overrides
         ) -> list[Job | Chain]:
    """Every slice checkpoint the notebooks' runs not yet stored need at ``profile`` with
    notebook parameter ``overrides`` (the ``-p NAME VALUE`` of :mod:`bdunlearn.reproduce`),
    deduplicated by content key, each listed after the slice it continues from; then the
    :class:`Chain` jobs, each after the slices it builds on.

    The runs come from each notebook's study (:func:`bdunlearn.studies.missing`: those
    its store does not hold; the store is the runner's, see
    :func:`bdunlearn.reproduce.folders`, unless ``store_dir`` is given). Without a
    ``dataset`` override, every dataset of the profile that is on disk is planned, as the
    runner runs them. ``only`` (notebook numbers or stems, as the runner's ``--only``)
    keeps the jobs of those notebooks. ``cache_dir``: the checkpoint cache the recipes
    point at (default: :func:`bdunlearn.cache.default_cache_dir`).
    """
    from .reproduce import folders

    known = studies.all_parameters() - {"profile"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a notebook parameter; use one of "
                         f"{', '.join(sorted(known))}")
    if overrides.get("dataset"):
        datasets = [overrides["dataset"]]
    else:  # as the runner does: the profile's datasets that are on disk
        datasets = available(profile_datasets(profile), overrides.get("data_root"))[0]
    stems = [s for s in studies.STEMS if not only
             or s in {p.stem for p in notebooks(studies.NOTEBOOKS, list(only))}]
    cache_dir = str(cache_dir or default_cache_dir())
    jobs: dict[str, Job | Chain] = {}
    services: dict[Recipe, object] = {}
    for name in datasets:
        params = {**overrides, "dataset": name}
        if "store_dir" not in params:
            params["store_dir"] = str(folders(profile, overrides, name)[2])
        for stem in stems:
            mod, cfg = studies.study(stem), studies.config(stem, profile, **params)
            ctx = studies.Context(cfg, cache_dir)
            for run in studies.missing(stem, cfg):
                for need in mod.needs(run, ctx):
                    recipe = need.recipe
                    svc = services.get(recipe) or services.setdefault(recipe, recipe.build())
                    size, label = _model_params(svc), f"{name} {need.label}"
                    if need.chain:
                        after = () if need.chain == "amnesiac" else tuple(
                            k for k, *_ in svc.plan_slices(()))
                        key = f"chain-{need.chain}-" + content_key(
                            {"recipe": [recipe.kind, recipe.seed, recipe.shards,
                                        recipe.variant], "counts": need.counts,
                             "settings": studies.settings(recipe.cfg),
                             "precision": cfg.precision, "device": cfg.device_type,
                             **({"knobs": list(need.knobs)} if need.knobs else {})})
                        jobs.setdefault(key, Chain(key, recipe, need.chain, need.counts,
                                                   after, label, svc.device.type, size,
                                                   need.knobs))
                        continue
                    for removed in need.states:
                        for key, shard, sl, after in svc.plan_slices(removed):
                            if key not in jobs:
                                jobs[key] = Job(key, recipe, shard, sl, removed, after, label,
                                                svc.device.type, size)
    return list(jobs.values())
