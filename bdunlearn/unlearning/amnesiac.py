"""Amnesiac unlearning (Graves et al., AAAI 2021): approximate, no retraining from scratch.

During training the parameter update of every step whose batch held a sample that may
later be unlearned (``watch`` ids) is recorded. A batch's update is split evenly among
the watched samples it held, so memory grows with the watched samples, not the steps.
On a request the recorded updates of the requested samples are subtracted, then the
model is fine-tuned briefly on the retained data. When every watched sample of a batch
is requested, that batch's update is removed exactly.

Cached by content like SISA (with a ``cache_dir``): the trained weights and recorded
updates under a key of the training configuration, data and watched ids; the weights
after each request under that key and the ordered request history. A loaded result
keeps the seconds measured when it was computed; ``RequestCost.cache_hits`` says it
was loaded.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import numpy as np
import torch

from .. import cache
from ..checks import integer, number
from ..models import build_model
from ..train import (
    TrainConfig,
    derive_seed,
    device_key,
    fit,
    predict_proba,
    resolve_device,
    synchronize,
)
from .base import RequestCost, UnlearningService


class AmnesiacService(UnlearningService):
    """A single-model unlearning service that never retrains from scratch.

    ``watch``: the ids that may be unlearned (their updates are recorded).
    ``scale``: the constant the subtracted updates are multiplied by (1: the recorded
    updates as they were; larger values undo the requested samples more strongly; 0
    subtracts nothing, so a request only fine-tunes: the control for what the
    subtraction itself does).
    ``finetune_epochs``: passes over the retained data fine-tuned after each request
    (a fraction means a random subset). ``cache_dir``: ``None`` (no cache), ``"auto"``
    (:func:`bdunlearn.cache.default_cache_dir`) or a folder. ``screen``: an optional
    request filter, as for :class:`~bdunlearn.unlearning.SisaService`.
    """

    shards = 1
    not_requestable = "was not recorded as unlearnable, so Amnesiac unlearning cannot remove it"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, arch: str, num_classes: int,
                 cfg: TrainConfig, watch, seed: int = 0, device="auto",
                 finetune_epochs: float = 0.5, scale: float = 1.0, cache_dir=None,
                 screen=None,
                 progress: bool = False, input_scaling: str | None = None):
        if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, (int, float)) \
                or not 0 <= finetune_epochs <= cfg.epochs:
            raise ValueError(f"finetune_epochs {finetune_epochs!r} must be a number between 0 "
                             f"and the {cfg.epochs} training epochs")
        watch = np.atleast_1d(np.asarray(watch))
        if watch.size == 0:
            raise ValueError("watch must name at least one sample id that may be unlearned")
        self._setup(x, y, num_classes, watch, screen)
        self.watch = np.flatnonzero(self.requestable)
        self.cfg, self.seed, self.arch = cfg, integer("seed", seed, 0), arch
        self.input_scaling = input_scaling
        self.device = resolve_device(device)
        self.finetune_epochs = float(finetune_epochs)
        self.scale = number("scale", scale, 0)
        self.progress = progress
        self.cache_dir = cache.folder(cache_dir)
        self.model = None
        self._delta: dict[int, list[torch.Tensor]] = {}
        self._history: list[np.ndarray] = []  # accepted ids of each applied request
        self._fit_key = cache.content_key(
            {"method": "amnesiac", "arch": arch, "shape": list(x.shape[1:]),
             "classes": self.num_classes, "cfg": cfg.resolved(self.device).as_dict(),
             "seed": self.seed, "data": cache.data_fingerprint(x, y),
             "device": device_key(self.device),
             "model": cache.model_fingerprint(self._new_model())},
            self.watch)

    @property
    def models(self) -> list:
        return [self.model]

    def model_of(self, ids) -> np.ndarray:
        return np.zeros(len(np.atleast_1d(ids)), dtype=np.int64)

    def training_ids(self, model_index: int) -> np.ndarray:
        """The ids the model was trained on and has not unlearned."""
        if model_index != 0:
            raise ValueError(f"model index {model_index!r} does not exist: an Amnesiac "
                             "service has one model, index 0")
        return np.flatnonzero(~self.removed)

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "amnesiac" / f"{key}.pt"

    @contextlib.contextmanager
    def _entry(self, key: str, load):
        """Hold ``key``'s cache lock while the body computes or loads it (no lock without a
        cache); gives ``(path, loaded)``: ``load(tensors, meta)`` of the stored entry, or
        ``None`` when it must be computed (``path`` is ``None`` without a cache). An entry
        that does not load (another key, missing fields, wrong shapes) is damage: it is
        discarded with a warning and computed again."""
        path = self._path(key)
        if path is None:
            yield None, None
            return
        with cache.lock(path):
            entry, loaded = cache.load(path), None
            if entry is not None:
                try:
                    if entry[1].get("key") != key:
                        raise ValueError("it holds another key")
                    loaded = load(*entry)
                except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                    cache.discard(path, f"{type(err).__name__}: {err}".split("\n")[0])
            yield path, loaded

    # ------------------------------------------------------------------ training
    def _record(self, idx: torch.Tensor, deltas: list[torch.Tensor]) -> None:
        """Split one step's update ``deltas`` (on the device) evenly among the watched
        samples of the batch ``idx`` (sample indices on the CPU: looked up without waiting
        for the GPU; the accumulation stays queued on the device)."""
        ids = idx[self._watched[idx]].tolist()
        for i in ids:
            acc = self._delta.setdefault(i, [torch.zeros_like(d) for d in deltas])
            for a, d in zip(acc, deltas):
                a.add_(d, alpha=1.0 / len(ids))

    def _new_model(self) -> torch.nn.Module:
        return build_model(self.arch, tuple(self.x.shape[1:]), self.num_classes,
                           seed=derive_seed(self.seed, "init", 0),
                           input_scaling=self.input_scaling)

    def fit(self) -> AmnesiacService:
        """Train the model recording the watched samples' updates (or load both)."""
        start = time.perf_counter()
        def load(tensors, meta):
            model = self._new_model()
            model.load_state_dict({k[6:]: v for k, v in tensors.items()
                                   if k.startswith("model/")})
            shapes = [p.shape for p in model.parameters() if p.requires_grad]
            delta = {int(i): [tensors[f"delta/{i}/{j}"].to(self.device)
                              for j in range(len(shapes))] for i in meta["recorded"]}
            if any(d.shape != s for ds in delta.values() for d, s in zip(ds, shapes)):
                raise ValueError("a recorded update has the wrong shape")
            return model, delta, float(meta["seconds"])

        model = self._new_model()
        with self._entry(self._fit_key, load) as (path, entry):
            if entry is not None:
                model, self._delta, seconds = entry
                hits = 1
            else:
                self._delta = {}
                mask = torch.zeros(len(self.y), dtype=torch.bool)
                mask[torch.from_numpy(self.watch)] = True
                self._watched = mask  # on the CPU, as fit hands the batch indices
                fit(model, self.x, self.y, self.cfg, seed=derive_seed(self.seed, "train", 0, 0),
                    device=self.device, watch=mask, on_update=self._record,
                    progress=self.progress, desc="amnesiac training")
                synchronize(self.device)
                seconds, hits = time.perf_counter() - start, 0
                if path is not None:
                    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
                    for i, deltas in self._delta.items():
                        tensors.update({f"delta/{i}/{j}": d for j, d in enumerate(deltas)})
                    cache.keep(path, tensors, {"key": self._fit_key, "seconds": seconds,
                                               "recorded": sorted(self._delta)})
        self.model = model.to(self.device).eval()
        self.fit_cost = RequestCost(0, 0, 1 - hits, 1 - hits, (1 - hits) * len(self.y)
                                    * self.cfg.epochs, seconds, cache_hits=hits,
                                    wall_seconds=time.perf_counter() - start)
        return self

    # ------------------------------------------------------------------ unlearning
    def _prepare(self, accepted: np.ndarray, cost: RequestCost):  # noqa: C901
        """Subtract the requested samples' recorded updates from a copy of the model,
        then fine-tune it briefly (or load the result of this request history)."""
        history = [*self._history, accepted]
        knobs = {"fit": self._fit_key, "finetune_epochs": self.finetune_epochs,
                 "batches": [len(h) for h in history]}
        if self.scale != 1.0:  # keys of the default scale stay as they were
            knobs["scale"] = self.scale
        key = cache.content_key(knobs, np.concatenate(history))
        keep = np.flatnonzero(~self.removed)
        keep = torch.from_numpy(keep[~np.isin(keep, accepted)])
        n_ft = int(round(self.finetune_epochs * len(keep)))
        def load(tensors, meta):
            loaded = copy.deepcopy(self.model)
            loaded.load_state_dict(tensors)
            return loaded, float(meta["seconds"])

        model = copy.deepcopy(self.model)
        with self._entry(key, load) as (path, entry):
            if entry is not None:
                model, seconds = entry
                cost.cache_hits = 1
            else:
                start = time.perf_counter()
                params = [p for p in model.parameters() if p.requires_grad]
                with torch.no_grad():
                    for i in accepted:
                        for p, d in zip(params, self._delta.get(int(i), [])):
                            p.sub_(d, alpha=self.scale)
                if n_ft:
                    gen = np.random.default_rng([self.seed, len(self._history), 13])
                    whole, rest = divmod(n_ft, len(keep))  # finetune_epochs above 1: passes
                    pick = np.sort(gen.choice(len(keep), rest, replace=False))
                    sub = keep[torch.from_numpy(pick)]
                    if whole:
                        sub = torch.cat([keep.repeat(whole), sub])
                    fit(model, self.x[sub], self.y[sub], self.cfg, epochs=1,
                        seed=derive_seed(self.seed, "finetune", len(self._history)),
                        device=self.device)
                synchronize(self.device)
                seconds = time.perf_counter() - start
                if path is not None:
                    cache.keep(path, model.state_dict(), {"key": key, "seconds": seconds})
        model.eval()
        cost.shards_retrained, cost.sample_epochs, cost.seconds = 1, n_ft, seconds

        def install():
            self.model = model
            self._history = history
            for i in accepted:
                self._delta.pop(int(i), None)
        return install

    # ------------------------------------------------------------------ inference
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the model, ``(1, N, classes)``."""
        return predict_proba(self.model, x, device=self.device)[None]

