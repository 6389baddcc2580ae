"""Notebook 02's runs: per seed, the attack's trajectory request batch by request batch
under exact unlearning and SISA at each shard count, and (``cfg.amnesiac``) under
Amnesiac unlearning."""

from __future__ import annotations

import pandas as pd

from .. import experiment as ex
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "variant", "shards", "poison_num", "mitigation_num", "alpha", "epochs",
              "train_subset", "request_steps", "amnesiac")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "variant", "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num", "request_steps")
TABLE = "02_unlearning_trajectory"
COLUMNS = ex.RESULT_COLUMNS  # the results contract: these first, in this order


def runs(cfg) -> list[Run]:
    out = []
    for seed in cfg.seeds:
        out += [Run(TABLE, seed, (("unlearning", "exact" if s == 1 else "sisa"), ("shards", s)))
                for s in cfg.shards]
        if cfg.amnesiac:
            out.append(Run(TABLE, seed, (("unlearning", "amnesiac"),)))
    return out


def _counts(recipe, cfg) -> list[int]:
    return ex.schedule(len(recipe.attack().ids("mitigation")), cfg.request_steps)


def needs(run: Run, ctx) -> list[Need]:
    cfg = ctx.cfg
    if run["unlearning"] == "amnesiac":
        r = ctx.recipe("attack", run.seed, 1, cfg.variant)
        return [Need(f"02 {cfg.variant} amnesiac", r, chain="amnesiac",
                     counts=tuple(_counts(r, cfg)))]
    r = ctx.recipe("attack", run.seed, run["shards"], cfg.variant)
    order = r.attack().request_order()
    states = tuple(tuple(order[:k]) for k in _counts(r, cfg))
    return [Need(f"02 {cfg.variant} S={run['shards']}", r, states)]


def compute(run: Run, ctx) -> pd.DataFrame:
    """The trajectory: ASR, clean accuracy and the cost of each request batch."""
    (need,) = needs(run, ctx)
    atk, counts = need.recipe.attack(), _counts(need.recipe, ctx.cfg)
    if need.chain == "amnesiac":
        svc = ex.amnesiac_service(atk, ctx.ds, ctx.cfg, cache_dir=ctx.cache_dir)
        traj = ex.trajectory(atk, svc, counts, label="amnesiac")
    else:
        traj = ex.trajectory(atk, need.recipe.build(), counts)
    return traj.assign(setting=setting_names(traj))


def setting_names(traj: pd.DataFrame) -> pd.Series:
    """``"exact"``, ``"SISA S=5"``, ``"amnesiac"``: a trajectory's setting, as figures
    label it."""
    return traj.apply(lambda r: f"SISA S={r.shards}" if r.unlearning == "sisa"
                      else r.unlearning, axis=1)


def show(table: pd.DataFrame) -> pd.DataFrame:
    return ex.over_seeds(table, ["setting", "requested"], ["clean_acc", "asr", "retrain_seconds"])


def before_after(table: pd.DataFrame) -> pd.DataFrame:
    """ASR and clean accuracy before the requests and after all of them, per setting."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    final = table[table.requested == table.requested.max()]
    start = table[table.requested == 0]
    return pd.concat({"before": start.groupby("setting")[["asr", "clean_acc"]].mean(),
                      "after": final.groupby("setting")[["asr", "clean_acc"]].mean()},
                     axis=1).round(3)
