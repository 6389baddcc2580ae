"""Notebook glue: a :class:`~bdunlearn.config.RunConfig` in, the objects a notebook needs out.

Each function is one sentence of a notebook's story (the dataset, the attack, the service,
a trajectory of requests, a results table); the algorithms live in the modules they call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import attack as attacks
from .checks import choice, integer, request_steps
from .config import RunConfig
from .data import Dataset, load
from .registry import spec
from .unlearning import AmnesiacService, SisaService

# The results contract of a trajectory table (notebooks 01, 02): its columns come first.
RESULT_COLUMNS = ["dataset", "variant", "seed", "shards", "slices", "requested",
                  "clean_acc", "asr", "retrain_seconds"]


def output_dirs(cfg: RunConfig) -> tuple[Path, Path]:
    """The run's results and figures folders (see :mod:`bdunlearn.config`), created."""
    res, fig = Path(cfg.results_dir), Path(cfg.figures_dir)
    res.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    return res, fig


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


def over_seeds(table: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, 95% t-interval and seed count of ``values`` per group ``by`` (a notebook's
    display of a stored table; :func:`bdunlearn.metrics.interval`). Rows of several
    precisions or devices are never averaged together: each is a group of its own,
    its precision and device leading ``by``."""
    from .metrics import interval, value_range
    from .store import GROUP

    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    if set(GROUP) <= set(table.columns) and len(table.groupby(list(GROUP))) > 1:
        by = [*GROUP, *by]
    out = {}
    for key, rows in table.groupby(by, sort=True):
        per_seed = rows.groupby("seed")[values].mean()
        cells = {}
        for v in values:
            present = per_seed[v].dropna().tolist()
            if not present:
                cells[v], cells[f"{v} 95% CI"] = float("nan"), ""
                continue
            mean, lo, hi = interval(present, bounds=value_range(v))
            cells[v] = round(mean, 3)
            cells[f"{v} 95% CI"] = "" if lo is None else f"[{lo:.3f}, {hi:.3f}]"
        cells["seeds"] = len(per_seed)
        out[key] = cells
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.names = by
    return frame


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


def save_table(df: pd.DataFrame, stem: str, results_dir: Path, columns=None) -> Path:
    """Write ``<results_dir>/<stem>.csv``: ``columns`` (the contract's) first, in their
    order, then the others, then the provenance columns (:data:`bdunlearn.store.PROVENANCE`)."""
    from .store import PROVENANCE

    columns = list(columns or [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results table {stem} lacks the columns {missing}")
    last = [c for c in PROVENANCE if c in df.columns and c not in columns]
    df = df[columns + [c for c in df.columns if c not in columns and c not in last] + last]
    path = Path(results_dir) / f"{stem}.csv"
    df.to_csv(path, index=False)
    return path


def defender_pool(cfg: RunConfig, n: int, seed: int = 0):
    """``n`` clean images a defender holds, outside the training set and the evaluation set.

    They come from the training split's images outside ``train_subset`` when the run uses
    part of it, else from the test split's images outside ``test_subset`` (the ``default``
    and ``paper`` profiles evaluate on half of the test split and leave the other half to
    the defender); class-stratified and seeded. Raises ``ValueError`` when both splits are
    used whole (no image is left) or fewer than ``n`` images are left.
    """
    full = load(cfg.dataset, cfg.data_root)
    n = integer("defender pool size", n, 1)
    train, test = full.subset_indices(cfg.train_subset, cfg.test_subset, seed=0)
    if train is not None:
        x, y, used = full.x_train, full.y_train, train
    elif test is not None:
        x, y, used = full.x_test, full.y_test, test
    else:
        raise ValueError(f"train_subset {cfg.train_subset} and test_subset {cfg.test_subset} "
                         "use both splits whole, leaving no clean image for the defender; "
                         "set test_subset below the test split's size (for example 'half')")
    rest = torch.from_numpy(np.setdiff1d(np.arange(len(y)), used.numpy()))
    x, y = x[rest], y[rest]
    if n > len(y):
        raise ValueError(f"a defender pool of {n} images is more than the {len(y)} images "
                         "outside the run's training and evaluation sets")
    rng = np.random.default_rng([seed, 21])
    per = [rng.permutation(np.flatnonzero(y.numpy() == c)) for c in range(full.num_classes)]
    picked = np.concatenate([idx[: n // full.num_classes + (c < n % full.num_classes)]
                             for c, idx in enumerate(per)])
    picked = torch.from_numpy(rng.permutation(picked))
    return x[picked], y[picked]


def defend(model, name: str, x_clean, y_clean, num_classes: int, *, seed: int, device,
           trigger=None, cache_dir="auto", **knobs):
    """Run defense ``name`` on a copy of ``model`` with only defender data.

    With a ``cache_dir`` (``"auto"``: the checkpoint cache) the result is stored by
    content (see :func:`bdunlearn.defenses.run_defense`), so a re-run of a notebook loads
    it instead of running the defense again; a loaded result keeps the seconds measured
    when it was computed and says so in ``info["from_cache"]``.
    """
    from .defenses import DefenderView, run_defense

    view = DefenderView(model, x_clean, y_clean, num_classes, trigger=trigger, device=device)
    return run_defense(name, view, seed=seed, cache_dir=cache_dir, **knobs)


REQUEST_BATCH = 10  # the attacker's and a benign user's requests come in batches of this
FPRS = (0.01, 0.05)  # operating points of the request-detection benchmark
BENIGN_SAMPLE = 2000  # the most benign requests of a population calibrated or tested on


def benign_populations(atk: attacks.AttackSet) -> dict:
    """The benign requests a detector's threshold is set on: random clean training samples,
    and the harder population of clean samples of the target (IT: the source image's)
    class (:meth:`~bdunlearn.attack.AttackSet.hard_negatives`)."""
    return {"random": atk.detection_negatives(), "hard": atk.hard_negatives()}


def screened_requests(atk: attacks.AttackSet, build, detector: str, cfg: RunConfig
                      ) -> tuple[SisaService, dict]:
    """One detector of the request-detection benchmark, end to end (notebook 07).

    ``build()`` returns the attack's service, untrained (fitting loads its cached models).
    On the fitted service: :func:`bdunlearn.detect.benchmark` against both
    :func:`benign_populations` at :data:`FPRS` and ``cfg.target_fpr``; then a fresh
    service screens the attacker's whole request order with the detector at the
    threshold set on random benign requests for ``cfg.target_fpr`` (batch detector:
    batches of :data:`REQUEST_BATCH` requests) and unlearns what it accepts. Returns that
    service and a dict: the benchmark figures per population, the final ASR and clean
    accuracy behind the filter, how many attack requests it refused, and how many benign
    requests of each population it would refuse (``benign``) out of ``benign_requests``:
    as many as the attack's requests, or fewer when a population's held-out ids (never
    an id the threshold was set on) are fewer, the same count for every population.
    """
    from . import detect

    fprs = tuple(sorted({*FPRS, cfg.target_fpr}))
    pops = benign_populations(atk)
    svc = build().fit()
    order, mitigation = atk.request_order(), atk.ids("mitigation")
    with detect.memo():  # svc's models do not change in this block
        bench = detect.benchmark(svc, mitigation, pops, detector, fprs=fprs,
                                 batch=REQUEST_BATCH, sample=BENIGN_SAMPLE, seed=atk.seed)
        thr = bench["random"][f"threshold@{cfg.target_fpr:g}"]
        screen = detect.screen_for(detector, thr, batch=REQUEST_BATCH)
        calibrated = detect.split_benign(svc, pops["random"], mitigation,
                                         sample=BENIGN_SAMPLE, seed=atk.seed)[0]
        held = {name: detect.split_benign(svc, ids, np.concatenate([mitigation, calibrated]),
                                          sample=BENIGN_SAMPLE, seed=atk.seed, name=name)[1]
                for name, ids in pops.items()}  # never an id the threshold was set on
        n = min(len(order), *map(len, held.values()))
        benign = {name: int(np.asarray(screen(svc, ids[:n])).sum())
                  for name, ids in held.items()}
    guarded = build().fit()
    guarded.screen = screen
    cost = guarded.unlearn(order)
    return guarded, {"benchmark": bench, "threshold": thr, "refused": cost.refused,
                     "requests": len(order), "benign": benign, "benign_requests": n,
                     **atk.evaluate(guarded.predict)}
