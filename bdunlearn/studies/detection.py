"""Notebook 04's runs: MU and SMS scored on the attack's models per seed, variant and
shard count (``04_detection``, the scores kept as a side table for the figures), and per
seed the BN attack's trajectory with and without an MU request filter
(``04_detection-filter``)."""

from __future__ import annotations

import time

import pandas as pd

from .. import detect
from .. import experiment as ex
from .. import verdicts as vd
from ..claim import ALL_PROFILES, Claim, ends, pct, pts, rate, same
from ..tables import over_seeds
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "shards", "poison_num", "mitigation_num", "alpha", "epochs",
              "train_subset", "request_steps", "target_fpr")
VERSION = 1
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num", "request_steps", "target_fpr")
TABLE = "04_detection"
FILTER = "04_detection-filter"
COLUMNS = ["dataset", "variant", "seed", "shards", "detector", "auroc", "tpr", "fpr",
           "threshold"]


def runs(cfg) -> list[Run]:
    out = []
    for seed in cfg.seeds:
        out += [Run(TABLE, seed, (("variant", v), ("shards", s)))
                for v in ("bn", "it") for s in ex.detection_shards(cfg, v)]
        out.append(Run(FILTER, seed))
    return out


def _counts(recipe, cfg) -> list[int]:
    return ex.schedule(len(recipe.attack().ids("mitigation")), cfg.request_steps)


def needs(run: Run, ctx) -> list[Need]:
    if run.table == TABLE:
        v, s = run["variant"], run["shards"]
        return [Need(f"04 {v} S={s}", ctx.recipe("attack", run.seed, s, v))]
    r = ctx.recipe("attack", run.seed, 1, "bn")
    order, counts = r.attack().request_order(), _counts(r, ctx.cfg)
    return [Need("04 bn S=1 trajectory", r, tuple(tuple(order[:k]) for k in counts)),
            Need("04 bn S=1 MU filter", r, chain="filter", counts=tuple(counts))]


def compute(run: Run, ctx):
    return _detection(run, ctx) if run.table == TABLE else _filter(run, ctx)


def _detection(run: Run, ctx) -> tuple[pd.DataFrame, dict]:
    """AUROC (mean of 5 draws of negatives, as the authors evaluate) and the operating
    point at ``cfg.target_fpr`` of every detector defined at this shard count."""
    (need,) = needs(run, ctx)
    atk, svc = need.recipe.attack(), need.recipe.build().fit()
    rows, scores = [], []
    for det in detect.DETECTORS:
        if det == "sms" and svc.shards == 1:
            continue  # undefined for a single model
        r = detect.evaluate(svc, atk.ids("mitigation"), atk.detection_negatives(), det,
                            draws=5, seed=run.seed, fpr=ctx.cfg.target_fpr)
        for kind, values in (("mitigation", r.pop("scores_pos")), ("clean", r.pop("scores_neg"))):
            scores.append(pd.DataFrame({"variant": atk.variant, "seed": run.seed,
                                        "shards": svc.shards, "detector": det, "kind": kind,
                                        "score": pd.Series(values).round(5)}))
        rows.append({"dataset": ctx.ds.name, "variant": atk.variant, "seed": run.seed,
                     "shards": svc.shards, **r})
    return pd.DataFrame(rows), {"scores": pd.concat(scores, ignore_index=True)}


def _filter(run: Run, ctx) -> pd.DataFrame:
    """Both trajectories (``unlearning`` ``"no filter"`` and ``"MU filter"``), with the
    filter's threshold and the cost of screening a request beside serving one."""
    plain_need, _ = needs(run, ctx)
    atk, cfg = plain_need.recipe.attack(), ctx.cfg
    counts = _counts(plain_need.recipe, cfg)
    plain = ex.trajectory(atk, plain_need.recipe.build(), counts, label="no filter")
    svc, guarded = ex.filtered_trajectory(atk, ctx.ds, cfg, counts, detector="mu",
                                          cache_dir=ctx.cache_dir)
    t0 = time.perf_counter()
    detect.scores(svc, atk.ids("mitigation"), "mu")
    screen = (time.perf_counter() - t0) / len(atk.ids("mitigation"))
    guarded = guarded.assign(threshold=svc.screen.threshold, refused_total=len(svc.refused),
                             screen_seconds_per_request=screen)
    return pd.concat([plain, guarded], ignore_index=True)


def curves(scores: pd.DataFrame) -> dict:
    """``{(variant, seed, shards, detector): (mitigation scores, clean scores)}`` from the
    stored side tables (for :func:`bdunlearn.plots.detection`)."""
    out = {}
    for (v, seed, s, det), d in scores.groupby(["variant", "seed", "shards", "detector"]):
        out[(v, int(seed), int(s), det)] = (d[d.kind == "mitigation"].score.to_numpy(),
                                            d[d.kind == "clean"].score.to_numpy())
    return out


def show(table: pd.DataFrame) -> pd.DataFrame:
    return over_seeds(table, ["variant", "detector", "shards"], ["auroc", "tpr", "fpr"])


def show_filter(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    return over_seeds(table, ["unlearning", "requested"], ["asr", "clean_acc", "refused"])


# ------------------------------------------------------------ claims: detection, the filter

def _auroc_measure(detector: str):
    def measure(t: pd.DataFrame) -> dict | None:
        d = t[(t.variant == "bn") & (t.detector == detector)].groupby("shards").auroc.mean()
        if d.empty:
            return None
        return {"auroc": {int(s): float(v) for s, v in d.items()},
                "fewest": float(d.iloc[0]), "most": float(d.iloc[-1])}
    return measure


def _auroc_holds(m: dict, t) -> bool:
    return m["fewest"] >= t["min_auroc"] and m["most"] <= m["fewest"] + t["max_gain_with_shards"]


AUROC = {det: {p: dict(min_auroc=low, max_gain_with_shards=0.02)
               for p, low in (("smoke", 0.6), ("default", default), ("paper", 0.6))}
         for det, default in (("mu", 0.65), ("sms", 0.60))}


def _detects(detector: str, asserted_at) -> Claim:
    return Claim(f"{detector}_detects", "04_detection",
                 f"BAU: {detector.upper()} detects mitigation samples; sharding weakens it",
                 "high AUROC at few shards, falling with more shards",
                 _auroc_measure(detector), _auroc_holds,
                 lambda m: "AUROC " + ", ".join(f"S={s}: {v:.3f}" for s, v in m["auroc"].items()),
                 AUROC[detector], asserted_at, decide=detect_rows(detector))


def _filter_measure(t: pd.DataFrame) -> dict | None:
    if t.empty or "unlearning" not in t or not {"no filter", "MU filter"} <= set(t.unlearning):
        return None
    last = t[t.requested == t.requested.max()].groupby("unlearning").asr.mean()
    refused = t[t.unlearning == "MU filter"].groupby("seed").refused.sum().mean()
    return {"asr_no_filter": float(last["no filter"]), "asr_filtered": float(last["MU filter"]),
            "refused": float(refused)}


def detect_rows(detector: str):
    """The README row: the AUROC at the fewest shards against its bar, and its paired
    change at the most."""
    def decide(t: pd.DataFrame, th) -> list:
        col = f"{detector}_auroc" if f"{detector}_auroc" in t else "auroc"
        d = t[t.variant == "bn"] if "variant" in t else t
        if "detector" in d:
            d = d[d.detector == detector]
        if col not in d:
            return []
        d = d[d[col].notna()]
        shards = sorted(k for k in d.shards.unique() if detector != "sms" or k > 1)
        if not shards:
            return []
        per = {k: d[d.shards == k].groupby("seed")[col].mean().to_dict() for k in shards}
        level = vd.spread(per[shards[0]].values(), (0.0, 1.0))
        word = vd.against(level, th["min_auroc"])
        text = f"AUROC at S={shards[0]}: {level.text()}"
        if len(shards) > 1:
            gain = vd.paired(per[shards[0]], per[shards[-1]])
            text += f"; S={shards[-1]} minus S={shards[0]}: {gain.text('+.3f')}"
            falls = vd.against(gain, th["max_gain_with_shards"], above=False)
            if falls.startswith("differs"):
                word = "differs: gains with shards"
            elif word.startswith("agrees") and not falls.startswith("agrees"):
                word = falls
        return [("", text, f"{word} (bar {th['min_auroc']:.2f}, from this package's "
                 "cross-check of the authors' code)")]
    return decide


def _filter_rows(t: pd.DataFrame, th) -> list:
    if t.empty or "unlearning" not in t or not {"no filter", "MU filter"} <= set(t.unlearning):
        return []
    none = ends(t[t.unlearning == "no filter"])[1]
    kept = ends(t[t.unlearning == "MU filter"])[1]
    diff = vd.paired(none, kept)
    refused = t[t.unlearning == "MU filter"].groupby("seed").refused.sum()
    way = vd.direction(diff)
    return [("", f"final ASR {rate(none.values())} without, {rate(kept.values())} with it "
             f"(paired {diff.text(pts)} points); {refused.mean():.0f} requests refused",
             "agrees" if way == -1 else "differs" if way == 1 else vd.undecided(diff.n))]


CLAIMS = (
    _detects("mu", ALL_PROFILES),
    _detects("sms", ("default",)),
    Claim("filter_lowers_asr", "04_detection",
          "BAU: an MU request filter keeps the ASR lower",
          "refusing flagged requests lowers the attack's success", _filter_measure,
          lambda m, t: m["asr_filtered"] < m["asr_no_filter"],
          lambda m: (f"final ASR {pct(m['asr_no_filter'])} without the filter, "
                     f"{pct(m['asr_filtered'])} with it ({m['refused']:.0f} requests refused)"),
          same({}),
          table_name="04_detection-filter", decide=_filter_rows),
)
