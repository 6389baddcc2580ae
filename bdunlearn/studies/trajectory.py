"""Notebook 02's runs: per seed, the attack's trajectory request batch by request batch
under exact unlearning and SISA at each shard count, and (``cfg.amnesiac``) under
Amnesiac unlearning."""

from __future__ import annotations

import pandas as pd

from .. import experiment as ex
from .. import verdicts as vd
from ..claim import ALL_PROFILES, Claim, ends, pct, pts, same, switches
from ..tables import over_seeds
from . import COMMON, MEASURED, Need, Run
from .attack import switch_claim

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
    return over_seeds(table, ["setting", "requested"], ["clean_acc", "asr", "retrain_seconds"])


def before_after(table: pd.DataFrame) -> pd.DataFrame:
    """ASR and clean accuracy before the requests and after all of them, per setting."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    final = table[table.requested == table.requested.max()]
    start = table[table.requested == 0]
    return pd.concat({"before": start.groupby("setting")[["asr", "clean_acc"]].mean(),
                      "after": final.groupby("setting")[["asr", "clean_acc"]].mean()},
                     axis=1).round(3)


# ------------------------------------------------------------ claims: sharding, Amnesiac

def _final_asr_by_shards(t: pd.DataFrame) -> dict | None:
    last = t[(t.requested == t.requested.max()) & t.unlearning.isin(["exact", "sisa"])]
    by = last.groupby("shards").asr.mean()
    return None if len(by) < 2 else {"final_asr": {int(s): float(v) for s, v in by.items()}}


def _sharding_holds(m: dict, t) -> bool:
    asr = list(m["final_asr"].values())
    return asr[-1] < asr[0]


def _amnesiac_measure(t: pd.DataFrame) -> dict | None:
    am = t[t.unlearning == "amnesiac"].groupby("requested").asr.mean()
    return None if am.empty else {"asr_before": float(am.iloc[0]),
                                  "asr_after": float(am.iloc[-1])}


def sharding_rows(t: pd.DataFrame, th) -> list:
    """The README row: runs switched on per shard count, the final ASR's paired change."""
    d = t[t.variant == "bn"] if "variant" in t else t
    if "unlearning" in d:
        d = d[d.unlearning.isin(["exact", "sisa"])]
    shards = sorted(d.shards.unique()) if len(d) else []
    if len(shards) < 2:
        return []
    per = {k: d[d.shards == k] for k in shards}
    counts = ", ".join(f"S={k}: {vd.count(switches(per[k]).values()).k} of "
                       f"{per[k].seed.nunique()}" for k in shards)
    diff = vd.paired(ends(per[shards[0]])[1], ends(per[shards[-1]])[1])
    way = vd.direction(diff)
    verdict = ("agrees" if way == -1 else "differs" if way == 1 else vd.undecided(diff.n))
    return [("", f"switches on in {counts}; final ASR S={shards[-1]} minus S={shards[0]}: "
             f"{diff.text(pts)} points", verdict + (" (n = 1)" if diff.lo is None else ""))]


CLAIMS = (
    switch_claim("bn_trajectory", "02_unlearning_trajectory", "bn", "BadNets-based",
                 ALL_PROFILES, in_readme=False),
    switch_claim("it_trajectory", "02_unlearning_trajectory", "it", "input-targeted",
                 ("smoke",), in_readme=False),
    Claim("sharding_harder", "02_unlearning_trajectory",
          "BAU: sharding (SISA) makes the attack harder",
          "lower ASR after all requests with more shards", _final_asr_by_shards,
          _sharding_holds,
          lambda m: "final ASR " + ", ".join(f"S={s}: {pct(v)}"
                                             for s, v in m["final_asr"].items()),
          same({}), (), decide=sharding_rows),
    Claim("amnesiac_switch_on", "02_unlearning_trajectory",
          "BAU (later work): the attack also works against approximate unlearning",
          "the backdoor appears under Amnesiac unlearning", _amnesiac_measure,
          lambda m, t: m["asr_after"] - m["asr_before"] > t["min_asr_rise"],
          lambda m: f"ASR {pct(m['asr_before'])} before, {pct(m['asr_after'])} after",
          same(dict(min_asr_rise=0.3)), (), in_readme=False),
)
