"""Notebook 03's runs: per seed, every overhead defense once on a classical BadNets model,
then re-run after every request batch of the BAU attack under exact unlearning, with MU
screening of the next batch timed beside them."""

from __future__ import annotations

import pandas as pd

from .. import defense_runs
from .. import experiment as ex
from .. import verdicts as vd
from ..claim import Claim, same
from ..tables import over_seeds
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
    return over_seeds(d, ["defense", "setting", "requested"], ["steps", "seconds"])


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


# ------------------------------------------------------------ claims: what the defense costs

def _overhead_measure(defense: str):
    def measure(t: pd.DataFrame) -> dict | None:
        if "steps" not in t:
            return None
        runs = t[(t.setting == "bau") & (t.defense == defense)]
        once = t[(t.setting == "badnets") & (t.defense == defense)]
        if runs.empty or once.empty:
            return None
        per_seed = runs.groupby("seed")
        return {"runs": float(per_seed.requested.nunique().mean()),
                "steps_total": float(per_seed.steps.sum().mean()),
                "steps_once": float(once.steps.mean()),
                "steps_min": float(runs.steps.min()),
                "seconds_total": float(per_seed.seconds.sum().mean()),
                "seconds_once": float(once.seconds.mean())}
    return measure


def _overhead(defense: str) -> Claim:
    return Claim(f"overhead_{defense}", "03_defense_overhead",
                 f"BAU: the attack multiplies the cost of {defense}",
                 "a defender must re-run it after every request batch",
                 _overhead_measure(defense),
                 lambda m, t: (m["runs"] >= t["min_runs"] and m["steps_min"] > 0
                               and m["steps_total"] >= t["min_step_ratio"] * m["steps_once"]),
                 lambda m: (f"{m['runs']:.0f} runs, {m['steps_total']:.0f} optimiser steps vs "
                            f"{m['steps_once']:.0f} once on a classical BadNets model "
                            f"({m['steps_total'] / max(m['steps_once'], 1):.1f}x); seconds "
                            f"{m['seconds_total']:.0f} vs {m['seconds_once']:.0f}"),
                 same(dict(min_runs=2, min_step_ratio=1.5)), decide=_overhead_rows(defense))


def _nc_first_flag(t: pd.DataFrame) -> dict | None:
    nc = t[(t.setting == "bau") & (t.defense == "neural_cleanse")]
    if nc.empty:
        return None
    hit = nc[nc.flagged.astype(str) == "True"]
    at_zero = nc[nc.requested == 0]
    first = hit.groupby("seed").requested.min()
    return {"first": None if first.empty else int(first.min()),
            "flagged_before": float((at_zero.flagged.astype(str) == "True").mean()),
            "seeds": int(nc.seed.nunique()),
            "runs": sorted({int(k) for k in nc.requested})}


def _overhead_rows(defense: str):
    def decide(t: pd.DataFrame, th) -> list:
        if "steps" not in t:
            return []
        runs = t[(t.setting == "bau") & (t.defense == defense)]
        once = t[(t.setting == "badnets") & (t.defense == defense)].groupby("seed")
        if runs.empty or not len(once):
            return []
        per_run = runs.groupby("seed")[["steps", "seconds"]].mean()
        one = once[["steps", "seconds"]].mean()
        seeds = [s for s in per_run.index if s in one.index]
        steps = vd.spread([per_run.steps[s] / one.steps[s] for s in seeds])
        secs = vd.spread([per_run.seconds[s] / one.seconds[s] for s in seeds])
        n = float(runs.groupby("seed").requested.nunique().mean())
        total = vd.spread([n * per_run.steps[s] / one.steps[s] for s in seeds])
        return [("", f"one run on the BAU model: {steps.text('.2f')}x the optimiser steps "
                 f"({secs.text('.2f')}x the seconds) of one on a classical BadNets model; "
                 f"re-run {n:.0f} times (the defender's policy: once per request batch): "
                 f"{total.text('.1f')}x", vd.against(total, th["min_step_ratio"]))]
    return decide


def _nc_hides_rows(t: pd.DataFrame, th) -> list:
    nc = t[(t.setting == "bau") & (t.defense == "neural_cleanse") & (t.requested == 0)]
    if nc.empty:
        return []
    hidden = nc.groupby("seed").flagged.first().astype(str) != "True"
    c = vd.count(hidden)
    return [("", f"Neural Cleanse flags nothing before the requests in {c} runs",
             vd.happens(c, no="differs: the dormant backdoor is found"))]


CLAIMS = (
    _overhead("baeraser"),
    _overhead("grad_prune"),
    _overhead("neural_cleanse"),
    Claim("nc_hides", "03_defense_overhead",
          "BAU: before the requests the backdoor hides from model-level detection",
          "Neural Cleanse needs the activated backdoor", _nc_first_flag,
          lambda m, t: m["first"] is None or m["first"] > 0,
          lambda m: (f"Neural Cleanse flags the target before any request in "
                     f"{m['flagged_before'] * m['seeds']:.0f} of {m['seeds']} seeds (runs after "
                     f"{', '.join(str(k) for k in m['runs'])} requests)"),
          same({}), (), decide=_nc_hides_rows),
)
