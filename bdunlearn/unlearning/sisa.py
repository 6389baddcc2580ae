"""SISA training and exact unlearning (Bourtoule et al., S&P 2021).

A seeded permutation of the sample ids is split into ``shards`` shards of (almost) equal
size and each shard into ``slices`` slices. Slice ``l`` of a shard trains on slices
``0..l``, continuing from slice ``l - 1``'s checkpoint. Every slice checkpoint is keyed by
:func:`checkpoint_key`: a hash of the training configuration and the exact ordered ids it
saw, so an unlearning request retrains only the shards it touches, from the first slice
that held a removed id, and finds everything else in the cache. Exact unlearning (full
retraining) is ``shards=1, slices=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .models import build_model
from .stacked import fit_stacked, stackable
from .train import TrainConfig, derive_seed, fit, predict_proba, resolve_device

AGGREGATIONS = ("vote", "mean")


def slice_epochs(epochs: int, slices: int) -> list[int]:
    """Epochs each slice trains for, as in the SISA reference code but never zero.

    The reference spreads ``2 * epochs / (slices + 1)`` epochs per slice on average so
    that the whole schedule costs about ``epochs`` passes over the shard; its integer
    rounding can give a slice zero epochs, which this function raises to one.
    """
    avg = 2 * slices / (slices + 1) * epochs / slices
    return [max(1, int((s + 1) * avg) - int(s * avg)) for s in range(slices)]


def checkpoint_key(config: dict, ids) -> str:
    """Content key of a slice checkpoint: hash of the configuration and ordered ids.

    Hex digits only, so it is a valid file name on every system.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(np.asarray(ids, dtype=np.int64)).tobytes())
    return h.hexdigest()[:40]


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256(x.contiguous().cpu().numpy().tobytes())
    h.update(y.cpu().numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    if os.environ.get("BDUNLEARN_CACHE"):
        return Path(os.environ["BDUNLEARN_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "bdunlearn" / "checkpoints"


def save_atomic(obj, path: Path) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class RequestCost:
    """What serving one request cost.

    ``slices_retrained``, ``sample_epochs`` and ``seconds`` count the training the request
    needs, including slices an earlier run already trained and left in the cache (their
    recorded training time is counted), so the figures do not depend on the cache.
    ``cache_hits`` says how many of the needed checkpoints were found; ``wall_seconds`` is
    what this call took.
    """

    requested: int
    refused: int
    shards_retrained: int
    slices_retrained: int
    sample_epochs: int
    seconds: float
    cache_hits: int = 0
    wall_seconds: float = 0.0


@dataclass
class _Job:
    """One shard being brought up to date: its model, slice keys, first slice to train."""

    shard: int
    model: torch.nn.Module
    keys: list
    start: int
    chain: float


class SisaService:
    """An unlearning service over ``x`` (uint8 images) and ``y`` with ids ``0..N-1``.

    ``requestable`` limits which ids may be unlearned (the requesting contributor's own
    samples); ``screen`` is an optional request filter ``screen(service, ids) -> bool mask``
    of ids to refuse (see :mod:`bdunlearn.detect`). ``cache_dir=None`` keeps checkpoints in
    memory only; ``"auto"`` uses :func:`default_cache_dir`. ``stacked="auto"`` trains the
    shards a fit or request touches together on a CUDA device when the architecture allows
    it (:func:`bdunlearn.stacked.fit_stacked`) and one after another otherwise; ``True`` or
    ``False`` insist.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, arch: str, num_classes: int,
                 cfg: TrainConfig, shards: int = 1, slices: int = 1, seed: int = 0,
                 cache_dir=None, device="auto", aggregation: str = "vote",
                 requestable=None, screen=None, stacked="auto", progress: bool = False):
        n = len(y)
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != n:
            raise ValueError("x must be uint8 images (N, C, H, W) with one label per image in y")
        for name, v in (("shards", shards), ("slices", slices)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} {v!r} must be a positive integer")
        if shards * slices > n:
            raise ValueError(f"{shards} shards x {slices} slices is more than the {n} samples")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; use 'vote' or 'mean'")
        if stacked not in ("auto", True, False):
            raise ValueError(f"stacked={stacked!r} must be 'auto', True or False")
        self.x, self.y = x, y
        self.arch, self.num_classes, self.cfg = arch, int(num_classes), cfg
        self.shards, self.slices, self.seed = int(shards), int(slices), int(seed)
        self.device = resolve_device(device)
        self.aggregation = aggregation
        self.progress = progress
        self.stacked = stacked
        self.screen = screen
        self.cache_dir = default_cache_dir() if cache_dir == "auto" else (
            Path(cache_dir) if cache_dir is not None else None)
        self._memory: dict[str, dict] = {}
        perm = np.random.default_rng([self.seed, 11]).permutation(n)
        self.layout = [np.array_split(part, self.slices)
                       for part in np.array_split(perm, self.shards)]
        self.shard_of = np.empty(n, dtype=np.int64)
        self.slice_of = np.empty(n, dtype=np.int64)
        for s, shard in enumerate(self.layout):
            for l, ids in enumerate(shard):
                self.shard_of[ids], self.slice_of[ids] = s, l
        self.removed = np.zeros(n, dtype=bool)
        self.requestable = None
        if requestable is not None:
            self.requestable = np.zeros(n, dtype=bool)
            self.requestable[self._as_ids(requestable, check_state=False)] = True
        self.epochs = slice_epochs(cfg.epochs, self.slices)
        self.models: list[torch.nn.Module | None] = [None] * self.shards
        self.log: list[RequestCost] = []
        self.refused: list[int] = []
        if stacked is True and not self._stackable:
            raise ValueError(f"stacked=True, but {arch} cannot be trained stacked (it has "
                             "batch norm or dropout); use stacked='auto' or False")
        self._config = {"arch": arch, "shape": list(x.shape[1:]), "classes": self.num_classes,
                        "cfg": cfg.as_dict(), "seed": self.seed, "shards": self.shards,
                        "slices": self.slices, "data": data_fingerprint(x, y),
                        "device": self.device.type}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def size(self) -> int:
        return int((~self.removed).sum())

    def retained(self, shard: int, upto: int) -> np.ndarray:
        """Retained ids of slices ``0..upto`` of ``shard``, in layout order."""
        ids = np.concatenate(self.layout[shard][: upto + 1])
        return ids[~self.removed[ids]]

    def training_ids(self, shard: int) -> np.ndarray:
        """The ids the current model of ``shard`` was trained on."""
        return self.retained(shard, self.slices - 1)

    def _as_ids(self, ids, check_state: bool = True) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(ids))
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"sample ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= len(self.y))]
        if bad.size:
            raise ValueError(f"unknown sample id {int(bad[0])}: ids run from 0 to {len(self.y) - 1}")
        if len(np.unique(arr)) != len(arr):
            raise ValueError("a request names the same sample id twice")
        if check_state:
            gone = arr[self.removed[arr]]
            if gone.size:
                raise ValueError(f"sample id {int(gone[0])} was already unlearned")
            if self.requestable is not None:
                foreign = arr[~self.requestable[arr]]
                if foreign.size:
                    raise ValueError(f"sample id {int(foreign[0])} is not one of the "
                                     "requester's own samples, so it cannot be unlearned")
        return arr

    # ------------------------------------------------------------------ training
    def _key(self, shard: int, upto: int) -> str:
        cfg = dict(self._config, shard=shard, slice=upto, epochs=self.epochs[: upto + 1])
        return checkpoint_key(cfg, self.retained(shard, upto))

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.pt"

    def _new_model(self, shard: int) -> torch.nn.Module:
        return build_model(self.arch, tuple(self.x.shape[1:]), self.num_classes,
                           seed=derive_seed(self.seed, "init", shard))

    def _load(self, key: str, model: torch.nn.Module) -> float | None:
        """Load checkpoint ``key`` into ``model`` and return the recorded training seconds
        of its slices ``0..l``;
        ``None`` when it is missing, corrupt or mismatched (the caller retrains it)."""
        if key in self._memory:
            state, seconds = self._memory[key]
            model.load_state_dict(state)
            return seconds
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") != key:
                raise ValueError("checkpoint key mismatch")
            model.load_state_dict(blob["state"])
            seconds = float(blob.get("seconds", 0.0))
        except Exception:
            path.unlink(missing_ok=True)  # corrupt or foreign: retrain it
            return None
        self._memory[key] = (blob["state"], seconds)
        return seconds

    def _store(self, key: str, model: torch.nn.Module, seconds: float) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self._memory[key] = (state, seconds)
        path = self._path(key)
        if path is not None:
            save_atomic({"key": key, "state": state, "seconds": seconds}, path)

    def _resume(self, shard: int, cost: RequestCost, dirty: int | None) -> "_Job":
        """Load the newest cached slice of ``shard``; account for the slices it spares.

        ``dirty`` is the first slice a request changed: from it on, slices count as
        retrained in ``cost`` even when an earlier run left them in the cache.
        """
        model = self._new_model(shard)
        keys = [self._key(shard, l) for l in range(self.slices)]
        start, loaded = 0, None
        for l in range(self.slices - 1, -1, -1):
            loaded = self._load(keys[l], model)
            if loaded is not None:
                start = l + 1
                break
        cost.cache_hits += start
        chain = loaded or 0.0  # checkpoints record the training seconds of slices 0..l
        if dirty is not None and start > dirty:  # needed slices found in the cache
            for l in range(dirty, start):
                cost.slices_retrained += 1
                cost.sample_epochs += len(self.retained(shard, l)) * self.epochs[l]
            clean = self._memory.get(keys[dirty - 1], (None, 0.0))[1] if dirty else 0.0
            cost.seconds += chain - clean
        return _Job(shard, model, keys, start, chain)

    def _train_shards(self, shards, cost: RequestCost, dirty: dict | None = None) -> int:
        """Bring ``shards`` up to date: load cached slices, train the rest.

        Shards train one after another, or slice by slice all together
        (:func:`bdunlearn.stacked.fit_stacked`) when :attr:`stacked` says so; every slice
        checkpoint is stored as soon as its model has trained it. Returns how many shards
        trained anything.
        """
        dirty = dirty or {}
        jobs = [self._resume(s, cost, dirty.get(s)) for s in shards]
        groups = [jobs] if self._stack(len(jobs)) else [[j] for j in jobs]
        for group in tqdm(groups, desc="SISA shards", disable=not self.progress or len(groups) < 2,
                          leave=False):
            for l in range(self.slices):
                todo = [j for j in group if j.start <= l]
                if not todo:
                    continue
                ids = [torch.from_numpy(self.retained(j.shard, l)) for j in todo]
                kw = dict(device=self.device, epochs=self.epochs[l],
                          epoch_offset=sum(self.epochs[:l]))
                t0 = time.perf_counter()
                if len(todo) == 1:
                    fit(todo[0].model, self.x[ids[0]], self.y[ids[0]], self.cfg,
                        seed=derive_seed(self.seed, "train", todo[0].shard, l),
                        desc=f"shard {todo[0].shard} slice {l}", **kw)
                else:
                    fit_stacked([j.model for j in todo], [self.x[i] for i in ids],
                                [self.y[i] for i in ids], self.cfg,
                                seeds=[derive_seed(self.seed, "train", j.shard, l)
                                       for j in todo], desc=f"{len(todo)} shards slice {l}",
                                **kw)
                share = (time.perf_counter() - t0) / len(todo)
                for j, i in zip(todo, ids):
                    j.chain += share
                    self._store(j.keys[l], j.model, j.chain)
                    cost.seconds += share
                    cost.slices_retrained += 1
                    cost.sample_epochs += len(i) * self.epochs[l]
        for j in jobs:
            self.models[j.shard] = j.model.to(self.device).eval()
        return sum(j.start < self.slices for j in jobs)

    @cached_property
    def _stackable(self) -> bool:
        """Whether the architecture can be trained stacked (built once, only when asked)."""
        probe = self._new_model(0)
        return stackable([probe, probe])

    def _stack(self, n: int) -> bool:
        if n < 2 or self.stacked is False:
            return False
        return self.stacked is True or (self.device.type == "cuda" and self._stackable)

    def fit(self) -> "SisaService":
        """Train (or load from the cache) every shard's model."""
        cost = RequestCost(0, 0, 0, 0, 0, 0.0)
        start = time.perf_counter()
        cost.shards_retrained = self._train_shards(range(self.shards), cost)
        cost.wall_seconds = time.perf_counter() - start
        self.fit_cost = cost
        return self

    # ------------------------------------------------------------------ unlearning
    def unlearn(self, ids) -> RequestCost:
        """Remove ``ids`` and retrain what they touched; nothing changes if any id is invalid.

        Ids the ``screen`` flags are refused: they stay in the training set and are
        recorded in :attr:`refused`.
        """
        if any(m is None for m in self.models):
            raise RuntimeError("call fit() before serving unlearning requests")
        arr = self._as_ids(ids)
        start = time.perf_counter()
        refused = np.zeros(len(arr), dtype=bool)
        if self.screen is not None and len(arr):
            refused = np.asarray(self.screen(self, arr), dtype=bool)
        self.refused.extend(int(i) for i in arr[refused])
        accepted = arr[~refused]
        cost = RequestCost(len(arr), int(refused.sum()), 0, 0, 0, 0.0)
        self.removed[accepted] = True
        dirty = {int(s): int(self.slice_of[accepted[self.shard_of[accepted] == s]].min())
                 for s in np.unique(self.shard_of[accepted])}
        self._train_shards(sorted(dirty), cost, dirty)
        cost.shards_retrained = len(dirty)
        cost.wall_seconds = time.perf_counter() - start
        self.log.append(cost)
        return cost

    # ------------------------------------------------------------------ inference
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of every constituent model, ``(shards, N, classes)``."""
        return torch.stack([predict_proba(m, x, device=self.device) for m in self.models])

    def predict_proba(self, x: torch.Tensor, aggregation: str | None = None) -> torch.Tensor:
        """Aggregated scores: vote shares (``"vote"``) or mean softmax (``"mean"``)."""
        agg = aggregation or self.aggregation
        if agg not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {agg!r}; use 'vote' or 'mean'")
        probs = self.member_proba(x)
        if agg == "mean":
            return probs.mean(0)
        votes = torch.nn.functional.one_hot(probs.argmax(2), self.num_classes).float().mean(0)
        return votes

    def predict(self, x: torch.Tensor, aggregation: str | None = None) -> torch.Tensor:
        """Labels; votes are tied by mean softmax, then by the lower label."""
        agg = aggregation or self.aggregation
        if agg == "mean" or self.shards == 1:
            return self.predict_proba(x, "mean").argmax(1)
        probs = self.member_proba(x)
        votes = torch.nn.functional.one_hot(probs.argmax(2), self.num_classes).float().sum(0)
        return (votes + 0.5 * probs.mean(0)).argmax(1)

    # ------------------------------------------------------------------ planning (sweeps)
    def plan_slices(self, removed=()) -> list[tuple[str, int, int, str | None]]:
        """``(key, shard, slice, key of slice - 1)`` of every slice checkpoint the models
        need once the ids ``removed`` are unlearned, in training order.

        Trains nothing and leaves the service as it was; the keys are the ones
        :meth:`fit` and :meth:`unlearn` look up (see :mod:`bdunlearn.plan`).
        """
        saved = self.removed
        self.removed = np.zeros_like(saved)
        self.removed[self._as_ids(removed, check_state=False)] = True
        try:
            out = []
            for s in range(self.shards):
                keys = [self._key(s, l) for l in range(self.slices)]
                out += [(k, s, l, keys[l - 1] if l else None) for l, k in enumerate(keys)]
            return out
        finally:
            self.removed = saved

    def train_slice(self, shard: int, upto: int, removed=()) -> bool:
        """Train and store slice ``upto`` of ``shard`` as it is once ``removed`` ids are
        unlearned, continuing from slice ``upto - 1``'s cached checkpoint (or training
        the missing earlier slices too). Returns ``False`` when the checkpoint was
        already cached (nothing trained). For sweeps; the service's models are unchanged.
        """
        if not 0 <= shard < self.shards or not 0 <= upto < self.slices:
            raise ValueError(f"shard {shard}, slice {upto} is outside the {self.shards} "
                             f"shards x {self.slices} slices")
        saved = self.removed, self.slices, list(self.models)
        self.removed = np.zeros_like(saved[0])
        self.removed[self._as_ids(removed, check_state=False)] = True
        self.slices = upto + 1  # _train_shards stops at slice `upto`; keys use the layout
        try:
            cost = RequestCost(0, 0, 0, 0, 0, 0.0)
            return self._train_shards([shard], cost) > 0
        finally:
            self.removed, self.slices, self.models = saved
