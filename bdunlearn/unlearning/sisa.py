"""SISA training and exact unlearning (Bourtoule et al., S&P 2021).

A seeded permutation of the sample ids is split into ``shards`` shards of (almost) equal
size and each shard into ``slices`` slices. Slice ``l`` of a shard trains on slices
``0..l``, continuing from slice ``l - 1``'s checkpoint. Every slice checkpoint is keyed by
:func:`bdunlearn.cache.content_key`: a hash of the training configuration and the exact
ordered ids it saw, so an unlearning request retrains only the shards it touches, from
the first slice that held a removed id, and finds everything else in the cache. Exact
unlearning (full retraining) is ``shards=1, slices=1``.

Each checkpoint records its own slice's training seconds and sample-epochs and those of
the slices before it, so a request's cost is the same whether its slices were trained
now or found in the cache.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import cache
from ..checks import integer
from ..models import build_model
from ..parallel import Job, Stage, choose_workers, train_jobs
from ..stacked import fit_stacked, stackable
from ..train import (
    TrainConfig,
    derive_seed,
    device_key,
    fit,
    predict_proba,
    resolve_device,
    synchronize,
)
from .base import AGGREGATIONS, RequestCost, UnlearningService


def slice_epochs(epochs: int, slices: int) -> list[int]:
    """Epochs each slice trains for, as in the SISA reference code but never zero.

    The reference spreads ``2 * epochs / (slices + 1)`` epochs per slice on average so
    that the whole schedule costs about ``epochs`` passes over the shard; its integer
    rounding can give a slice zero epochs, which this function raises to one.
    """
    avg = 2 * slices / (slices + 1) * epochs / slices
    return [max(1, int((s + 1) * avg) - int(s * avg)) for s in range(slices)]


@dataclass
class _Job:
    """One shard being brought up to date: its model, slice keys, first slice to train,
    and the ``(seconds, sample_epochs)`` record of every slice known so far."""

    shard: int
    model: torch.nn.Module
    keys: list
    start: int
    records: list = field(default_factory=list)


class SisaService(UnlearningService):
    """A SISA unlearning service over ``x`` (uint8 images) and ``y`` with ids ``0..N-1``.

    ``requestable`` limits which ids may be unlearned (the requesting contributor's own
    samples); ``screen`` is an optional request filter ``screen(service, ids) -> bool mask``
    of ids to refuse (see :mod:`bdunlearn.detect`). ``cache_dir=None`` keeps checkpoints in
    memory only; ``"auto"`` uses :func:`bdunlearn.cache.default_cache_dir`.
    ``stacked="auto"`` trains the shards a fit or request touches together on a CUDA device
    when the architecture allows it (:func:`bdunlearn.stacked.fit_stacked`) and one after
    another otherwise; ``True`` or ``False`` insist. ``input_scaling`` is the models' input
    scaling (:func:`bdunlearn.models.build_model`; ``None``: the architecture's reference).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, arch: str, num_classes: int,
                 cfg: TrainConfig, shards: int = 1, slices: int = 1, seed: int = 0,
                 cache_dir=None, device="auto", aggregation: str = "vote",
                 requestable=None, screen=None, stacked="auto", progress: bool = False,
                 input_scaling: str | None = None):
        self._setup(x, y, num_classes, requestable, screen)
        n = len(y)
        for name, v in (("shards", shards), ("slices", slices)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} {v!r} must be a positive integer")
        if shards * slices > n:
            raise ValueError(f"{shards} shards x {slices} slices is more than the {n} samples")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; use 'vote' or 'mean'")
        if stacked not in ("auto", True, False):
            raise ValueError(f"stacked={stacked!r} must be 'auto', True or False")
        self.arch, self.cfg, self.input_scaling = arch, cfg, input_scaling
        self.shards, self.slices = int(shards), int(slices)
        self.seed = integer("seed", seed, 0)
        self.device = resolve_device(device)
        self.aggregation = aggregation
        self.progress = progress
        self.stacked = stacked
        self.cache_dir = cache.folder(cache_dir)
        self._memory: dict[str, tuple[dict, dict]] = {}
        perm = np.random.default_rng([self.seed, 11]).permutation(n)
        self.layout = [np.array_split(part, self.slices)
                       for part in np.array_split(perm, self.shards)]
        self.shard_of = np.empty(n, dtype=np.int64)
        self.slice_of = np.empty(n, dtype=np.int64)
        for s, shard in enumerate(self.layout):
            for sl, ids in enumerate(shard):
                self.shard_of[ids], self.slice_of[ids] = s, sl
        self.epochs = slice_epochs(cfg.epochs, self.slices)
        self._models: list[torch.nn.Module | None] = [None] * self.shards
        if stacked is True and not self._stackable:
            raise ValueError(f"stacked=True, but {arch} cannot be trained stacked (it has "
                             "batch norm or dropout); use stacked='auto' or False")
        self._config = {"arch": arch, "shape": list(x.shape[1:]), "classes": self.num_classes,
                        "cfg": cfg.resolved(self.device).as_dict(), "seed": self.seed,
                        "shards": self.shards, "slices": self.slices,
                        "data": cache.data_fingerprint(x, y), "device": device_key(self.device),
                        "model": cache.model_fingerprint(self._new_model(0))}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def models(self) -> list:
        return self._models

    def model_of(self, ids) -> np.ndarray:
        return self.shard_of[np.asarray(ids, dtype=np.int64)]

    def retained(self, shard: int, upto: int, removed: np.ndarray | None = None) -> np.ndarray:
        """Retained ids of slices ``0..upto`` of ``shard``, in layout order (``removed``:
        the removed flags to apply, the service's own by default)."""
        removed = self.removed if removed is None else removed
        ids = np.concatenate(self.layout[shard][: upto + 1])
        return ids[~removed[ids]]

    def training_ids(self, model_index: int) -> np.ndarray:
        """The ids the current model of shard ``model_index`` was trained on."""
        return self.retained(integer("model index", model_index, 0, self.shards - 1),
                             self.slices - 1)

    # ------------------------------------------------------------------ checkpoints
    def _key(self, shard: int, upto: int, removed: np.ndarray) -> str:
        cfg = dict(self._config, shard=shard, slice=upto, epochs=self.epochs[: upto + 1])
        return cache.content_key(cfg, self.retained(shard, upto, removed))

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.pt"

    def _new_model(self, shard: int) -> torch.nn.Module:
        return build_model(self.arch, tuple(self.x.shape[1:]), self.num_classes,
                           seed=derive_seed(self.seed, "init", shard),
                           input_scaling=self.input_scaling)

    def _load(self, key: str, model: torch.nn.Module) -> list | None:
        """Load checkpoint ``key`` into ``model``; return the ``[seconds, sample_epochs]``
        records of its slices ``0..l``, or ``None`` when it is missing, damaged or
        mismatched (the caller retrains it)."""
        if key not in self._memory:
            path = self._path(key)
            entry = None if path is None else cache.load(path)
            if entry is None:
                return None
            state, meta = entry
            try:  # anything that does not load into a correct model is damage: retrain
                if meta.get("key") != key:
                    raise ValueError("it holds another key")
                records = [[float(v) for v in r] for r in meta["history"]]
                if not records or any(len(r) != 2 for r in records):
                    raise ValueError("its history is malformed")
                cache.load_state(model, state)  # all or nothing: never a half-loaded model
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                cache.discard(path, f"{type(err).__name__}: {err}".split("\n")[0])
                return None
            self._memory[key] = (state, meta)
            return records
        state, meta = self._memory[key]
        model.load_state_dict(state)
        return [list(r) for r in meta["history"]]

    def _store(self, key: str, model: torch.nn.Module, history: list) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        history = [list(r) for r in history]  # a snapshot: the caller's list grows
        seconds, sample_epochs = history[-1]
        meta = {"key": key, "seconds": seconds, "sample_epochs": sample_epochs,
                "history": history}
        path = self._path(key)
        if path is not None:
            cache.keep(path, state, meta)  # a read-only cache: kept in memory only
        self._memory[key] = (state, meta)

    def _resume(self, shard: int, removed: np.ndarray) -> _Job:
        """The shard's model loaded from its newest cached slice (or fresh)."""
        model = self._new_model(shard)
        keys = [self._key(shard, sl, removed) for sl in range(self.slices)]
        for sl in range(self.slices - 1, -1, -1):
            records = self._load(keys[sl], model)
            if records is not None:
                return _Job(shard, model, keys, sl + 1, records)
        return _Job(shard, model, keys, 0, [])

    def _locked(self, keys: list[str]):
        """Hold the cache locks of ``keys`` (sorted, so two processes never deadlock)."""
        stack = contextlib.ExitStack()
        if self.cache_dir is not None:
            for key in sorted(set(keys)):
                stack.enter_context(cache.lock(self._path(key)))
        return stack

    # ------------------------------------------------------------------ training
    def _train_shards(self, shards, removed: np.ndarray) -> list[_Job]:  # noqa: C901
        """Bring ``shards`` up to date for the removed flags ``removed``: load cached
        slices, train the rest, store every slice checkpoint as soon as it is trained.

        Changes nothing in the service but its checkpoint cache: the returned jobs hold
        the new models. Shards train one after another, or slice by slice all together
        (:func:`bdunlearn.stacked.fit_stacked`) when :attr:`stacked` says so, or in
        one-thread worker processes when :func:`bdunlearn.parallel.choose_workers` is
        asked for them (``BDUNLEARN_WORKERS``; by default this process trains, measured
        faster); worker results are bitwise those of one-thread sequential training.
        Each group of shards holds the locks of its final checkpoints while it trains, so
        a second process needing them waits and then loads them.
        """
        shards = list(shards)
        stacked = self._stack(len(shards))
        workers = 1 if stacked else choose_workers(shards)
        if workers > 1:
            last = [self._key(s, self.slices - 1, removed) for s in shards]
            with self._locked(last):
                jobs = [self._resume(s, removed) for s in shards]
                todo = [j for j in jobs if j.start < self.slices]
                work = []
                for j in todo:
                    ids = torch.from_numpy(self.retained(j.shard, self.slices - 1, removed))
                    work.append(Job(j.model, self.x[ids], self.y[ids], self.cfg, [
                        Stage(len(self.retained(j.shard, sl, removed)),
                              derive_seed(self.seed, "train", j.shard, sl), self.epochs[sl],
                              sum(self.epochs[:sl])) for sl in range(j.start, self.slices)]))
                results = train_jobs(work, device=self.device, workers=workers)
                for j, job, stages in zip(todo, work, results):
                    for sl, stage, (state, seconds) in zip(range(j.start, self.slices),
                                                           job.stages, stages):
                        j.model.load_state_dict(state)
                        j.records.append([seconds, stage.count * stage.epochs])
                        self._store(j.keys[sl], j.model, j.records)
            for j in jobs:
                j.model.to(self.device).eval()
            return jobs
        groups = [shards] if stacked else [[s] for s in shards]
        done = []
        for group in tqdm(groups, desc="SISA shards", disable=not self.progress or len(groups) < 2,
                          leave=False):
            last = [self._key(s, self.slices - 1, removed) for s in group]
            with self._locked(last):
                jobs = [self._resume(s, removed) for s in group]
                for sl in range(self.slices):
                    todo = [j for j in jobs if j.start <= sl]
                    if not todo:
                        continue
                    ids = [torch.from_numpy(self.retained(j.shard, sl, removed)) for j in todo]
                    kw = dict(device=self.device, epochs=self.epochs[sl],
                              epoch_offset=sum(self.epochs[:sl]))
                    t0 = time.perf_counter()
                    if len(todo) == 1:
                        fit(todo[0].model, self.x[ids[0]], self.y[ids[0]], self.cfg,
                            seed=derive_seed(self.seed, "train", todo[0].shard, sl),
                            desc=f"shard {todo[0].shard} slice {sl}", **kw)
                    else:
                        fit_stacked([j.model for j in todo], [self.x[i] for i in ids],
                                    [self.y[i] for i in ids], self.cfg,
                                    seeds=[derive_seed(self.seed, "train", j.shard, sl)
                                           for j in todo], desc=f"{len(todo)} shards slice {sl}",
                                    **kw)
                    synchronize(self.device)  # CUDA runs ahead of the clock
                    share = (time.perf_counter() - t0) / len(todo)
                    for j, i in zip(todo, ids):
                        j.records.append([share, len(i) * self.epochs[sl]])
                        self._store(j.keys[sl], j.model, j.records)
            done += jobs
        for j in done:
            j.model.to(self.device).eval()
        return done

    @cached_property
    def _stackable(self) -> bool:
        """Whether the architecture can be trained stacked (built once, only when asked)."""
        probe = self._new_model(0)
        return stackable([probe, probe])

    def _stack(self, n: int) -> bool:
        if n < 2 or self.stacked is False:
            return False
        return self.stacked is True or (self.device.type == "cuda" and self._stackable)

    def fit(self) -> SisaService:
        """Train (or load from the cache) every shard's model.

        ``fit_cost`` says what this call did: slices trained now (their seconds and
        sample-epochs) and checkpoints found in the cache.
        """
        start = time.perf_counter()
        cost = RequestCost(0, 0, 0, 0, 0, 0.0)
        jobs = self._train_shards(range(self.shards), self.removed)
        for j in jobs:
            cost.cache_hits += j.start
            trained = j.records[j.start:]
            cost.shards_retrained += bool(trained)
            cost.slices_retrained += len(trained)
            cost.seconds += sum(r[0] for r in trained)
            cost.sample_epochs += sum(r[1] for r in trained)
            self._models[j.shard] = j.model
        cost.wall_seconds = time.perf_counter() - start
        self.fit_cost = cost
        return self

    # ------------------------------------------------------------------ unlearning
    def _prepare(self, accepted: np.ndarray, cost: RequestCost):
        """Retrain the touched shards aside, from the first slice that held a removed id;
        the cost counts every slice from there on, trained now or found in the cache."""
        removed = self.removed.copy()
        removed[accepted] = True
        dirty = {int(s): int(self.slice_of[accepted[self.shard_of[accepted] == s]].min())
                 for s in np.unique(self.shard_of[accepted])}
        jobs = self._train_shards(sorted(dirty), removed)
        for j in jobs:
            cost.cache_hits += j.start
            needed = j.records[dirty[j.shard]:]
            cost.slices_retrained += len(needed)
            cost.seconds += sum(r[0] for r in needed)
            cost.sample_epochs += sum(r[1] for r in needed)
        cost.shards_retrained = len(dirty)

        def install():
            for j in jobs:
                self._models[j.shard] = j.model
        return install

    # ------------------------------------------------------------------ inference
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of every constituent model, ``(shards, N, classes)``."""
        return torch.stack([predict_proba(m, x, device=self.device) for m in self.models])

    # ------------------------------------------------------------------ planning (sweeps)
    def plan_slices(self, removed=()) -> list[tuple[str, int, int, str | None]]:
        """``(key, shard, slice, key of slice - 1)`` of every slice checkpoint the models
        need once the ids ``removed`` are unlearned, in training order.

        Trains nothing and leaves the service as it was; the keys are the ones
        :meth:`fit` and :meth:`unlearn` look up (see :mod:`bdunlearn.plan`).
        """
        gone = self._removed_flags(removed)
        out = []
        for s in range(self.shards):
            keys = [self._key(s, sl, gone) for sl in range(self.slices)]
            out += [(k, s, sl, keys[sl - 1] if sl else None) for sl, k in enumerate(keys)]
        return out

    def _removed_flags(self, removed) -> np.ndarray:
        flags = np.zeros_like(self.removed)
        flags[self._as_ids(removed, check_state=False)] = True
        return flags

    def train_slice(self, shard: int, upto: int, removed=()) -> bool:
        """Train and store slice ``upto`` of ``shard`` as it is once ``removed`` ids are
        unlearned, continuing from slice ``upto - 1``'s cached checkpoint (or training
        the missing earlier slices too). Returns ``False`` when the checkpoint was
        already cached (nothing trained). For sweeps; the service's models are unchanged.
        """
        if not 0 <= shard < self.shards or not 0 <= upto < self.slices:
            raise ValueError(f"shard {shard}, slice {upto} is outside the {self.shards} "
                             f"shards x {self.slices} slices")
        gone, saved = self._removed_flags(removed), self.slices
        self.slices = upto + 1  # _train_shards stops at slice `upto`; keys use the layout
        try:
            return self._train_shards([shard], gone)[0].start < self.slices
        finally:
            self.slices = saved
