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
from .. import verdicts as vd
from ..claim import ALL_PROFILES, Claim, ends, pct, points, pts, rate, same, switches
from ..defender import defend
from ..metrics import proportion_interval
from ..tables import over_seeds
from ..train import predict
from ..verdicts import switch_rate, switched_on
from . import COMMON, MEASURED, Need, Run, at_smoke
from .attack import SWITCH, switch_measure, switch_rows
from .detection import AUROC, detect_rows
from .trajectory import sharding_rows

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


def grid(table: str, cfg) -> dict:
    """The settings of a knob section (:data:`BAERASER_GRID` or :data:`AMNESIAC_GRID`)
    that ``cfg`` runs: every one, except at ``smoke``, where neither section's claim is
    asserted: BAERASER at the paper's setting and its cheapest change, Amnesiac with at
    most half an epoch of fine-tuning (every scale, its control among them)."""
    if table == BAERASER:
        return dict(at_smoke(cfg, BAERASER_GRID.items(),
                             lambda kv: kv[0] in ("paper", "unlearning lr x10")))
    return dict(at_smoke(cfg, AMNESIAC_GRID.items(), lambda kv: kv[1]["finetune_epochs"] <= 0.5))


def runs(cfg) -> list[Run]:
    few = cfg.seeds[:3]
    out = [Run(DORMANT, s, (("part", "attack"), ("shards", k)))
           for s in cfg.seeds for k in _shards(cfg)]
    out += [Run(DORMANT, s, (("part", "neural_cleanse"),)) for s in cfg.seeds]
    # Every seed, so the headline stands at both epoch settings on as many seeds as
    # notebook 01; BN also at the third shard count (the sharding claim's "most"); at
    # smoke, where none of the section's claims is asserted, IT at one model only.
    it_shards = at_smoke(cfg, _shards(cfg), lambda k: k == _shards(cfg)[0])
    out += [Run(EPOCHS, s, (("epochs", e), ("variant", v), ("shards", k)))
            for s in cfg.seeds for e in sorted({cfg.epochs, cfg.long_epochs})
            for v in ("bn", "it") for k in (cfg.shards[:3] if v == "bn" else it_shards)]
    out += [Run(IT, s, (("setting", name),)) for s in cfg.seeds for name in IT_GRID]
    out += [Run(t, s, (("setting", name),)) for t in (BAERASER, AMNESIAC) for s in few
            for name in grid(t, cfg)]
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
            r = defend(model, "neural_cleanse", *ctx.pool, ctx.ds.num_classes,
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
        r = defend(model, "baeraser", *ctx.pool, ctx.ds.num_classes, seed=run.seed,
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
        return over_seeds(attack, ["shards", "requested"], ["asr", "asr_faint", "clean_acc"])
    if name == EPOCHS:
        cols = [c for c in ("asr", "clean_acc", "mu_auroc", "sms_auroc") if c in table]
        return over_seeds(table, ["variant", "shards", "epochs", "requested"], cols)
    if name == IT:
        m, rows = switch_rate(table), {}
        for setting, n in m["seeds"].items():
            on = round(m["rate"][setting] * n)
            rate, lo, hi = proportion_interval(on, n)
            rows[setting] = {"switched on": on, "seeds": n, "rate": round(rate, 3),
                             "rate 95% CI (Wilson)": f"[{lo:.3f}, {hi:.3f}]"}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("setting")
    if name == BAERASER:
        return over_seeds(table.assign(reduction=1 - table.asr_after
                                       / table.asr_before.clip(lower=1e-9)),
                          ["setting"], ["asr_after", "reduction", "clean_acc_after"])
    return over_seeds(table, ["setting", "requested"], ["asr", "clean_acc"])


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


# ------------------------------------------------------------ claims: each section's

def _dormant(t: pd.DataFrame) -> dict | None:
    if "part" not in t:
        return None
    d = t[(t.part == "attack") & (t.shards == t.shards.min())]
    if d.empty or "asr_faint" not in d:
        return None
    g = d.groupby("requested")[["asr", "asr_faint"]].mean()
    return {"asr_before": float(g.asr.iloc[0]), "asr_faint_before": float(g.asr_faint.iloc[0]),
            "asr_after": float(g.asr.iloc[-1]), "shards": int(d.shards.min())}


def _nc_scan(t: pd.DataFrame) -> dict | None:
    if "part" not in t:
        return None
    nc = t[t.part == "neural_cleanse"]
    bau, clean = nc[nc.model == "bau_before_requests"], nc[nc.model == "clean"]
    if bau.empty or clean.empty:
        return None
    return {"target_flagged": float(bau.flags_target.astype(bool).mean()),
            "clean_flagged": float((clean.flagged_labels > 0).mean()), "seeds": len(bau)}


def _epochs(t: pd.DataFrame) -> dict | None:
    """Per epoch count: what the verdicts of notebooks 01, 02 and 04 rest on (the BN and
    IT attacks at the fewest shards, BN's final ASR and MU AUROC at each shard count),
    on the seeds stored in every cell (variant x shards) at every epoch count: a paired
    comparison, which a seed half stored at one epoch count would unbalance."""
    if "epochs" not in t or t.epochs.nunique() < 2:
        return None
    cell = ["epochs", "variant", "shards"]
    every = set(map(tuple, t[cell].drop_duplicates().values.tolist()))
    seeds = {s for s, d in t.groupby("seed")
             if set(map(tuple, d[cell].drop_duplicates().values.tolist())) >= every}
    t = t[t.seed.isin(seeds)]
    if t.empty:
        return None
    out = {}
    for e, d in t.groupby("epochs"):
        if "bn" not in set(d.variant):
            return None
        m = {v: switch_measure(v)(rows[rows.shards == rows.shards.min()])
             for v, rows in d.groupby("variant")}
        bn = d[d.variant == "bn"]
        m["final_asr"] = {int(k): float(x) for k, x in
                          bn[bn.requested == bn.requested.max()].groupby("shards").asr.mean()
                          .items()}
        m["mu"] = {int(k): float(x) for k, x in bn.groupby("shards").mu_auroc.mean().items()}
        it = d[d.variant == "it"].sort_values("requested").groupby(["shards", "seed"]).asr
        if len(it):  # IT seed by seed (the mean hides a seed fitted before the requests)
            on = switched_on(it.first(), it.last())
            m["it_switched"] = {int(k): int(x) for k, x in on.groupby("shards").sum().items()}
        out[int(e)] = m
    # the headline given per seed: BN's final ASR and MU AUROC at the fewest shards
    return {"by_epochs": out, "seeds": len(seeds),
            "bn asr_after": {f"{e} epochs": n["bn"]["asr_after"] for e, n in out.items()},
            "mu_auroc": {f"{e} epochs": next(iter(n["mu"].values())) for e, n in out.items()}}


def _epochs_describe(m: dict) -> str:
    return f"{m['seeds']} seed{'s' * (m['seeds'] != 1)} at both: " + "; ".join(
        f"{e} epochs: BN ASR {pct(n['bn']['asr_before'])} -> {pct(n['bn']['asr_after'])}"
        + (f", IT {pct(n['it']['asr_before'])} -> {pct(n['it']['asr_after'])} (switched on"
           " in " + ", ".join(f"S={k}: {x}" for k, x in n["it_switched"].items())
           + f" of {m['seeds']})" if "it" in n else "")
        + ", BN final ASR " + ", ".join(f"S={k}: {pct(x)}" for k, x in n["final_asr"].items())
        + ", MU AUROC " + ", ".join(f"S={k}: {x:.3f}" for k, x in n["mu"].items())
        for e, n in m["by_epochs"].items())


def _baeraser_grid(t: pd.DataFrame) -> dict | None:
    if "setting" not in t or "asr_after" not in t:
        return None
    g = t.groupby("setting")[["asr_before", "asr_after", "clean_acc_before",
                              "clean_acc_after"]].mean()
    g["reduction"] = 1 - g.asr_after / g.asr_before.clip(lower=1e-9)
    g["drop"] = g.clean_acc_before - g.clean_acc_after
    kept = g[g["drop"] <= BAERASER_MAX_ACC_DROP]
    best = (kept if len(kept) else g).reduction.idxmax()
    return {"best": best, "reduction": float(g.reduction[best]), "drop": float(g["drop"][best]),
            "paper_setting": float(g.reduction.get("paper", float("nan")))}


AMNESIAC_MAX_ACC_DROP = 0.05  # clean accuracy an Amnesiac setting may cost
BAERASER_MAX_ACC_DROP = 0.02  # ... and a BAERASER setting, to count as keeping it


def _amnesiac_grid(t: pd.DataFrame) -> dict | None:
    if "setting" not in t or "asr" not in t:
        return None
    asr = t.groupby(["setting", "requested"]).asr.mean().unstack()
    acc = t.groupby(["setting", "requested"]).clean_acc.mean().unstack()
    rise, drop = asr.iloc[:, -1] - asr.iloc[:, 0], acc.iloc[:, 0] - acc.iloc[:, -1]
    knobs = {k: AMNESIAC_GRID.get(k, {}) for k in rise.index}
    # scale 0 (fine-tuning alone) is the control, never the best setting
    control = pd.Series({k: v.get("scale") == 0 for k, v in knobs.items()})[rise.index]
    rise, drop, controls = rise[~control], drop[~control], asr.iloc[:, -1][control]
    kept = rise[drop <= AMNESIAC_MAX_ACC_DROP]  # a wrecked model switches nothing on
    best = kept.idxmax() if len(kept) else None
    same = next((k for k in controls.index if best and knobs[k].get("finetune_epochs")
                 == knobs[best].get("finetune_epochs")), None)
    return {"best": best, "rise": float(kept.max()) if len(kept) else 0.0,
            "asr_after": float(asr.iloc[:, -1][best]) if best else float("nan"),
            "control_asr": float(controls[same]) if same in controls else float("nan"),
            "broken": int((drop > AMNESIAC_MAX_ACC_DROP).sum()), "settings": len(rise)}


def _fidelity(name, table, statement, paper, measure, holds, describe, thresholds,
              asserted_at=(), independent=False, decide=None) -> Claim:
    """A notebook 06 claim (its thresholds, where it has any, are for its README verdict)."""
    return Claim(name, "06_fidelity", statement, paper, measure, holds, describe,
                 thresholds, asserted_at, table_name=table, independent=independent,
                 decide=decide)


def _dormant_rows(t: pd.DataFrame, th) -> list:
    if "part" not in t or "asr_faint" not in t:
        return []
    d = t[(t.part == "attack")]
    d = d[d.shards == d.shards.min()]
    if d.empty:
        return []
    bright, after = ends(d)
    faint = ends(d, "asr_faint")[0]
    gap = vd.paired(bright, faint)
    return [("", f"S={int(d.shards.min())}, before the requests: ASR "
             f"{rate(bright.values())} under the bright (test) patch, "
             f"{rate(faint.values())} under the poison's faint patch; after: "
             f"{rate(after.values())} (bright)", vd.against(gap, th["min_faint_gap"]))]


def _nc_scan_rows(t: pd.DataFrame, th) -> list:
    if "part" not in t:
        return []
    nc = t[t.part == "neural_cleanse"]
    bau, clean = nc[nc.model == "bau_before_requests"], nc[nc.model == "clean"]
    if bau.empty or clean.empty:
        return []
    return [("", f"flags the BAU model's target before any request in "
             f"{vd.count(bau.flags_target.astype(str) == 'True')} runs; flags a clean model "
             f"in {vd.count(clean.flagged_labels > 0)}", "reported")]


# A continuous change counts in the epochs row only when its paired interval lies wholly
# beyond these: a smaller shift moves no conclusion (the switch-on rule's bars are 20% and
# 80% ASR; the detection bars 0.60 and 0.65 AUROC), however sure its sign.
MATERIAL = {"min_asr_change": 0.05, "min_auroc_change": 0.02}


def _epochs_rows(t: pd.DataFrame, th) -> list:
    """20 against 100 epochs, paired by seed: each yes/no outcome (switched on, per
    variant and shard count) by its per-run counts, BN's final ASR and MU's AUROC by the
    interval of their paired differences, counted only beyond the claim's
    ``min_asr_change`` and ``min_auroc_change``."""
    if "epochs" not in t or t.epochs.nunique() < 2:
        return []
    (e1, a), (e2, b) = list(t.groupby("epochs"))[0], list(t.groupby("epochs"))[-1]
    changed, counts = [], []
    for variant in ("bn", "it"):
        for k in sorted(t[t.variant == variant].shards.unique()):
            cell = [d[(d.variant == variant) & (d.shards == k)] for d in (a, b)]
            if any(c.empty for c in cell):
                continue
            moved, text = vd.count_change(*map(switches, cell))
            counts.append(f"{variant.upper()} S={k} {text.split(' (')[0]}")
            if moved:
                changed.append(f"{variant.upper()} switches on at S={k} ({text})")
            if variant == "bn":
                d = vd.paired(ends(cell[0])[1], ends(cell[1])[1])
                if vd.direction(d, th["min_asr_change"]):
                    changed.append(f"BN final ASR at S={k} ({d.text(pts)} points)")
    if "mu_auroc" in t:
        mu = [d[(d.variant == "bn") & (d.shards == d.shards.min())].groupby("seed")
              .mu_auroc.mean().dropna().to_dict() for d in (a, b)]
        d = vd.paired(*mu)
        if d is not None and vd.direction(d, th["min_auroc_change"]):
            changed.append(f"MU AUROC at one model ({d.text('+.3f')})")
    n = t.seed.nunique()
    verdict = (f"changes (ASR by {th['min_asr_change']:.0%} or more, AUROC by "
               f"{th['min_auroc_change']:.2f}): " + "; ".join(changed)) if changed else (
        f"no change shown at n = {n}")
    return [("", f"{e1} -> {e2} epochs, switched on: " + "; ".join(counts), verdict)]


def _it_grid_rows(t: pd.DataFrame, th) -> list:
    if "switched_on" not in t:
        return []
    runs = t.groupby(["setting", "seed"]).switched_on.first().astype(bool)
    return [(str(s), f"switches on in {vd.count(r)} runs", "reported")
            for s, r in runs.groupby("setting")]


def _baeraser_grid_rows(t: pd.DataFrame, th) -> list:
    if "setting" not in t or "asr_after" not in t:
        return []
    per = t.groupby(["seed", "setting"])[["asr_before", "asr_after", "clean_acc_before",
                                          "clean_acc_after"]].mean()
    red = (1 - per.asr_after / per.asr_before.clip(lower=1e-9)).unstack()
    kept = ((per.clean_acc_before - per.clean_acc_after) <= th["max_acc_drop"]).unstack()
    chosen = vd.leave_one_out(red, kept)
    held = vd.spread([red.loc[s, c] for s, c in chosen.items()], (None, 1.0))
    word = vd.against(held, th["paper_asr_reduction"]).replace(
        "differs", f"weaker than the paper's {th['paper_asr_reduction']:.0%}")
    text = (f"setting chosen on the other seeds ({', '.join(sorted(set(chosen.values())))}): "
            f"ASR {held.text(pct)} lower")
    if "paper" in red:
        text += f"; the paper's setting {vd.spread(red['paper'], (None, 1.0)).text(pct)} lower"
    return [("", text, word)]


def _amnesiac_grid_rows(t: pd.DataFrame, th) -> list:
    """Each setting's final ASR minus its own control's on the same seed (fine-tuning as
    long with nothing subtracted; with no fine-tuning, the model before the requests), the
    setting chosen on the other seeds among those keeping clean accuracy."""
    if "setting" not in t or "asr" not in t:
        return []
    before, after = (t.sort_values("requested").groupby(["seed", "setting"])[c]
                     for c in ("asr", "clean_acc"))
    asr0, asr1 = before.first().unstack(), before.last().unstack()
    drop = (after.first() - after.last()).unstack()
    knobs = {s: AMNESIAC_GRID.get(s, {}) for s in asr1.columns}
    tried = [s for s, k in knobs.items() if k.get("scale")]
    rise = pd.DataFrame(index=asr1.index)
    for s in tried:
        ctrl = next((c for c, k in knobs.items() if k.get("scale") == 0
                     and k.get("finetune_epochs") == knobs[s].get("finetune_epochs")), None)
        rise[s] = asr1[s] - (asr1[ctrl] if ctrl else asr0[s])
    if rise.empty or not tried:
        return []
    chosen = vd.leave_one_out(rise, drop[tried] <= th["max_acc_drop"])
    held = vd.spread([rise.loc[s, c] for s, c in chosen.items()])
    way = vd.direction(held)
    word = "agrees" if way == 1 else "differs" if way == -1 else vd.undecided(held.n)
    return [("", f"setting chosen on the other seeds "
             f"({', '.join(sorted(set(chosen.values())))}): final ASR {held.text(pts)} points "
             "above its fine-tuning-only control", word + (" (n = 1)" if held.lo is None else ""))]


CLAIMS = (
    _fidelity("fidelity_dormant", "06_fidelity-dormant",
              "06: before the requests the backdoor answers the poison's own faint patch",
              "BAU: the model looks benign before the requests", _dormant,
              lambda m, t: m["asr_faint_before"] >= m["asr_before"] + t["min_faint_gap"],
              lambda m: (f"S={m['shards']}: ASR before the requests {pct(m['asr_before'])} "
                         f"(bright patch), {pct(m['asr_faint_before'])} (faint patch); "
                         f"after {pct(m['asr_after'])}"),
              same(dict(min_faint_gap=0.2)), ("default",), decide=_dormant_rows),
    _fidelity("fidelity_nc_scan", "06_fidelity-dormant",
              "06: a defender who scans once before the requests",
              "BAU: the backdoor hides from model-level detection until activated", _nc_scan,
              lambda m, t: True,
              lambda m: (f"Neural Cleanse flags the target of the BAU model before any "
                         f"request in {pct(m['target_flagged'])} of {m['seeds']} seeds; "
                         f"flags a clean model of the same seed in "
                         f"{pct(m['clean_flagged'])}"),
              same({}), decide=_nc_scan_rows),
    Claim("fidelity_epochs", "06_fidelity", "06: 20 or 100 training epochs",
          "the authors' scripts: 20 by default, 100 for the detection experiments", _epochs,
          lambda m, t: True, _epochs_describe,
          {p: {**SWITCH[p], **{f"mu_{k}": v for k, v in AUROC["mu"][p].items()},
               **MATERIAL} for p in ALL_PROFILES},
          (), table_name="06_fidelity-epochs", decide=_epochs_rows),
    _fidelity("fidelity_it", "06_fidelity-it",
              "06: how often the input-targeted attack switches on",
              "switched on: ASR <= 20% before, >= 80% after", switch_rate,
              lambda m, t: True,
              lambda m: "; ".join(f"{k}: {pct(v)} of {m['seeds'][k]} seed"
                                  + "s" * (m["seeds"][k] != 1) for k, v in m["rate"].items()),
              same({}), independent=True, decide=_it_grid_rows),
    _fidelity("fidelity_baeraser", "06_fidelity-baeraser",
              "06: BAERASER's knobs on the classical BadNets model",
              "ASR lowered by 99% on average (its abstract; the clean-accuracy bound is this "
              "package's)", _baeraser_grid,
              lambda m, t: m["reduction"] >= t["paper_asr_reduction"],
              lambda m: (f"best within 2 points of accuracy: {m['best']}, ASR "
                         f"{pct(m['reduction'])} lower ({points(0, -m['drop'])}); "
                         f"the paper's setting {pct(m['paper_setting'])} lower"),
              same(dict(paper_asr_reduction=0.99, max_acc_drop=BAERASER_MAX_ACC_DROP)),
              decide=_baeraser_grid_rows),
    _fidelity("fidelity_amnesiac", "06_fidelity-amnesiac",
              "06: whether Amnesiac unlearning switches the backdoor on",
              "the backdoor appears under approximate unlearning", _amnesiac_grid,
              lambda m, t: m["rise"] > t["min_asr_rise"],
              lambda m: ((f"largest ASR rise that keeps clean accuracy within 5 points: "
                          f"{points(0, m['rise'])} ({m['best']}, ASR {pct(m['asr_after'])} "
                          "after); " if m["best"] else "no setting keeps clean accuracy "
                          "within 5 points; ")
                         + f"{m['broken']} of {m['settings']} settings cost more accuracy"
                         + ("" if m["control_asr"] != m["control_asr"] else
                            f"; fine-tuning alone as long (scale 0): ASR "
                            f"{pct(m['control_asr'])} after")),
              same(dict(min_asr_rise=0.3, max_acc_drop=AMNESIAC_MAX_ACC_DROP)),
              decide=_amnesiac_grid_rows),
)


# ------------------------------------------------------------ claims: the headline
# The papers' main claims at both epoch counts, on this notebook's epochs section.

def _per_epochs(decide):
    """``decide`` on each epoch count's rows of notebook 06's epochs section."""
    def rows(t: pd.DataFrame, th) -> list:
        if "epochs" not in t:
            return []
        return [(f"{e} epochs" + (f", {s}" if s else ""), m, v)
                for e, d in t.groupby("epochs") for s, m, v in decide(d, th)]
    return rows


def with_faint(epochs: pd.DataFrame, dormant: pd.DataFrame, at: int) -> pd.DataFrame:
    """The epochs section with ``asr_faint`` (the poison's own faint patch) on the BN rows
    whose model the dormant section (trained ``at`` epochs, the run's ``epochs``) measured
    too: same epoch count, seed, shard count, requests,
    precision and device, and the same bright-patch ASR and clean accuracy (the same
    recipe trained once, so the same model; rows computed on another processor that
    differ are left without it). Other rows get no value."""
    keys = [c for c in ("seed", "shards", "requested", "precision", "device")
            if c in epochs and c in dormant]
    if epochs.empty or "asr_faint" not in dormant or "part" not in dormant:
        return epochs
    attack = dormant[dormant.part == "attack"].astype({"shards": int, "requested": int})
    faint = attack[[*keys, "asr", "clean_acc", "asr_faint"]].rename(
        columns={"asr": "_asr", "clean_acc": "_acc"}).drop_duplicates(keys)
    out = epochs.drop(columns=["asr_faint"], errors="ignore").reset_index(drop=True)
    merged = out.astype({"shards": int, "requested": int}).merge(faint, on=keys, how="left")
    same_model = ((merged.variant == "bn") & (merged.epochs == at)
                  & ((merged.asr - merged._asr).abs() < 1e-6)
                  & ((merged.clean_acc - merged._acc).abs() < 1e-6))
    out["asr_faint"] = merged.asr_faint.where(same_model).to_numpy()
    return out


def _headline_bn_rows(t: pd.DataFrame, th) -> list:
    """The BN headline's rows, with the faint patch before the requests where the dormant
    section measured the same models (:func:`with_faint`)."""
    rows = switch_rows("bn")(t, th)
    d = t[(t.variant == "bn") & (t.shards == t.shards.min())] if "variant" in t else t
    if not rows or "asr_faint" not in d or d.asr_faint.isna().all():
        return rows
    faint = ends(d[d.asr_faint.notna()], "asr_faint")[0]
    (setting, text, verdict), = rows
    return [(setting, f"{text}; under the poison's own faint patch {rate(faint.values())} "
             f"before (n={len(faint)}): hidden from the test patch, not dormant", verdict)]


def _headline(name: str, statement: str, paper: str, decide, thresholds) -> Claim:
    """A paper claim at both epoch settings, from notebook 06's epochs section (every
    seed at 20 and at 100 epochs): reported, one README row per epoch count."""
    return Claim(name, "06_fidelity", statement, paper,
                 lambda t: {"seeds": int(t.seed.nunique())} if "epochs" in t and len(t)
                 else None, lambda m, t: True, lambda m: f"{m['seeds']} seeds",
                 thresholds, (), table_name="06_fidelity-epochs", independent=True,
                 decide=_per_epochs(decide))


HEADLINE = (
    _headline("headline_bn", "BAU BadNets-based, one model: unlearning the mitigation "
              "samples switches the backdoor on", "benign before the requests, high ASR "
              "after (exact unlearning)", _headline_bn_rows, same({})),
    _headline("headline_it", "BAU input-targeted, one model: unlearning the mitigation "
              "samples switches the backdoor on", "the target image misclassified after "
              "the requests only", switch_rows("it"), same({})),
    _headline("headline_sharding", "BAU: sharding (SISA) makes the attack harder",
              "lower ASR after all requests with more shards", sharding_rows, same({})),
    _headline("headline_mu", "BAU: MU detects mitigation samples; sharding weakens it",
              "high AUROC at few shards, falling with more shards", detect_rows("mu"),
              AUROC["mu"]),
    _headline("headline_sms", "BAU: SMS detects mitigation samples; sharding weakens it",
              "high AUROC at few shards, falling with more shards", detect_rows("sms"),
              AUROC["sms"]),
)
