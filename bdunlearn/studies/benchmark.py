"""Notebook 07's runs: the request-detection benchmark. For each attack family
(:data:`bdunlearn.attack.FAMILIES`), shard count and seed (the first three), one run
fits the attack's service and, for every detector defined at that shard count
(:data:`bdunlearn.detect.BENCHMARK_DETECTORS`), scores the attacker's requests against
two benign populations and serves the whole request order behind a filter at the
threshold set on random benign requests (:func:`bdunlearn.experiment.screened_requests`).
One row per detector, with the attack's ASR before and after its requests unlearned
without a filter (whether the family switches on at all)."""

from __future__ import annotations

import pandas as pd

from .. import detect
from .. import experiment as ex
from ..attack import FAMILIES, FAMILY_TITLES
from ..store import GROUP
from . import COMMON, MEASURED, Need, Run

PARAMETERS = (*COMMON, "shards", "poison_num", "mitigation_num", "alpha", "epochs",
              "train_subset", "target_fpr")
VERSION = 2  # 2: k-NN ties broken, batch score centred per class, batch thresholds set on
#              2,000 batches, the batch filter's windows all of REQUEST_BATCH ids
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num", "target_fpr")
TABLE = "07_request_detection"
COLUMNS = ["dataset", "variant", "seed", "shards", "detector"]  # a row's identity first
SEEDS = 3  # the benchmark's seeds: the first three of the run's
POPULATIONS = ("random", "hard")


def catalogue() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The benchmark's attack families (with each builder's first docstring sentence) and
    detectors (with what each needs to see)."""
    from .. import attack

    def first_sentence(fn) -> str:
        return " ".join(fn.__doc__.split()).split(". ")[0] + "."

    fams = pd.DataFrame({"attack": [FAMILY_TITLES[v] for v in FAMILIES],
                         "builder": [attack.BUILDERS[v].__name__ for v in FAMILIES],
                         "what it is": [first_sentence(attack.BUILDERS[v]) for v in FAMILIES]},
                        index=pd.Index(FAMILIES, name="variant"))
    dets = pd.DataFrame({"needs": [detect.NEEDS[d] for d in detect.BENCHMARK_DETECTORS]},
                        index=pd.Index(detect.BENCHMARK_DETECTORS, name="detector"))
    return fams, dets


def detectors(shards: int) -> tuple[str, ...]:
    """The benchmark's detectors defined at ``shards`` (SMS needs two models or more)."""
    return tuple(d for d in detect.BENCHMARK_DETECTORS if d != "sms" or shards > 1)


def runs(cfg) -> list[Run]:
    return [Run(TABLE, seed, (("variant", v), ("shards", s)))
            for seed in cfg.seeds[:SEEDS] for v in FAMILIES for s in cfg.shards]


def needs(run: Run, ctx) -> list[Need]:
    v, s = run["variant"], run["shards"]
    r = ctx.recipe("attack", run.seed, s, v)
    out = [Need(f"07 {v} S={s}", r, ((), tuple(r.attack().request_order())))]
    return out + [Need(f"07 {v} S={s} {d} filter", r, chain="screened",
                       knobs=(("detector", d),)) for d in detectors(s)]


def compute(run: Run, ctx) -> pd.DataFrame:
    plain, *_ = needs(run, ctx)
    recipe, cfg = plain.recipe, ctx.cfg
    atk = recipe.attack()
    served = recipe.build().fit()
    before = atk.evaluate(served.predict)
    served.unlearn(atk.request_order())
    after = atk.evaluate(served.predict)
    base = {"dataset": ctx.ds.name, "variant": atk.variant, "seed": run.seed,
            "shards": run["shards"], "asr_before": before["asr"],
            "clean_acc_before": before["clean_acc"], "asr_after": after["asr"],
            "clean_acc_after": after["clean_acc"]}
    rows = []
    for det in detectors(run["shards"]):
        r = ex.screened_requests(atk, recipe.build, det, cfg)[1]
        row = {**base, "detector": det, "filter_threshold": r["threshold"],
               "asr_filtered": r["asr"], "clean_acc_filtered": r["clean_acc"],
               "refused": r["refused"], "requests": r["requests"]}
        for pop in POPULATIONS:
            row |= {f"{k}_{pop}": v for k, v in r["benchmark"][pop].items()}
            row[f"benign_refused_{pop}"] = r["benign"][pop]
        row["benign_requests"] = r["benign_requests"]
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(table: pd.DataFrame, fpr: float = 0.05) -> pd.DataFrame:
    """Per attack family, shard count and detector over seeds: AUROC against random benign
    requests, TPR at 1% and at ``fpr`` each beside the false-positive rate its threshold
    reached on held-out random benign requests, AUROC against the hard population, and
    the filter as it was run (at the runs' ``target_fpr``,
    :func:`bdunlearn.claims.operating_point`): final ASR without and with it, attack and
    benign requests refused."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    if f"tpr@{fpr:g}_random" not in table:
        stored = [c[4:-7] for c in table if c.startswith("tpr@") and c.endswith("_random")]
        raise ValueError(f"fpr {fpr!r} is not an operating point of the stored runs; use one "
                         f"of {', '.join(stored)}")
    t = table.assign(attack=table.variant.map(FAMILY_TITLES))
    cols = list(dict.fromkeys(
        ["auroc_random", "tpr@0.01_random", "fpr@0.01_random", f"tpr@{fpr:g}_random",
         f"fpr@{fpr:g}_random", "auroc_hard", "asr_after", "asr_filtered", "refused",
         "benign_refused_random", "benign_refused_hard"]))
    return ex.over_seeds(t, ["attack", "shards", "detector"], cols)


def switch_on(table: pd.DataFrame) -> pd.DataFrame:
    """Whether each family switches on: ASR before and after its requests are unlearned
    without a filter, and clean accuracy after, per shard count over seeds."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    run = ["variant", "seed", "shards", *(c for c in GROUP if c in table)]
    first = table.drop_duplicates(run)
    first = first.assign(attack=first.variant.map(FAMILY_TITLES))
    return ex.over_seeds(first, ["attack", "shards"],
                         ["asr_before", "asr_after", "clean_acc_before", "clean_acc_after"])
