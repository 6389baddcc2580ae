"""Notebook 05's runs: per seed, every defense on a classical BadNets model and on the
BAU model after activation (``erasure``), and Neural Cleanse on a model trained without
attack samples (``clean``: its false positives)."""

from __future__ import annotations

import pandas as pd

from .. import defense_runs
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "epochs", "train_subset", "poison_num", "mitigation_num", "alpha",
              "poison_fraction", "defender_size", "defense_samples", "nc_steps")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "poison_fraction", "defender_size",
            "defense_samples", "nc_steps")
TABLE = "05_backdoor_erasure"
COLUMNS = ["dataset", "attack", "defense", "seed", "defender_samples", "asr_before",
           "asr_after", "clean_acc_before", "clean_acc_after", "seconds"]  # the contract first


def runs(cfg) -> list[Run]:
    return [Run(TABLE, seed, (("part", part),)) for seed in cfg.seeds
            for part in ("erasure", "clean")]


def needs(run: Run, ctx) -> list[Need]:
    if run["part"] == "clean":
        return [Need("05 clean", ctx.recipe("clean", run.seed))]
    bau = ctx.recipe("attack", run.seed, 1, "bn")
    return [Need("05 classic BadNets", ctx.recipe("classic", run.seed)),
            Need("05 bn S=1", bau, ((), tuple(bau.attack().request_order())))]


def targets(run: Run, ctx) -> dict:
    """``{"badnets": (attack, model), "bau": (attack, model after activation)}``."""
    classic, bau = needs(run, ctx)
    model = classic.recipe.build().fit().models[0]
    svc = bau.recipe.build().fit()
    atk = bau.recipe.attack()
    svc.unlearn(atk.request_order())  # the attacker's requests, served
    return {"badnets": (classic.recipe.attack(), model), "bau": (atk, svc.models[0])}


def compute(run: Run, ctx) -> pd.DataFrame:
    if run["part"] == "clean":
        (need,) = needs(run, ctx)
        model = need.recipe.build().fit().models[0]
        return pd.DataFrame([defense_runs.clean_model_flags(
            model, ctx.ds, ctx.cfg, ctx.pool, seed=run.seed, cache_dir=ctx.cache_dir)])
    return defense_runs.erasure(targets(run, ctx), ctx.pool, ctx.ds, ctx.cfg, seed=run.seed,
                                cache_dir=ctx.cache_dir)


def models(table: pd.DataFrame) -> pd.DataFrame:
    """The two backdoored models before any defense, over seeds."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    first = table[table.attack != "none"].groupby(["attack", "seed"]).first()
    return first.groupby("attack")[["asr_before", "clean_acc_before"]].agg(
        ["mean", "min", "max"]).round(3)


def show(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    from .. import experiment as ex

    d = table[table.attack != "none"]
    return ex.over_seeds(d, ["attack", "defense", "defender_samples"],
                         ["asr_before", "asr_after", "clean_acc_after", "seconds"])

