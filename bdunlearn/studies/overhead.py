"""Notebook 03's runs: per seed, every overhead defense once on a classical BadNets model,
then re-run after every request batch of the BAU attack under exact unlearning, with MU
screening of the next batch timed beside them."""

from __future__ import annotations

import pandas as pd

from .. import defense_runs
from .. import experiment as ex
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "epochs", "train_subset", "poison_num", "mitigation_num", "alpha",
              "poison_fraction", "defense_steps", "defender_size", "nc_steps")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "poison_fraction", "defense_steps",
            "defender_size", "nc_steps")
TABLE = "03_defense_overhead"
COLUMNS = ["dataset", "variant", "seed", "shards", "requested", "defense", "seconds",
           "flagged", "asr_after", "clean_acc_after", "steps"]  # the results contract first


def runs(cfg) -> list[Run]:
    return [Run(TABLE, seed) for seed in cfg.seeds]


def _counts(recipe, cfg) -> list[int]:
    return ex.schedule(len(recipe.attack().ids("mitigation")), cfg.defense_steps)


def needs(run: Run, ctx) -> list[Need]:
    bau = ctx.recipe("attack", run.seed, 1, "bn")
    order = bau.attack().request_order()
    return [Need("03 classic BadNets", ctx.recipe("classic", run.seed)),
            Need("03 bn S=1", bau, tuple(tuple(order[:k]) for k in _counts(bau, ctx.cfg)))]


def compute(run: Run, ctx) -> tuple[pd.DataFrame, dict]:
    """The defense runs (``setting`` ``badnets`` once, ``bau`` after each batch) and, as
    the side table ``trajectory``, the attack's trajectory they ran along."""
    classic, bau = needs(run, ctx)
    cfg, ds, seed = ctx.cfg, ctx.ds, run.seed
    model = classic.recipe.build().fit().models[0]
    once = defense_runs.overhead_once(model, classic.recipe.attack(), ctx.pool, ds, cfg,
                                      seed=seed, cache_dir=ctx.cache_dir)
    atk = bau.recipe.attack()
    traj, along = defense_runs.overhead_along_trajectory(
        atk, bau.recipe.build(), _counts(bau.recipe, cfg), ctx.pool, ds, cfg, seed=seed,
        cache_dir=ctx.cache_dir)
    return defense_runs.overhead_table(once, along), {"trajectory": traj}


def show(table: pd.DataFrame) -> pd.DataFrame:
    """Per defense: the one-time run on the classical model and each re-run along the
    attack, in optimiser steps (counted work) and seconds, over seeds."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    d = table[table.defense != "screen_mu"]
    return ex.over_seeds(d, ["defense", "setting", "requested"], ["steps", "seconds"])


def defenses(cfg) -> list[str]:
    """The defenses notebook 03 re-runs (:func:`bdunlearn.defense_runs.overhead_defenses`)."""
    return list(defense_runs.overhead_defenses(cfg))


def screening(table: pd.DataFrame) -> str:
    """The cost of screening a request with MU beside serving it, over seeds."""
    if table.empty:
        return "no screening was timed"
    screen = table[table.defense == "screen_mu"]
    if screen.empty:
        return "no screening was timed"
    per = screen.groupby("seed").seconds.sum() / screen.groupby("seed").screened.sum()
    return (f"screening the next request batch with MU: {1e3 * per.mean():.3f} ms per request "
            f"(mean over {len(per)} seeds)")
