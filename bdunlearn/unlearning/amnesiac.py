"""Amnesiac unlearning (Graves et al., AAAI 2021): approximate, no retraining from scratch.

During training the parameter update of every step whose batch held a sample that may
later be unlearned (``watch`` ids) is recorded. A batch's update is split evenly among
the watched samples it held, so memory grows with the watched samples, not the steps.
On a request the recorded updates of the requested samples are subtracted, then the
model is fine-tuned briefly on the retained data. When every watched sample of a batch
is requested, that batch's update is removed exactly.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .models import build_model
from .sisa import RequestCost
from .train import TrainConfig, derive_seed, fit, predict, predict_proba, resolve_device


class AmnesiacService:
    """A single-model unlearning service that never retrains from scratch."""

    shards = 1

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, arch: str, num_classes: int,
                 cfg: TrainConfig, watch, seed: int = 0, device="auto",
                 finetune_epochs: float = 0.5, progress: bool = False):
        if not 0 <= finetune_epochs <= cfg.epochs:
            raise ValueError(f"finetune_epochs {finetune_epochs} must be between 0 and the "
                             f"{cfg.epochs} training epochs")
        self.x, self.y, self.cfg, self.seed = x, y, cfg, int(seed)
        self.arch, self.num_classes = arch, int(num_classes)
        self.device = resolve_device(device)
        self.finetune_epochs = finetune_epochs
        self.progress = progress
        watch = np.unique(np.asarray(watch, dtype=np.int64))
        if watch.size == 0 or watch.min() < 0 or watch.max() >= len(y):
            raise ValueError("watch must name at least one sample id between 0 and "
                             f"{len(y) - 1}")
        self.watch = watch
        self.removed = np.zeros(len(y), dtype=bool)
        self.log: list[RequestCost] = []
        self.model = None
        self._delta: dict[int, list[torch.Tensor]] = {}

    @property
    def models(self):
        return [self.model]

    def _record(self, idx: torch.Tensor, deltas: list[torch.Tensor]) -> None:
        ids = [int(i) for i in idx[self._watched_t[idx]]]
        for i in ids:
            acc = self._delta.setdefault(i, [torch.zeros_like(d) for d in deltas])
            for a, d in zip(acc, deltas):
                a.add_(d, alpha=1.0 / len(ids))

    def fit(self) -> "AmnesiacService":
        start = time.perf_counter()
        self.model = build_model(self.arch, tuple(self.x.shape[1:]), self.num_classes,
                                 seed=derive_seed(self.seed, "init", 0))
        mask = torch.zeros(len(self.y), dtype=torch.bool)
        mask[torch.from_numpy(self.watch)] = True
        self._watched_t = mask.to(self.device)
        fit(self.model, self.x, self.y, self.cfg, seed=derive_seed(self.seed, "train", 0, 0),
            device=self.device, watch=mask, on_update=self._record, progress=self.progress,
            desc="amnesiac training")
        seconds = time.perf_counter() - start
        self.fit_cost = RequestCost(0, 0, 1, 1, len(self.y) * self.cfg.epochs, seconds,
                                    wall_seconds=seconds)
        return self

    def unlearn(self, ids) -> RequestCost:
        """Subtract the requested samples' recorded updates, then fine-tune briefly."""
        arr = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if self.model is None:
            raise RuntimeError("call fit() before serving unlearning requests")
        unknown = np.setdiff1d(arr, self.watch)
        if unknown.size:
            raise ValueError(f"sample id {int(unknown[0])} was not recorded as unlearnable, "
                             "so Amnesiac unlearning cannot remove it")
        if self.removed[arr].any():
            raise ValueError(f"sample id {int(arr[self.removed[arr]][0])} was already unlearned")
        start = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.no_grad():
            for i in arr:
                for p, d in zip(params, self._delta.pop(int(i), [])):
                    p.sub_(d)
        self.removed[arr] = True
        keep = torch.from_numpy(np.flatnonzero(~self.removed))
        n_ft = int(round(self.finetune_epochs * len(keep)))
        if n_ft:
            gen = np.random.default_rng([self.seed, len(self.log), 13])
            sub = keep[torch.from_numpy(np.sort(gen.choice(len(keep), n_ft, replace=False)))]
            fit(self.model, self.x[sub], self.y[sub], self.cfg, epochs=1,
                seed=derive_seed(self.seed, "finetune", len(self.log)), device=self.device)
        seconds = time.perf_counter() - start
        cost = RequestCost(len(arr), 0, 1, 0, n_ft, seconds, wall_seconds=seconds)
        self.log.append(cost)
        return cost

    def member_proba(self, x):
        return predict_proba(self.model, x, device=self.device)[None]

    def predict(self, x):
        return predict(self.model, x, device=self.device)
