"""The papers' claims, each written once: how it is measured, its thresholds per profile.

A notebook asserts its claims with ``claims.check(name, table, profile)``: the claim's
numbers are measured from the notebook's tidy table, printed beside the thresholds, and an
``AssertionError`` with the measured numbers is raised when the claim fails at a profile
where it is asserted (``Claim.asserted_at``; elsewhere it is reported only). The README's
results table (:mod:`bdunlearn.summary`) is built from the same claims over the saved CSVs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pandas as pd

from . import verdicts as vd
from .claim import ALL_PROFILES, Claim, ends, pct, points, pts, rate, same, switches
from .config import RunConfig
from .experiment import REQUEST_BATCH
from .studies import attack, detection, erasure, overhead, trajectory
from .studies.attack import SWITCH, switch_measure, switch_rows
from .studies.detection import AUROC, detect_rows
from .studies.trajectory import sharding_rows
from .verdicts import SWITCH_AFTER, SWITCH_BEFORE, switch_rate, switched_on

# ------------------------------------------------------------ 06: fidelity

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
    from .studies.fidelity import AMNESIAC_GRID  # each setting's knobs

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
              asserted_at=(), independent=False) -> Claim:
    """A notebook 06 claim (its thresholds, where it has any, are for its README verdict)."""
    return Claim(name, "06_fidelity", statement, paper, measure, holds, describe,
                 thresholds, asserted_at, table_name=table, independent=independent)


FIDELITY = (
    _fidelity("fidelity_dormant", "06_fidelity-dormant",
              "06: before the requests the backdoor answers the poison's own faint patch",
              "BAU: the model looks benign before the requests", _dormant,
              lambda m, t: m["asr_faint_before"] >= m["asr_before"] + t["min_faint_gap"],
              lambda m: (f"S={m['shards']}: ASR before the requests {pct(m['asr_before'])} "
                         f"(bright patch), {pct(m['asr_faint_before'])} (faint patch); "
                         f"after {pct(m['asr_after'])}"),
              same(dict(min_faint_gap=0.2)), ("default",)),
    _fidelity("fidelity_nc_scan", "06_fidelity-dormant",
              "06: a defender who scans once before the requests",
              "BAU: the backdoor hides from model-level detection until activated", _nc_scan,
              lambda m, t: True,
              lambda m: (f"Neural Cleanse flags the target of the BAU model before any "
                         f"request in {pct(m['target_flagged'])} of {m['seeds']} seeds; "
                         f"flags a clean model of the same seed in "
                         f"{pct(m['clean_flagged'])}"),
              same({})),
    Claim("fidelity_epochs", "06_fidelity", "06: 20 or 100 training epochs",
          "the authors' scripts: 20 by default, 100 for the detection experiments", _epochs,
          lambda m, t: True, _epochs_describe,
          {p: {**SWITCH[p], **{f"mu_{k}": v for k, v in AUROC["mu"][p].items()}}
           for p in ALL_PROFILES}, (), table_name="06_fidelity-epochs"),
    _fidelity("fidelity_it", "06_fidelity-it",
              "06: how often the input-targeted attack switches on",
              "switched on: ASR <= 20% before, >= 80% after", switch_rate,
              lambda m, t: True,
              lambda m: "; ".join(f"{k}: {pct(v)} of {m['seeds'][k]} seed"
                                  + "s" * (m["seeds"][k] != 1) for k, v in m["rate"].items()),
              same({}), independent=True),
    _fidelity("fidelity_baeraser", "06_fidelity-baeraser",
              "06: BAERASER's knobs on the classical BadNets model",
              "ASR lowered by 99% on average, clean accuracy kept", _baeraser_grid,
              lambda m, t: m["reduction"] >= t["paper_asr_reduction"],
              lambda m: (f"best within 2 points of accuracy: {m['best']}, ASR "
                         f"{pct(m['reduction'])} lower ({points(0, -m['drop'])}); "
                         f"the paper's setting {pct(m['paper_setting'])} lower"),
              same(dict(paper_asr_reduction=0.99, max_acc_drop=BAERASER_MAX_ACC_DROP))),
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
              same(dict(min_asr_rise=0.3, max_acc_drop=AMNESIAC_MAX_ACC_DROP))),
)


# ------------------------------------------------------------ 07: request-detection benchmark

def _families(t: pd.DataFrame) -> dict | None:
    """Per shard count, per family: mean ASR before and after its requests are unlearned
    with no filter, and in how many seeds the run itself switched on (the rule of
    :func:`switched_on` applies to one run, never to a mean over seeds)."""
    if "asr_filtered" not in t:
        return None
    out = {}
    for s, d in t.drop_duplicates(["variant", "shards", "seed"]).groupby("shards"):
        g = d.groupby("variant")[["asr_before", "asr_after"]].mean()
        on = switched_on(d.asr_before, d.asr_after).groupby(d.variant)
        out[int(s)] = {"asr_before": g.asr_before.to_dict(),
                       "asr_after": g.asr_after.to_dict(),
                       "switched": {v: int(k) for v, k in on.sum().items()},
                       "seeds": {v: int(n) for v, n in on.size().items()}}
    return {"by_shards": out}


def operating_point(t: pd.DataFrame) -> str:
    """The false-positive rate (as its column suffix, ``"0.05"``) the stored filters of a
    notebook 07 table were set for: the one whose random-population threshold each row's
    ``filter_threshold`` is."""
    for c in t.columns:
        if (c.startswith("threshold@") and c.endswith("_random")
                and (t[c] == t.filter_threshold).all()):
            return c[len("threshold@"):-len("_random")]
    raise ValueError("no stored operating point matches the filters' thresholds")


def _best_detectors(t: pd.DataFrame) -> dict | None:
    """Per shard count, per family: the detector with the highest mean TPR on random
    benign requests at the filters' operating point (a tie goes to the lower final ASR
    behind the filter, then the name; the detectors it ties with are listed), and the
    number of seeds behind it."""
    if "asr_filtered" not in t:
        return None
    fpr = operating_point(t)
    # what the winner costs, where stored: the false-positive rate its threshold reached
    # on held-out random benign requests, and the hard benign requests it refuses
    costs = {k: (c, agg) for k, c, agg in (("fpr_reached", f"fpr@{fpr}_random", "mean"),
                                           ("hard_refused", "benign_refused_hard", "mean"),
                                           ("benign_requests", "benign_requests", "max"))
             if c in t}
    out = {}
    for s, d in t.groupby("shards"):
        g = d.groupby(["variant", "detector"]).agg(
            tpr=(f"tpr@{fpr}_random", "mean"), asr_filtered=("asr_filtered", "mean"),
            seeds=("seed", "nunique"), **costs).reset_index()
        m = {k: {} for k in ("best", "tied", "tpr", "asr_filtered", "seeds", *costs)}
        for v, rows in g.groupby("variant"):
            rows = rows.sort_values(["tpr", "asr_filtered", "detector"],
                                    ascending=[False, True, True])
            top = rows.iloc[0]
            m["best"][v], m["tpr"][v] = top.detector, float(top.tpr)
            m["asr_filtered"][v], m["seeds"][v] = float(top.asr_filtered), int(top.seeds)
            m["tied"][v] = rows.detector[rows.tpr == top.tpr].tolist()[1:]
            for k in costs:
                m[k][v] = float(top[k])
        out[int(s)] = m
    return {"by_shards": out, "fpr": float(fpr)}


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def _describe_families(m: dict) -> str:
    return " | ".join(f"S={s}: " + "; ".join(
        f"{v} {pct(b)} -> {pct(n['asr_after'][v])} (on in {n['switched'][v]} of "
        f"{_seeds(n['seeds'][v])})" for v, b in n["asr_before"].items())
        for s, n in m["by_shards"].items())


def _describe_best(m: dict) -> str:
    def costs(n: dict, v: str) -> str:
        out = ""
        if "fpr_reached" in n:
            out += f", FPR reached {pct(n['fpr_reached'][v])}"
        if "hard_refused" in n:
            out += (f", refuses {n['hard_refused'][v]:.0f} of "
                    f"{n['benign_requests'][v]:.0f} hard benign requests")
        return out

    return f"at {pct(m['fpr'])} FPR: " + " | ".join(f"S={s}: " + "; ".join(
        f"{v}: {d} (TPR {pct(n['tpr'][v])}{costs(n, v)}, final ASR behind it "
        f"{pct(n['asr_filtered'][v])}, {_seeds(n['seeds'][v])}"
        + (f"; tied with {', '.join(n['tied'][v])}" if n["tied"][v] else "") + ")"
        for v, d in n["best"].items()) for s, n in m["by_shards"].items())


def _benchmark(name, statement, paper, measure, describe) -> Claim:
    # every number says its own seed count, so a shard count stored for fewer seeds does
    # not narrow the others to its seeds (independent: see whole_seeds)
    return Claim(name, "07_request_detection", statement, paper, measure, lambda m, t: True,
                 describe, same({}), (), in_readme=False, independent=True)


BENCHMARK = (
    _benchmark("benchmark_switch_on", "07: which attack families switch on",
               f"switched on: ASR <= {SWITCH_BEFORE:.0%} before the camouflage is unlearned, "
               f">= {SWITCH_AFTER:.0%} after", _families, _describe_families),
    _benchmark("benchmark_best_detector", "07: the detector that catches each attack best",
               "highest TPR at the filters' false-positive rate on random benign requests "
               f"(the batch test's TPR counts batches of {REQUEST_BATCH} requests, the "
               "others' single requests)",
               _best_detectors, _describe_best),
)


def _per_epochs(decide):
    """``decide`` on each epoch count's rows of notebook 06's epochs section."""
    def rows(t: pd.DataFrame, th) -> list:
        if "epochs" not in t:
            return []
        return [(f"{e} epochs" + (f", {s}" if s else ""), m, v)
                for e, d in t.groupby("epochs") for s, m, v in decide(d, th)]
    return rows


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


def _epochs_rows(t: pd.DataFrame, th) -> list:
    """20 against 100 epochs, paired by seed: each yes/no outcome (switched on, per
    variant and shard count) by its per-run counts, BN's final ASR and MU's AUROC by the
    interval of their paired differences."""
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
                if vd.direction(d):
                    changed.append(f"BN final ASR at S={k} ({d.text(pts)} points)")
    if "mu_auroc" in t:
        mu = [d[(d.variant == "bn") & (d.shards == d.shards.min())].groupby("seed")
              .mu_auroc.mean().dropna().to_dict() for d in (a, b)]
        d = vd.paired(*mu)
        if d is not None and vd.direction(d):
            changed.append(f"MU AUROC at one model ({d.text('+.3f')})")
    n = t.seed.nunique()
    verdict = ("changes: " + "; ".join(changed)) if changed else (
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
    from .studies.fidelity import AMNESIAC_GRID

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
              "after (exact unlearning)", switch_rows("bn"), same({})),
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

CLAIMS: dict[str, Claim] = {c.name: c for c in (
    *HEADLINE,
    *attack.CLAIMS,
    *trajectory.CLAIMS,
    *detection.CLAIMS,
    *overhead.CLAIMS,
    *erasure.CLAIMS,
    *FIDELITY,
    *BENCHMARK,
)}

# The README's rows of each claim, by the rules of bdunlearn.verdicts.
_DECIDE = {
    "fidelity_dormant": _dormant_rows, "fidelity_nc_scan": _nc_scan_rows,
    "fidelity_epochs": _epochs_rows, "fidelity_it": _it_grid_rows,
    "fidelity_baeraser": _baeraser_grid_rows, "fidelity_amnesiac": _amnesiac_grid_rows,
}
CLAIMS = {k: replace(c, decide=c.decide or _DECIDE.get(k)) for k, c in CLAIMS.items()}


def get(name: str) -> Claim:
    """The claim called ``name``; an unknown name fails naming the known ones."""
    if name not in CLAIMS:
        raise ValueError(f"unknown claim {name!r}; choose one of {', '.join(CLAIMS)}")
    return CLAIMS[name]


def thresholds(name: str, profile: str) -> dict:
    """Claim ``name``'s thresholds at ``profile``."""
    if profile not in ALL_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(ALL_PROFILES)}")
    return dict(get(name).thresholds[profile])


def check(name: str, table: pd.DataFrame, run: RunConfig | str) -> dict:
    """Measure claim ``name`` on ``table``, print it, and assert it where it is asserted.

    ``run`` is the notebook's :class:`~bdunlearn.config.RunConfig` (or a profile name).
    The claim is asserted at the profiles in its ``asserted_at``, for a run at its
    profile's own scale; a run with overrides (``RunConfig.overrides``) reports it, since
    the thresholds hold for the profile's settings. Returns the measured numbers. Raises
    ``AssertionError`` naming the measured numbers and the thresholds when an asserted
    claim fails, or when the table holds no rows for it.
    """
    profile = run if isinstance(run, str) else run.profile
    claim, t = get(name), thresholds(name, profile)
    overridden = () if isinstance(run, str) else run.overrides
    asserted = profile in claim.asserted_at and not overridden
    if not isinstance(run, str):
        from .studies import own_group

        others = len(table)
        table = own_group(table, run)  # never averaged with other precisions or devices
        others -= len(table)
        if others:
            print(f"{name}: {others} stored rows of another precision or device are shown "
                  "apart (results CSV), not pooled here")
    if not claim.independent:  # the seeds the README row rests on
        table = whole_seeds(claim, table)
    numbers = None if table.empty else claim.measure(table)
    if numbers is None:
        rendering = not isinstance(run, str) and not run.compute  # only stored runs shown
        assert not asserted or rendering, f"claim {name}: the table has no rows to measure it"
        print(f"{name}: no rows to measure")
        return {}
    ok = claim.holds(numbers, t)
    if asserted:
        status = "holds" if ok else "FAILS"
    elif overridden:
        status = "reported, not asserted: the run overrides " + ", ".join(overridden)
    else:  # its verdict, by the rules of bdunlearn.verdicts, is in the lines below
        status = "reported"
    seeds = table.seed.nunique() if "seed" in table else 1
    head = f"{name} ({status}, {seeds} seed{'s' * (seeds != 1)})"
    bars = f"asserted at {profile}: {t}" if asserted else ""
    if claim.decide is None:
        print(f"{head}: {claim.describe(numbers)}" + (f"; {bars}" if bars else ""))
    else:  # one line per setting: what was measured -> its verdict
        print(head + (f"; {bars}" if bars else ""))
        one = table if "seed" in table else table.assign(seed=0)
        for setting, measured, verdict in claim.decide(one, t):
            print(f"    {setting + ': ' if setting else ''}{measured} -> {verdict}")
    assert ok or not asserted, (f"claim {name} fails at profile {profile}: "
                                f"{claim.describe(numbers)}; thresholds {t}")
    return numbers


def readme_rows(tables: Mapping[str, pd.DataFrame], profile: str = "default"
                ) -> list[tuple[str, str, str, str]]:
    """``(claim, paper, measured here, verdict)`` for every README claim whose table is in
    ``tables`` (keyed by CSV stem), one row per setting the claim reports and per
    precision/device group; measured and judged by the claim's ``decide`` (the rules of
    :mod:`bdunlearn.verdicts`: k of n runs with a Wilson interval for a yes/no outcome per
    run, mean [95% t-interval] over seeds for a continuous one)."""
    from .store import provenance_groups

    rows = []
    for claim in CLAIMS.values():
        if not claim.in_readme or claim.decide is None or claim.table not in tables:
            continue
        groups = provenance_groups(tables[claim.table])
        for label, table in groups:
            if table.empty:
                continue
            if "seed" not in table:  # one run
                table = table.assign(seed=0)
            where = f" [{label}]" if label and len(groups) > 1 else ""
            for setting, measured, verdict in claim.decide(table, claim.thresholds[profile]):
                name = (claim.statement + (f" ({setting})" if setting else "") + where
                        + f" [{claim.notebook[:2]}](docs/notebooks/{claim.notebook}.ipynb)")
                rows.append((name, claim.paper, measured, verdict))
    return rows


def leaves(numbers: dict, prefix: str = "") -> dict[str, float]:
    """The scalar numbers of a claim's measurement, nested ones named ``"auroc S=5"``."""
    out = {}
    for k, v in numbers.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k} S=" if k in ("auroc", "final_asr")
                              else f"{prefix}{k} "))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def whole_seeds(claim: Claim, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the seeds whose own rows give every number the whole table gives for
    ``claim`` (a seed half stored, such as one shard count of three, is left out, so the
    mean over rows and the mean over seeds rest on the same seeds); all rows when no seed
    is whole or the table has no seed column. Not used for a claim whose numbers are
    ``independent`` (each on its own rows, with its own seed count)."""
    if table.empty or "seed" not in table:
        return table
    every = set(leaves(claim.measure(table) or {}))
    whole = [s for s in table.seed.unique()
             if every <= set(leaves(claim.measure(table[table.seed == s]) or {}))]
    return table[table.seed.isin(whole)] if whole else table


def threshold_values() -> set[float]:
    """Every threshold number any claim holds at any profile (the notebooks' prose may
    name only these)."""
    return {float(v) for c in CLAIMS.values() for t in c.thresholds.values()
            for v in t.values()}
