"""Backdoor defenses run the way notebooks 03 and 05 need them.

Notebook 03 (:func:`overhead_once`, :func:`overhead_along_trajectory`): the cost of
re-running model-level defenses after every request batch of the BAU attack, against
running them once on a classical BadNets model. Notebook 05 (:func:`erasure_plan`,
:func:`erasure`, :func:`clean_model_flags`): every defense on a classical BadNets model and
on a BAU model after activation, and Neural Cleanse's false positives on clean models.

Every defense sees only defender data (a model, a clean pool, a trigger where its paper
assumes one) through :func:`bdunlearn.defender.defend`; the attack's manifest and test
trigger are used only to evaluate what the defense left.
"""

from __future__ import annotations

import time

import pandas as pd
from tqdm.auto import tqdm

from . import detect
from . import experiment as ex
from .attack import AttackSet
from .config import RunConfig
from .data import Dataset
from .defender import defend
from .train import predict, synchronize
from .triggers import PatchTrigger


def overhead_defenses(cfg: RunConfig) -> dict[str, dict]:
    """The defenses notebook 03 re-runs, with their knobs: Neural Cleanse (detection),
    BAERASER and Grad-Prune with the trigger Neural Cleanse reverses (mitigation)."""
    return {"neural_cleanse": dict(steps=cfg.nc_steps),
            "baeraser": dict(scan_steps=cfg.nc_steps),
            "grad_prune": dict(samples_per_class=100, scan_steps=cfg.nc_steps)}


def overhead_once(model, atk: AttackSet, pool, ds: Dataset, cfg: RunConfig, *, seed: int,
                  requested: int = 0, setting: str = "badnets", shards: int = 1,
                  cache_dir="auto") -> list[dict]:
    """One row per defense of :func:`overhead_defenses` run on ``model``: its seconds and
    optimiser steps (its work, counted), whether it flagged the attack's target, and the
    ASR and clean accuracy it leaves.

    ``requested``, ``setting`` ("badnets" for the one-time runs, "bau" along the attack)
    and ``shards`` describe the model in the rows.
    """
    x_def, y_def = pool
    meta = dict(dataset=ds.name, variant=atk.variant, seed=seed, shards=shards,
                requested=requested, setting=setting)
    rows = []
    for name, knobs in overhead_defenses(cfg).items():
        r = defend(model, name, x_def, y_def, ds.num_classes, seed=seed,
                   device=cfg.device, cache_dir=cache_dir, **knobs)
        after = atk.evaluate(lambda x, m=r.model or model: predict(m, x, device=cfg.device))
        rows.append({**meta, "defense": name, "seconds": r.seconds, "steps": r.steps,
                     "flagged": atk.target in (r.flagged or []),
                     "asr_after": after["asr"], "clean_acc_after": after["clean_acc"]})
    return rows


def overhead_along_trajectory(atk: AttackSet, svc, counts, pool, ds: Dataset,
                              cfg: RunConfig, *, seed: int, cache_dir="auto"
                              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Serve the attacker's requests in batches ``counts`` and re-run every defense after
    each batch; also time MU screening of the next batch of requests.

    Returns ``(trajectory, runs)``: the unlearning trajectory and one row per defense run
    or screening (``defense`` ``"screen_mu"``), with ``setting`` ``"bau"``.
    """
    rows = []
    step = counts[1] if len(counts) > 1 else 0

    def after_each_batch(k, served):
        rows.extend(overhead_once(served.models[0], atk, pool, ds, cfg, seed=seed,
                                  requested=k, setting="bau", shards=served.shards,
                                  cache_dir=cache_dir))
        upcoming = atk.request_order()[k:k + step]
        if len(upcoming):
            t0 = time.perf_counter()
            detect.scores(served, upcoming, "mu")
            synchronize(cfg.device)
            rows.append({"dataset": ds.name, "variant": atk.variant, "seed": seed,
                         "shards": served.shards, "requested": k, "setting": "bau",
                         "defense": "screen_mu", "seconds": time.perf_counter() - t0,
                         "screened": len(upcoming)})

    traj = ex.trajectory(atk, svc, counts, on_step=after_each_batch)
    return traj, pd.DataFrame(rows)


def overhead_table(once: list[dict], runs: pd.DataFrame) -> pd.DataFrame:
    """The one-time and re-run rows in one table with each defense's cumulative seconds."""
    table = pd.concat([pd.DataFrame(once), runs], ignore_index=True)
    by = table.groupby(["setting", "defense"])
    table["cumulative_seconds"] = by.seconds.cumsum()
    table["cumulative_steps"] = by.steps.cumsum()
    return table


def erasure_plan(cfg: RunConfig, pool_size: int) -> list[tuple[str, int, bool, dict]]:
    """``(defense, defender samples, trigger known, knobs)`` for every defense of notebook
    05: Neural Cleanse with mitigation, BAERASER, Grad-Prune with the known trigger at each
    of ``cfg.defense_samples`` per class and with the trigger Neural Cleanse reverses,
    then the fine-tuning and fine-pruning baselines."""
    most = max(cfg.defense_samples)
    plan = [("neural_cleanse", pool_size, False, dict(steps=cfg.nc_steps, mitigate=True)),
            ("baeraser", pool_size, False, dict(scan_steps=cfg.nc_steps))]
    plan += [("grad_prune", 10 * k, True, dict(samples_per_class=k))
             for k in cfg.defense_samples]
    plan += [("grad_prune", 10 * most, False, dict(samples_per_class=most,
                                                   scan_steps=cfg.nc_steps)),
             ("finetune", pool_size, False, {}),
             ("fine_pruning", pool_size, False, {})]
    return plan


def erasure(targets: dict, pool, ds: Dataset, cfg: RunConfig, *, seed: int,
            cache_dir="auto") -> pd.DataFrame:
    """Every defense of :func:`erasure_plan` on each ``targets[name] = (attack, model)``.

    One row per (attack, defense, defender samples) with the ASR and clean accuracy before
    and after, the seconds, and the target label the defense found. Grad-Prune with the
    reversed trigger is named ``grad_prune_nc``.
    """
    x_def, y_def = pool
    rows = []
    for attack_name, (atk, model) in targets.items():
        before = atk.evaluate(lambda x, m=model: predict(m, x, device=cfg.device))
        for name, n, known, knobs in tqdm(erasure_plan(cfg, len(y_def)), desc=attack_name):
            trigger = PatchTrigger(atk.info["patch"]) if known else None
            r = defend(model, name, x_def[:n], y_def[:n], ds.num_classes, seed=seed,
                       device=cfg.device, trigger=trigger, cache_dir=cache_dir, **knobs)
            after = atk.evaluate(lambda x, m=r.model or model: predict(m, x,
                                                                     device=cfg.device))
            rows.append({"dataset": ds.name, "attack": attack_name,
                         "defense": name + ("_nc" if name == "grad_prune" and not known else ""),
                         "seed": seed, "defender_samples": n, "asr_before": before["asr"],
                         "asr_after": after["asr"], "clean_acc_before": before["clean_acc"],
                         "clean_acc_after": after["clean_acc"], "seconds": r.seconds,
                         "steps": r.steps,
                         "target_found": r.target, "true_target": atk.target})
    return pd.DataFrame(rows)


def clean_model_flags(model, ds: Dataset, cfg: RunConfig, pool, *, seed: int,
                      cache_dir="auto") -> dict:
    """Neural Cleanse on a model trained without attack samples: how many labels it flags
    (any flag is a false positive)."""
    x_def, y_def = pool
    r = defend(model, "neural_cleanse", x_def, y_def, ds.num_classes, seed=seed,
               device=cfg.device, steps=cfg.nc_steps, cache_dir=cache_dir)
    return {"dataset": ds.name, "attack": "none", "defense": "neural_cleanse", "seed": seed,
            "defender_samples": len(y_def), "seconds": r.seconds, "steps": r.steps,
            "flagged_labels": len(r.flagged)}
