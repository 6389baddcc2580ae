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

:func:`survey` gives the same plan per notebook, as the runner (:mod:`bdunlearn.reproduce`)
prints it before the first notebook starts: the runs the store holds for this machine's
precision and device group, the runs to compute, the slices they train (those already in
the checkpoint cache apart) and the chains they run; :func:`measure` times a short
training of each planned model on this machine, and :func:`estimate` turns the plan's
sample-epochs into seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import experiment as ex
from . import studies
from .cache import content_key, default_cache_dir
from .config import RunConfig, profile_datasets
from .layout import available, folders, notebooks
from .models import build_model
from .screening import screened_requests
from .store import GROUP, RunStore
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
    work: int = 0  # sample-epochs of this slice's training
    model: tuple = field(default=(), repr=False, compare=False)  # what sets its speed

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
    work: int = 0  # sample-epochs of the trainings it may run, at most
    model: tuple = field(default=(), repr=False, compare=False)  # what sets its speed

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
            svc, _ = screened_requests(atk, recipe.build, dict(self.knobs)["detector"], cfg)
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
    return _params(svc.arch, tuple(svc.x.shape[1:]), svc.num_classes)


@lru_cache(maxsize=16)
def _params(arch: str, shape: tuple, classes: int) -> int:
    return sum(t.numel() for t in build_model(arch, shape, classes).parameters())


def _speed_key(svc) -> tuple:
    """What sets the speed of ``svc``'s trainings: the model, its input scaling, the
    resolved optimiser settings (batch, augmentation, precision) and the device type."""
    return (svc.arch, tuple(svc.x.shape[1:]), svc.num_classes, svc.input_scaling,
            replace(svc.cfg.resolved(svc.device), epochs=1), svc.device.type)


def _chain_work(svc, chain: str, counts: tuple) -> int:
    """Sample-epochs a chain trains at most: every request batch retrains the whole
    service (the request filter: one per batch; notebook 07's screened requests are one
    batch; Amnesiac unlearning trains its model once and fine-tunes after each batch)."""
    full = len(svc.y) * int(svc.cfg.epochs)
    if chain == "filter":
        return full * max(1, len(counts))
    return full


def plan(profile: str | None = None, *, only=None, cache_dir=None, **overrides
         ) -> list[Job | Chain]:
    """Every slice checkpoint the notebooks' runs not yet stored need at ``profile`` with
    notebook parameter ``overrides`` (the ``-p NAME VALUE`` of :mod:`bdunlearn.reproduce`),
    deduplicated by content key, each listed after the slice it continues from; then the
    :class:`Chain` jobs, each after the slices it builds on.

    The runs come from each notebook's study (:func:`bdunlearn.studies.missing`: those
    its store does not hold; the store is the runner's, see
    :func:`bdunlearn.layout.folders`, unless ``store_dir`` is given). Without a
    ``dataset`` override, every dataset of the profile that is on disk is planned, as the
    runner runs them. ``only`` (notebook numbers or stems, as the runner's ``--only``)
    keeps the jobs of those notebooks. ``cache_dir``: the checkpoint cache the recipes
    point at (default: :func:`bdunlearn.cache.default_cache_dir`).
    """
    return [j for step in survey(profile, only=only, cache_dir=cache_dir, **overrides)
            for j in step.jobs]


@dataclass
class Step:
    """One notebook on one dataset, as the runner will run it: ``runs`` declared at
    ``cfg``, the ``missing`` ones to compute (``(table, settings key, run key)`` each, in
    the order the notebook computes them), the stored runs of every precision/device
    ``group`` (``"bf16 on cpu": n``), the ``jobs`` this notebook is the first to need
    (a job two notebooks need is the first one's: the second finds it in the cache) and
    the keys of those already ``cached``. ``renders``: the notebook computes nothing
    (``compute`` False) and shows the stored runs."""

    dataset: str
    stem: str
    cfg: RunConfig
    runs: int
    missing: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)
    cached: set = field(default_factory=set)
    renders: bool = False

    @property
    def group(self) -> str:
        """This run's precision/device group, as :attr:`groups` names them."""
        return f"{self.cfg.precision} on {self.cfg.device_type}"

    @property
    def stored(self) -> int:
        """Runs of this notebook stored for this run's group."""
        return self.runs - len(self.missing)

    @property
    def slices(self) -> list[Job]:
        """The slice checkpoints to train (not in the cache)."""
        return [j for j in self.jobs if isinstance(j, Job) and j.key not in self.cached]

    @property
    def chains(self) -> list[Chain]:
        return [j for j in self.jobs if isinstance(j, Chain)]

    def work(self) -> dict[tuple, int]:
        """Sample-epochs to train per model (:func:`_speed_key`), chains at their most."""
        out: dict[tuple, int] = {}
        for j in [*self.slices, *self.chains]:
            out[j.model] = out.get(j.model, 0) + j.work
        return out


def survey(profile: str | None = None, *, only=None, cache_dir=None, results=None,  # noqa: C901
           trainings: bool = True, datasets=None, **overrides) -> list[Step]:
    """The plan of :func:`plan`, per notebook and dataset, in the runner's order (see
    :class:`Step`). ``results``: the runner's ``--results`` folder (its store is
    ``runs/`` there); ``trainings`` False lists the runs only (no service is built);
    ``datasets``: the datasets to plan (default: as :func:`plan`)."""
    known = studies.all_parameters() - {"profile"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a notebook parameter; use one of "
                         f"{', '.join(sorted(known))}")
    if datasets is None and overrides.get("dataset"):
        datasets = [overrides["dataset"]]
    elif datasets is None:  # as the runner does: the profile's datasets that are on disk
        datasets = available(profile_datasets(profile), overrides.get("data_root"))[0]
    stems = [s for s in studies.STEMS if not only
             or s in {p.stem for p in notebooks(studies.NOTEBOOKS, list(only))}]
    cache_dir = str(cache_dir or default_cache_dir())
    jobs: dict[str, Job | Chain] = {}
    services: dict[Recipe, object] = {}
    steps = []
    for name in datasets:
        params = {**overrides, "dataset": name}
        if "store_dir" not in params:
            params["store_dir"] = str(folders(profile, overrides, name, results=results)[2])
        for stem in stems:
            mod, cfg = studies.study(stem), studies.config(stem, profile, **params)
            renders = not cfg.compute
            if renders and studies.renders_stored(cfg.compute, overrides.get("precision")):
                cfg = studies.stored_precision(stem, cfg)
            step = Step(name, stem, cfg, len(mod.runs(cfg)), renders=renders,
                        groups=_groups(mod, cfg))
            steps.append(step)
            store = RunStore(cfg.store_dir)
            for run in mod.runs(cfg):
                key = studies.stored_key(mod, run, cfg)
                if not store.has(run.table, *key):
                    step.missing.append((run.table, *key))
            if renders or not trainings:
                continue
            ctx = studies.Context(cfg, cache_dir)
            for run in studies.missing(stem, cfg):
                for need in mod.needs(run, ctx):
                    new = _jobs(need, cfg, name, services, jobs)
                    step.jobs += new
            step.cached = {j.key for j in step.jobs if isinstance(j, Job)
                           and (Path(cache_dir) / f"{j.key}.pt").is_file()}
    return steps


def _jobs(need, cfg: RunConfig, dataset: str, services: dict, jobs: dict) -> list:
    """The jobs of ``need`` not yet in ``jobs`` (added there too)."""
    recipe = need.recipe
    svc = services.get(recipe) or services.setdefault(recipe, recipe.build())
    size, label, speed = _model_params(svc), f"{dataset} {need.label}", _speed_key(svc)
    new = []
    if need.chain:
        after = () if need.chain == "amnesiac" else tuple(
            k for k, *_ in svc.plan_slices(()))
        key = f"chain-{need.chain}-" + content_key(
            {"recipe": [recipe.kind, recipe.seed, recipe.shards, recipe.variant],
             "counts": need.counts, "settings": studies.settings(recipe.cfg),
             "precision": cfg.precision, "device": cfg.device_type,
             **({"knobs": list(need.knobs)} if need.knobs else {})})
        if key not in jobs:
            jobs[key] = Chain(key, recipe, need.chain, need.counts, after, label,
                              svc.device.type, size, need.knobs,
                              _chain_work(svc, need.chain, need.counts), speed)
            new.append(jobs[key])
        return new
    for removed in need.states:
        gone = np.zeros(len(svc.y), dtype=bool)
        gone[np.asarray(removed, dtype=np.int64)] = True
        for key, shard, sl, after in svc.plan_slices(removed):
            if key not in jobs:
                work = len(svc.retained(shard, sl, gone)) * svc.epochs[sl]
                jobs[key] = Job(key, recipe, shard, sl, removed, after, label,
                                svc.device.type, size, work, speed)
                new.append(jobs[key])
    return new


def _groups(mod, cfg: RunConfig) -> dict[str, int]:
    """Stored runs of ``mod``'s tables at ``cfg``'s settings per precision/device group
    (every seed the store holds), the largest first."""
    store, counts = RunStore(cfg.store_dir), {}
    for table in sorted({r.table for r in mod.runs(cfg)}):
        rows = store.table(table, studies.settings_key(mod, table, cfg))
        if rows.empty or not set(GROUP) <= set(rows.columns):
            continue
        for (precision, device), n in rows.groupby(list(GROUP)).run_key.nunique().items():
            name = f"{precision} on {device}"
            counts[name] = counts.get(name, 0) + int(n)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- estimate
def measure(model: tuple, seconds: float = 2.0) -> float:
    """Samples per second of training ``model`` (a :func:`_speed_key`) here, now: one
    warm-up on two batches, then the faster of two timed epochs over random images, each
    sized to take about ``seconds / 2``. A machine busy with other work measures slower,
    as it will train."""
    import torch

    from .train import fit

    arch, shape, classes, scaling, tcfg, device = model
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    bs = tcfg.batch_size

    def timed(n: int) -> float:
        x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
        net = build_model(arch, shape, classes, seed=0, input_scaling=scaling)
        start = time.perf_counter()
        fit(net, x, y, tcfg, seed=0, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    rough = 2 * bs / max(timed(2 * bs), 1e-6)
    n = int(min(max(rough * seconds / 2, 2 * bs), 100 * bs)) // bs * bs
    return n / max(min(timed(n), timed(n)), 1e-6)


def estimate(steps: list[Step], rates: dict[tuple, float]) -> dict[tuple[str, str], float]:
    """Seconds of training per ``(dataset, stem)`` at the measured ``rates`` (samples per
    second per model, :func:`measure`)."""
    return {(s.dataset, s.stem): sum(w / rates[m] for m, w in s.work().items())
            for s in steps}


def models(steps: list[Step]) -> list[tuple]:
    """The models the steps train (each a :func:`_speed_key`), in order of first use."""
    return list(dict.fromkeys(m for s in steps for m in s.work()))
