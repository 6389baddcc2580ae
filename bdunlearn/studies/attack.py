"""Notebook 01's runs: per seed, a model without attack samples and the BN and IT attacks
under exact unlearning, before the requests and after every mitigation sample is
unlearned."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .. import experiment as ex
from .. import verdicts as vd
from ..claim import ALL_PROFILES, Claim, ends, pct, rate, switches
from ..tables import over_seeds
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
    return over_seeds(table, ["variant", "requested"],
                      ["baseline_acc", "clean_acc", "asr", "retrain_seconds"])


# ------------------------------------------------------------ claims: the backdoor switches on
# (notebook 02's trajectories and notebook 06's epochs section reuse these)

def switch_measure(variant: str):
    def measure(t: pd.DataFrame) -> dict | None:
        d = t[t.variant == variant]
        if "unlearning" in d:
            d = d[d.unlearning == "exact"]
        if d.empty:
            return None
        g = d.groupby("requested")[["clean_acc", "asr"]].mean()
        m = {"asr_before": g.asr.iloc[0], "asr_after": g.asr.iloc[-1],
             "acc_before": g.clean_acc.iloc[0], "acc_after": g.clean_acc.iloc[-1]}
        if "baseline_acc" in d:
            m["baseline_acc"] = d.baseline_acc.mean()
        return {k: float(v) for k, v in m.items()}
    return measure


def _switch_holds(m: dict, t: Mapping[str, float]) -> bool:
    ok = (m["asr_before"] <= t["max_asr_before"] and m["asr_after"] >= t["min_asr_after"]
          and m["asr_after"] - m["asr_before"] >= t["min_asr_rise"])
    if "baseline_acc" in m:
        ok = ok and all(abs(m[k] - m["baseline_acc"]) <= t["max_acc_gap"]
                        for k in ("acc_before", "acc_after"))
    return ok


def _switch_describe(m: dict) -> str:
    base = f" (no attack {pct(m['baseline_acc'])})" if "baseline_acc" in m else ""
    return (f"ASR {pct(m['asr_before'])} before, {pct(m['asr_after'])} after; clean accuracy "
            f"{pct(m['acc_before'])} / {pct(m['acc_after'])}{base}")


# smoke (a few thousand images) only checks that unlearning raises the ASR
SWITCH = {"smoke": dict(max_asr_before=1.0, min_asr_after=0.0, min_asr_rise=0.2,
                        max_acc_gap=1.0),
          "default": dict(max_asr_before=0.15, min_asr_after=0.90, min_asr_rise=0.0,
                          max_acc_gap=0.02),
          "paper": dict(max_asr_before=0.15, min_asr_after=0.80, min_asr_rise=0.0,
                        max_acc_gap=0.02)}


def switch_claim(name, notebook, variant, title, asserted_at, in_readme=True,
                 decide=None) -> Claim:
    return Claim(name, notebook,
                 f"BAU {title}: unlearning the mitigation samples switches the backdoor on",
                 "benign before the requests, high ASR after (exact unlearning)",
                 switch_measure(variant), _switch_holds, _switch_describe, SWITCH,
                 asserted_at, in_readme, decide)


def _exact(t: pd.DataFrame, variant: str) -> pd.DataFrame:
    d = t[t.variant == variant] if "variant" in t else t
    if "unlearning" in d:
        d = d[d.unlearning == "exact"]
    return d[d.shards == d.shards.min()] if "shards" in d and len(d) else d


def switch_rows(variant: str):
    """The README rows: in how many runs the backdoor switched on, and the ASR."""
    def decide(t: pd.DataFrame, th) -> list:
        d = _exact(t, variant)
        if d.empty or "seed" not in d:
            return []
        c = vd.count(switches(d).values())
        text = f"switches on in {c} runs"
        if variant != "it":  # IT's ASR is on copies of one image: per run about 0 or 1
            before, after = ends(d)
            text += f"; ASR {rate(before.values())} before, {rate(after.values())} after"
        return [("", text, vd.happens(c))]
    return decide


CLAIMS = (
    switch_claim("bn_switch_on", "01_attack", "bn", "BadNets-based", ALL_PROFILES,
                 decide=switch_rows("bn")),
    switch_claim("it_switch_on", "01_attack", "it", "input-targeted", (),
                 decide=switch_rows("it")),
)
