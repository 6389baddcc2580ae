"""Notebook glue: a :class:`~bdunlearn.config.RunConfig` in, the dataset, the services and
their trajectories of requests out.

Each function is one sentence of a notebook's story (the dataset, the service the attacker
contributes to, a trajectory of requests); the algorithms live in the modules they call.
A results table's display and CSV are :mod:`bdunlearn.tables`, the defender's images and
defenses :mod:`bdunlearn.defender`, notebook 07's screened requests
:mod:`bdunlearn.screening`.
"""

from __future__ import annotations

import pandas as pd

from . import attack as attacks
from .checks import choice, integer, request_steps
from .config import RunConfig
from .data import Dataset, load
from .registry import spec
from .unlearning import AmnesiacService, SisaService

# The results contract of a trajectory table (notebooks 01, 02): its columns come first.
RESULT_COLUMNS = ["dataset", "variant", "seed", "shards", "slices", "requested",
                  "clean_acc", "asr", "retrain_seconds"]


def dataset(cfg: RunConfig) -> Dataset:
    """The run's dataset, subset as asked (the same subset in every notebook)."""
    ds = load(cfg.dataset, cfg.data_root)
    return ds.subset(cfg.train_subset, cfg.test_subset, seed=0)


def service(x, y, ds: Dataset, cfg: RunConfig, *, shards: int = 1, seed: int = 0,
            requestable=None, screen=None, cache_dir="auto") -> SisaService:
    """A SISA service (exact unlearning when ``shards=1``) with the reference settings."""
    return SisaService(x, y, arch=spec(ds.name).arch, num_classes=ds.num_classes,
                       cfg=cfg.train_config(), shards=shards, slices=cfg.slices, seed=seed,
                       cache_dir=cache_dir, device=cfg.device, requestable=requestable,
                       screen=screen, input_scaling=cfg.input_scaling)


def attack_service(atk: attacks.AttackSet, ds: Dataset, cfg: RunConfig, *, shards: int = 1,
                   screen=None, cache_dir="auto") -> SisaService:
    """The service the attacker contributes to; only mitigation ids may be requested."""
    return service(atk.x, atk.y, ds, cfg, shards=shards, seed=atk.seed,
                   requestable=atk.ids("mitigation"), screen=screen, cache_dir=cache_dir)


def amnesiac_service(atk: attacks.AttackSet, ds: Dataset, cfg: RunConfig,
                     cache_dir="auto", **knobs) -> AmnesiacService:
    """An Amnesiac (approximate) unlearning service watching the mitigation samples
    (``knobs``: ``finetune_epochs``, ``scale``)."""
    return AmnesiacService(atk.x, atk.y, arch=spec(ds.name).arch, num_classes=ds.num_classes,
                           cfg=cfg.train_config(), watch=atk.ids("mitigation"),
                           seed=atk.seed, device=cfg.device, cache_dir=cache_dir,
                           input_scaling=cfg.input_scaling, **knobs)


def accuracy(svc, ds: Dataset) -> float:
    """Test accuracy of a fitted service on the run's evaluation images."""
    return float((svc.predict(ds.x_test) == ds.y_test).float().mean())


def schedule(total: int, steps) -> list[int]:
    """Cumulative request counts from 0: ``steps`` equal batches up to ``total`` for an
    integer ``steps``, else the given increasing counts, those above ``total`` capped."""
    total, steps = integer("total", total, 0), request_steps("steps", steps)
    if isinstance(steps, tuple):
        return sorted({0, *(min(c, total) for c in steps)})
    return sorted({int(round(total * i / steps)) for i in range(steps + 1)})


def trajectory(atk: attacks.AttackSet, svc, counts, *, label: str | None = None,
               on_step=None) -> pd.DataFrame:
    """Fit ``svc``, then unlearn the attacker's requests batch by batch, evaluating each.

    ``on_step(requested, svc)`` runs after each evaluation (defenses, detectors).
    """
    order = atk.request_order()
    rows, done = [], 0
    if not svc.fitted:
        svc.fit()
    for k in counts:
        cost = svc.unlearn(order[done:k]) if k > done else None
        done = k
        row = {"dataset": atk.dataset, "variant": atk.variant, "seed": atk.seed,
               "shards": svc.shards, "slices": getattr(svc, "slices", 1), "requested": k,
               **{m: v for m, v in atk.evaluate(svc.predict).items() if m != "x0_hit"},
               "retrain_seconds": cost.seconds if cost else 0.0,
               "shards_retrained": cost.shards_retrained if cost else 0,
               "sample_epochs": cost.sample_epochs if cost else 0,
               "refused": cost.refused if cost else 0,
               "unlearning": label or ("exact" if svc.shards == 1 else "sisa")}
        rows.append(row)
        if on_step is not None:
            on_step(k, svc)
    return pd.DataFrame(rows)


def detection_shards(cfg: RunConfig, variant: str) -> tuple[int, ...]:
    """The shard counts notebook 04 scores ``variant`` at: all of ``cfg.shards`` for the
    BN attack, the fewest for the input-targeted one (its models are notebook 01's)."""
    return cfg.shards if choice("variant", variant, ("bn", "it")) == "bn" else cfg.shards[:1]


def filtered_trajectory(atk: attacks.AttackSet, ds: Dataset, cfg: RunConfig, counts, *,
                        detector: str = "mu", cache_dir="auto"
                        ) -> tuple[SisaService, pd.DataFrame]:
    """The attack's trajectory on an exact-unlearning service that screens each request
    with ``detector`` and refuses flagged ids; its threshold is calibrated on the
    service's own training data for ``cfg.target_fpr``. Returns the service and the
    trajectory table (labelled ``"<DETECTOR> filter"``)."""
    from .detect import RequestFilter

    svc = attack_service(atk, ds, cfg, cache_dir=cache_dir).fit()
    svc.screen = RequestFilter.calibrate(svc, detector, fpr=cfg.target_fpr, seed=atk.seed)
    return svc, trajectory(atk, svc, counts, label=f"{detector.upper()} filter")


