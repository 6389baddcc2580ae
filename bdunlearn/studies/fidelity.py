"""Notebook 06's runs: controlled experiments on the five places where the reproduction
disagrees with the papers, or where the setting itself was a choice.

* ``06_fidelity-dormant``: the BN attack before and after the requests, at the fewest
  two shard counts, under the bright test patch and under the poison's own faint patch
  (``asr_faint``); and Neural Cleanse on the BAU model before any request and on a model
  of the same seed trained without attack samples.
* ``06_fidelity-epochs``: the BN and IT attacks at ``epochs`` and ``long_epochs``
  (exact unlearning and the second shard count; BN also at the third): ASR before and
  after, clean accuracy, MU and SMS AUROC; every seed.
* ``06_fidelity-it``: the input-targeted attack over every seed, at the authors' counts
  and at each setting of :data:`IT_GRID`; it *switches on* by
  :func:`bdunlearn.verdicts.switched_on` (ASR at most 20% before the requests and at least
  80% after them: the rule, stated before any run).
* ``06_fidelity-baeraser``: BAERASER on the classical BadNets model over
  :data:`BAERASER_GRID`, the first three seeds.
* ``06_fidelity-amnesiac``: Amnesiac unlearning over :data:`AMNESIAC_GRID` (fine-tuning
  epochs after each request, and the constant scaling the subtracted updates), the
  first three seeds.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from .. import detect
from .. import experiment as ex
from ..metrics import proportion_interval
from ..train import predict
from ..verdicts import switch_rate, switched_on
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "shards", "poison_num", "mitigation_num", "alpha", "epochs",
              "long_epochs", "train_subset", "poison_fraction", "defender_size", "nc_steps")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num", "long_epochs", "poison_fraction", "defender_size", "nc_steps",
            "target_fpr")
DORMANT, EPOCHS, IT, BAERASER, AMNESIAC = (f"06_fidelity-{t}" for t in (
    "dormant", "epochs", "it", "baeraser", "amnesiac"))
TABLES = (DORMANT, EPOCHS, IT, BAERASER, AMNESIAC)
IT_GRID = {"authors' counts": {}, "4x the copies": {"copies": 4},
           "long training": {"long": True}}
# One change at a time from the paper's setting. "no early stop" switches off the package's
# stopping rule (recovered-trigger success below 5% on held-out data), which otherwise ends
# unlearning after an epoch or two, so "unlearning x2" alone changes little.
BAERASER_GRID = {"paper": {}, "recovery x2": {"gen_epochs": 20},
                 "unlearning lr x3": {"lr": 3e-4}, "unlearning lr x10": {"lr": 1e-3},
                 "unlearning x2": {"unlearn_epochs": 20}, "no early stop": {"stop_success": 0.0},
                 "penalty /10": {"lambda_c": 10.0}}
# Scale below 1 and five fine-tuning epochs were added once the first six settings all
# cost more than 5 points of accuracy at default (300 requested samples touch most batches).
# Scale 0 subtracts nothing: fine-tuning on the retained data alone, the control.
AMNESIAC_GRID = {f"finetune {f:g}, scale {s:g}": {"finetune_epochs": f, "scale": s}
                 for f in (0.0, 0.5, 2.0, 5.0) for s in (0.0, 0.5, 1.0, 2.0)
                 if f or s}


def _shards(cfg) -> tuple[int, ...]:
    return cfg.shards[:2]


def runs(cfg) -> list[Run]:
    few = cfg.seeds[:3]
    out = [Run(DORMANT, s, (("part", "attack"), ("shards", k)))
           for s in cfg.seeds for k in _shards(cfg)]
    out += [Run(DORMANT, s, (("part", "neural_cleanse"),)) for s in cfg.seeds]
    # Every seed, so the headline stands at both epoch settings on as many seeds as
    # notebook 01; BN also at the third shard count (the sharding claim's "most").
    out += [Run(EPOCHS, s, (("epochs", e), ("variant", v), ("shards", k)))
            for s in cfg.seeds for e in sorted({cfg.epochs, cfg.long_epochs})
            for v in ("bn", "it") for k in (cfg.shards[:3] if v == "bn" else _shards(cfg))]
    out += [Run(IT, s, (("setting", name),)) for s in cfg.seeds for name in IT_GRID]
    out += [Run(BAERASER, s, (("setting", name),)) for s in few for name in BAERASER_GRID]
    out += [Run(AMNESIAC, s, (("setting", name),)) for s in few for name in AMNESIAC_GRID]
    return out


def _it_config(cfg, setting: str):
    knobs = IT_GRID[setting]
    if "copies" in knobs:
        return replace(cfg, it_poison_num=knobs["copies"] * cfg.it_poison_num,
                       it_mitigation_num=knobs["copies"] * cfg.it_mitigation_num)
    return replace(cfg, epochs=cfg.long_epochs) if knobs.get("long") else cfg


def _all(recipe) -> tuple:
    return ((), tuple(recipe.attack().request_order()))


def needs(run: Run, ctx) -> list[Need]:
    cfg = ctx.cfg
    if run.table == DORMANT and run["part"] == "attack":
        r = ctx.recipe("attack", run.seed, run["shards"], "bn")
        return [Need(f"06 dormant S={run['shards']}", r, _all(r))]
    if run.table == DORMANT:
        return [Need("06 dormant bn S=1", ctx.recipe("attack", run.seed, 1, "bn")),
                Need("06 clean", ctx.recipe("clean", run.seed))]
    if run.table == EPOCHS:
        c = replace(cfg, epochs=run["epochs"])
        r = replace(ctx.recipe("attack", run.seed, run["shards"], run["variant"]), cfg=c)
        return [Need(f"06 {run['variant']} S={run['shards']} {run['epochs']} epochs", r,
                     _all(r))]
    if run.table == IT:
        r = replace(ctx.recipe("attack", run.seed, 1, "it"), cfg=_it_config(cfg, run["setting"]))
        return [Need(f"06 it {run['setting']}", r, _all(r))]
    if run.table == BAERASER:
        return [Need("06 classic BadNets", ctx.recipe("classic", run.seed))]
    r = ctx.recipe("attack", run.seed, 1, "bn")
    knobs = dict(AMNESIAC_GRID[run["setting"]])
    knobs["finetune_epochs"] = min(knobs["finetune_epochs"], float(cfg.epochs))
    knobs = tuple(knobs.items())
    return [Need(f"06 amnesiac {run['setting']}", r, chain="amnesiac",
                 counts=(0, len(r.attack().ids("mitigation"))), knobs=knobs)]


def compute(run: Run, ctx) -> pd.DataFrame:
    (first, *rest) = needs(run, ctx)
    base = {"dataset": ctx.ds.name, "seed": run.seed, **dict(run.setting)}
    if run.table == DORMANT and run["part"] == "attack":
        return _before_after(first.recipe, base, faint=True)
    if run.table == DORMANT:
        bau = first.recipe.build().fit().models[0]
        clean = rest[0].recipe.build().fit().models[0]
        target = first.recipe.attack().target
        rows = []
        for model_name, model in (("bau_before_requests", bau), ("clean", clean)):
            r = ex.defend(model, "neural_cleanse", *ctx.pool, ctx.ds.num_classes,
                          seed=run.seed, device=ctx.cfg.device, steps=ctx.cfg.nc_steps,
                          cache_dir=ctx.cache_dir)
            rows.append({**base, "model": model_name, "flagged_labels": len(r.flagged),
                         "flags_target": target in r.flagged, "steps": r.steps,
                         "seconds": r.seconds})
        return pd.DataFrame(rows)
    if run.table == EPOCHS:
        return _before_after(first.recipe, base, detectors=True)
    if run.table == IT:
        out = _before_after(first.recipe, base)
        before, after = out.asr.iloc[0], out.asr.iloc[-1]
        return out.assign(it_poison_num=first.recipe.cfg.it_poison_num,
                          it_mitigation_num=first.recipe.cfg.it_mitigation_num,
                          epochs=first.recipe.cfg.epochs,
                          switched_on=bool(switched_on(before, after)))
    if run.table == BAERASER:
        atk, model = first.recipe.attack(), first.recipe.build().fit().models[0]
        knobs = {"scan_steps": ctx.cfg.nc_steps, **BAERASER_GRID[run["setting"]]}
        before = atk.evaluate(lambda x: predict(model, x))
        r = ex.defend(model, "baeraser", *ctx.pool, ctx.ds.num_classes, seed=run.seed,
                      device=ctx.cfg.device, cache_dir=ctx.cache_dir, **knobs)
        after = atk.evaluate(lambda x, m=r.model or model: predict(m, x))
        return pd.DataFrame([{**base, "asr_before": before["asr"], "asr_after": after["asr"],
                              "clean_acc_before": before["clean_acc"],
                              "clean_acc_after": after["clean_acc"], "seconds": r.seconds,
                              "steps": r.steps}])
    atk = first.recipe.attack()
    svc = ex.amnesiac_service(atk, ctx.ds, ctx.cfg, cache_dir=ctx.cache_dir,
                              **dict(first.knobs))
    traj = ex.trajectory(atk, svc, list(first.counts), label="amnesiac")
    return traj.assign(**{k: v for k, v in base.items() if k not in traj})


def _before_after(recipe, base: dict, *, faint: bool = False,
                  detectors: bool = False) -> pd.DataFrame:
    """The attack on ``recipe``'s service before the requests and after all of them."""
    atk, svc = recipe.attack(), recipe.build().fit()
    scores = {}
    if detectors:
        for det in detect.DETECTORS:
            if det == "sms" and svc.shards == 1:
                continue
            r = detect.evaluate(svc, atk.ids("mitigation"), atk.detection_negatives(), det,
                                draws=5, seed=atk.seed, fpr=recipe.cfg.target_fpr)
            scores[f"{det}_auroc"] = r["auroc"]
    rows = [{**base, "variant": atk.variant, "shards": svc.shards, "requested": 0,
             **atk.evaluate(svc.predict, faint=faint), **scores}]
    svc.unlearn(atk.request_order())
    rows.append({**base, "variant": atk.variant, "shards": svc.shards,
                 "requested": len(atk.request_order()), **atk.evaluate(svc.predict, faint=faint)})
    return pd.DataFrame(rows).drop(columns=["x0_hit"], errors="ignore")


def show(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Each section's display over seeds (mean, t-interval, seed count)."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]}, index=[name])
    if name == DORMANT:
        attack = table[table.part == "attack"].astype({"shards": int, "requested": int})
        return ex.over_seeds(attack, ["shards", "requested"], ["asr", "asr_faint", "clean_acc"])
    if name == EPOCHS:
        cols = [c for c in ("asr", "clean_acc", "mu_auroc", "sms_auroc") if c in table]
        return ex.over_seeds(table, ["variant", "shards", "epochs", "requested"], cols)
    if name == IT:
        m, rows = switch_rate(table), {}
        for setting, n in m["seeds"].items():
            on = round(m["rate"][setting] * n)
            rate, lo, hi = proportion_interval(on, n)
            rows[setting] = {"switched on": on, "seeds": n, "rate": round(rate, 3),
                             "rate 95% CI (Wilson)": f"[{lo:.3f}, {hi:.3f}]"}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("setting")
    if name == BAERASER:
        return ex.over_seeds(table.assign(reduction=1 - table.asr_after
                                          / table.asr_before.clip(lower=1e-9)),
                             ["setting"], ["asr_after", "reduction", "clean_acc_after"])
    return ex.over_seeds(table, ["setting", "requested"], ["asr", "clean_acc"])


def amnesiac_knobs(table: pd.DataFrame) -> pd.DataFrame:
    """The Amnesiac section's rows after the requests with each setting's knobs as text
    columns (``finetune epochs``, ``scale``), for a figure by knob."""
    def column(knob):  # ordered categories: bars and legend in increasing order
        values = {k: v[knob] for k, v in AMNESIAC_GRID.items()}
        levels = [f"{v:g}" for v in sorted(set(values.values()))]
        return pd.Categorical([f"{v:g}" for v in values.values()], levels, ordered=True)

    knobs = pd.DataFrame({"finetune epochs": column("finetune_epochs"),
                          "scale": column("scale")}, index=list(AMNESIAC_GRID))
    return table[table.requested > 0].join(knobs, on="setting")


def neural_cleanse(table: pd.DataFrame) -> pd.DataFrame:
    """How often Neural Cleanse flags the target before any request, and flags a clean
    model at all (its false-positive rate), over seeds."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    nc = table[table.part == "neural_cleanse"]
    flagged = nc.assign(any_flag=nc.flagged_labels > 0)
    return flagged.groupby("model")[["flags_target", "any_flag"]].agg(["sum", "count"])



def by_patch(table: pd.DataFrame) -> pd.DataFrame:
    """The dormant section's ASR under each test patch, one row per seed, shard count,
    request stage and patch (``setting`` labels the bars)."""
    attack = table[table.part == "attack"].astype({"shards": int})
    long = attack.melt(id_vars=["seed", "shards", "requested"], value_vars=["asr", "asr_faint"],
                       var_name="test patch", value_name="ASR")
    long["test patch"] = long["test patch"].map({"asr": "bright (test)",
                                                 "asr_faint": "faint (poison)"})
    stage = long.requested.map(lambda k: "before" if k == 0 else "after")
    return long.assign(setting="S=" + long.shards.astype(str) + ", " + stage + " the requests")
