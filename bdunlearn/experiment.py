"""Glue the notebooks share: parameters, data, attack, services, trajectories, outputs.

Each function is one sentence of a notebook's story; the algorithms live in the modules
they call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import attack as attacks
from .data import DATASETS, Dataset, load
from .models import default_arch
from .profiles import get_profile, profile_name
from .train import reference_config, resolve_device
from .unlearning import AmnesiacService, SisaService

RESULT_COLUMNS = ["dataset", "variant", "seed", "shards", "slices", "requested",
                  "clean_acc", "asr", "retrain_seconds"]


def settings(profile: str | None = None, **params) -> dict:
    """Notebook parameters with every ``None`` filled from the profile, checked."""
    prof = get_profile(profile)
    out = {k: (prof[k] if v is None and k in prof else v) for k, v in params.items()}
    out["profile"] = profile_name(profile)
    if out.get("dataset") is None:
        out["dataset"] = prof["datasets"][0]
    if out["dataset"] not in DATASETS:
        raise ValueError(f"unknown dataset {out['dataset']!r}; choose one of {', '.join(DATASETS)}")
    if "variant" in out and out["variant"] not in attacks.VARIANTS:
        raise ValueError(f"unknown variant {out['variant']!r}; choose 'bn' or 'it'")
    if out.get("device") is not None:
        out["device"] = str(resolve_device(out["device"]))
    for key in ("epochs", "request_steps"):
        if key in out and (not isinstance(out[key], (int, np.integer)) or out[key] < 1):
            raise ValueError(f"{key} {out[key]!r} must be a positive integer")
    for s in np.atleast_1d(out.get("shards", 1)):
        if not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"shard count {s!r} must be a positive integer")
    out["seeds"] = tuple(int(s) for s in np.atleast_1d(out.get("seeds", (0,))))
    return out


def _root() -> Path:
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "bdunlearn").is_dir():
            return p
    return here


def output_dirs(results_dir=None, figures_dir=None) -> tuple[Path, Path]:
    """``results/`` and ``figures/`` at the repository root unless given (or set in
    ``BDUNLEARN_RESULTS`` / ``BDUNLEARN_FIGURES``)."""
    res = Path(results_dir or os.environ.get("BDUNLEARN_RESULTS") or _root() / "results")
    fig = Path(figures_dir or os.environ.get("BDUNLEARN_FIGURES") or _root() / "figures")
    res.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    return res, fig


def dataset(p: dict) -> Dataset:
    """The profile's dataset, subset as asked (same subset for every notebook)."""
    ds = load(p["dataset"], p.get("data_root"))
    return ds.subset(p.get("train_subset"), p.get("test_subset"), seed=0)


def build_attack(ds: Dataset, variant: str, seed: int, p: dict) -> attacks.AttackSet:
    """The BN or IT attack with the notebook's counts (``None``: the paper's)."""
    if variant == "bn":
        return attacks.build_badnets(ds, poison_num=p.get("poison_num"),
                                     mitigation_num=p.get("mitigation_num"),
                                     alpha=p.get("alpha"), seed=seed)
    return attacks.build_input_targeted(ds, poison_num=p.get("it_poison_num"),
                                        mitigation_num=p.get("it_mitigation_num"), seed=seed)


def service(x, y, ds: Dataset, p: dict, *, shards: int = 1, seed: int = 0,
            requestable=None, screen=None, cache_dir="auto") -> SisaService:
    """A SISA service (exact unlearning when ``shards=1``) with the reference settings."""
    cfg = reference_config(ds.name, epochs=p.get("epochs"))
    return SisaService(x, y, arch=default_arch(ds.name), num_classes=ds.num_classes, cfg=cfg,
                       shards=shards, slices=p.get("slices", 1), seed=seed,
                       cache_dir=cache_dir, device=p.get("device", "auto"),
                       requestable=requestable, screen=screen)


def attack_service(atk: attacks.AttackSet, ds: Dataset, p: dict, *, shards: int = 1,
                   screen=None) -> SisaService:
    """The service the attacker contributes to; only mitigation ids may be requested."""
    return service(atk.x, atk.y, ds, p, shards=shards, seed=atk.seed,
                   requestable=atk.ids("mitigation"), screen=screen)


def amnesiac_service(atk: attacks.AttackSet, ds: Dataset, p: dict) -> AmnesiacService:
    cfg = reference_config(ds.name, epochs=p.get("epochs"))
    return AmnesiacService(atk.x, atk.y, arch=default_arch(ds.name), num_classes=ds.num_classes,
                           cfg=cfg, watch=atk.ids("mitigation"), seed=atk.seed,
                           device=p.get("device", "auto"))


def clean_baseline(ds: Dataset, p: dict, seed: int) -> float:
    """Test accuracy of the same model trained without any attack samples."""
    svc = service(ds.x_train, ds.y_train, ds, p, seed=seed).fit()
    return float((svc.predict(ds.x_test) == ds.y_test).float().mean())


def schedule(total: int, steps: int) -> list[int]:
    """Cumulative request counts ``0 .. total`` in ``steps`` equal batches."""
    return sorted({int(round(total * i / steps)) for i in range(steps + 1)})


def trajectory(atk: attacks.AttackSet, svc, counts, *, label: str | None = None,
               on_step=None) -> pd.DataFrame:
    """Fit ``svc``, then unlearn the attacker's requests batch by batch, evaluating each.

    ``on_step(requested, svc)`` runs after each evaluation (defenses, detectors).
    """
    order = atk.request_order()
    rows, done = [], 0
    if getattr(svc, "models", [None])[0] is None:
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


def save_table(df: pd.DataFrame, stem: str, results_dir: Path, columns=None) -> Path:
    """Write ``results/<stem>.csv`` (the contract's columns first)."""
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"results table {stem} lacks the columns {missing}")
        df = df[columns + [c for c in df.columns if c not in columns]]
    path = Path(results_dir) / f"{stem}.csv"
    df.to_csv(path, index=False)
    return path


def defender_pool(p: dict, n: int, seed: int = 0):
    """``n`` clean images a defender holds, disjoint from the training subset.

    They come from the training split's images outside ``train_subset`` (class-stratified
    and seeded). With the whole training split in use, they come from the test split and
    overlap the evaluation images (said in the notebooks that use them).
    """
    full = load(p["dataset"], p.get("data_root"))
    n_sub = p.get("train_subset")
    if n_sub is not None and n_sub < len(full.y_train):
        rest = np.random.default_rng(0).permutation(len(full.y_train))[n_sub:]
        x, y = full.x_train[torch.from_numpy(rest)], full.y_train[torch.from_numpy(rest)]
    else:
        x, y = full.x_test, full.y_test
    if n > len(y):
        raise ValueError(f"a defender pool of {n} images is more than the {len(y)} available")
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
