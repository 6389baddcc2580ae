"""Notebook 01's runs: per seed, a model without attack samples and the BN and IT attacks
under exact unlearning, before the requests and after every mitigation sample is
unlearned."""

from __future__ import annotations

import pandas as pd

from .. import experiment as ex
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "poison_num", "mitigation_num", "alpha", "epochs", "train_subset")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num")
TABLE = "01_attack"
COLUMNS = ex.RESULT_COLUMNS  # the results contract: these first, in this order
VARIANTS = ("bn", "it")


def runs(cfg) -> list[Run]:
    return [Run(TABLE, seed) for seed in cfg.seeds]


def needs(run: Run, ctx) -> list[Need]:
    out = [Need("01 clean baseline", ctx.recipe("clean", run.seed))]
    for variant in VARIANTS:
        r = ctx.recipe("attack", run.seed, 1, variant)
        out.append(Need(f"01 {variant} S=1", r, ((), tuple(r.attack().request_order()))))
    return out


def compute(run: Run, ctx) -> pd.DataFrame:
    """The clean model's accuracy, then each attack before and after all requests."""
    clean, *attacked = needs(run, ctx)
    baseline = ex.accuracy(clean.recipe.build().fit(), ctx.ds)
    rows = []
    for need in attacked:
        atk = need.recipe.attack()
        rows.append(ex.trajectory(atk, need.recipe.build(), [0, len(atk.ids("mitigation"))]))
    return pd.concat(rows, ignore_index=True).assign(baseline_acc=baseline)


def show(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of what the attack does, per variant and request count."""
    return ex.over_seeds(table, ["variant", "requested"],
                         ["baseline_acc", "clean_acc", "asr", "retrain_seconds"])
