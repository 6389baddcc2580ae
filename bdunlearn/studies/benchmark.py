"""Notebook 07's runs: the request-detection benchmark. For each registered attack family
(:mod:`bdunlearn.attacks`), shard count, seed (the first three) and registered detector
defined at that shard count (:mod:`bdunlearn.detectors`), one run fits the attack's
service (its models come from the checkpoint cache, shared by every detector's run),
scores the attacker's requests against two benign populations and serves the whole
request order behind a filter at the threshold set on random benign requests
(:func:`bdunlearn.experiment.screened_requests`). One row per run, with the attack's ASR
before and after its requests unlearned without a filter (whether the family switches on
at all).

A run's key holds the detector's name and version and the family's version, so adding
or changing one detector (or family) computes only its runs; the notebook shows the
current version of each (:func:`select`) and names those with no stored rows.
:func:`migrate` re-keyed the runs stored before runs were per detector
(``python -m bdunlearn.studies.benchmark migrate results/runs``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from .. import attacks
from .. import detectors as registry
from .. import experiment as ex
from ..store import GROUP, PROVENANCE, RunStore
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
VERSIONS = ("detector_version", "attack_version")  # in each run's key and row


def families() -> tuple[str, ...]:
    """The benchmark's attack families: every registered one."""
    return attacks.names()


def catalogue() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The benchmark's attack families (with each builder's first docstring sentence and
    version) and detectors (with what each needs to see, and its version)."""

    def first_sentence(fn) -> str:
        return " ".join((fn.__doc__ or fn.__name__).split()).split(". ")[0] + "."

    fams = [attacks.get(v) for v in families()]
    fams = pd.DataFrame({"attack": [f.title for f in fams],
                         "builder": [f.build.__name__ for f in fams],
                         "what it is": [first_sentence(f.build) for f in fams],
                         "version": [f.version for f in fams]},
                        index=pd.Index(families(), name="variant"))
    dets = [registry.get(d) for d in registry.names(benchmark=True)]
    dets = pd.DataFrame({"needs": [d.needs for d in dets], "unit": [d.unit for d in dets],
                         "version": [d.version for d in dets]},
                        index=pd.Index([d.name for d in dets], name="detector"))
    return fams, dets


def detectors(shards: int) -> tuple[str, ...]:
    """The benchmark's detectors defined at ``shards`` (SMS needs two models or more)."""
    return tuple(d for d in registry.names(benchmark=True)
                 if registry.get(d).min_models <= shards)


def setting(variant: str, shards: int, detector: str) -> tuple:
    """A run's own setting: the family, the shard count, the detector and both versions."""
    return (("variant", variant), ("shards", shards), ("detector", detector),
            ("detector_version", registry.get(detector).version),
            ("attack_version", attacks.get(variant).version))


def runs(cfg) -> list[Run]:
    return [Run(TABLE, seed, setting(v, s, d))
            for seed in cfg.seeds[:SEEDS] for v in families() for s in cfg.shards
            for d in detectors(s)]


def needs(run: Run, ctx) -> list[Need]:
    v, s, d = run["variant"], run["shards"], run["detector"]
    r = ctx.recipe("attack", run.seed, s, v)
    return [Need(f"07 {v} S={s}", r, ((), tuple(r.attack().request_order()))),
            Need(f"07 {v} S={s} {d} filter", r, chain="screened", knobs=(("detector", d),))]


_BASE: dict = {}


def _switch_on(recipe, atk) -> dict:
    """ASR and clean accuracy before and after the attack's requests are unlearned without
    a filter (once per process for each recipe: every detector's run shares it)."""
    if recipe not in _BASE:
        served = recipe.build().fit()
        before = atk.evaluate(served.predict)
        served.unlearn(atk.request_order())
        after = atk.evaluate(served.predict)
        _BASE.clear()  # one service's figures at a time (runs come family by family)
        _BASE[recipe] = {"asr_before": before["asr"], "clean_acc_before": before["clean_acc"],
                         "asr_after": after["asr"], "clean_acc_after": after["clean_acc"]}
    return _BASE[recipe]


def compute(run: Run, ctx) -> pd.DataFrame:
    plain, *_ = needs(run, ctx)
    recipe, cfg, det = plain.recipe, ctx.cfg, run["detector"]
    atk = recipe.attack()
    base = _switch_on(recipe, atk)
    r = ex.screened_requests(atk, recipe.build, det, cfg)[1]
    row = {"dataset": ctx.ds.name, "variant": atk.variant, "seed": run.seed,
           "shards": run["shards"], **base, "detector": det,
           **{k: run[k] for k in VERSIONS}, "filter_threshold": r["threshold"],
           "asr_filtered": r["asr"], "clean_acc_filtered": r["clean_acc"],
           "refused": r["refused"], "requests": r["requests"]}
    for pop in POPULATIONS:
        row |= {f"{k}_{pop}": v for k, v in r["benchmark"][pop].items()}
        row[f"benign_refused_{pop}"] = r["benign"][pop]
    row["benign_requests"] = r["benign_requests"]
    return pd.DataFrame([row])


def select(table: pd.DataFrame, cfg) -> pd.DataFrame:
    """The stored rows the notebook shows: each detector's and family's current version
    (rows of an earlier version stay stored, out of sight). Prints the detectors and
    families of :func:`runs` that have no stored rows (or only some), so none is left
    out silently."""
    if not table.empty and set(VERSIONS) <= set(table.columns):
        now_det = {d: registry.get(d).version for d in registry.names()}
        now_fam = {v: attacks.get(v).version for v in families()}
        table = table[(table.detector.map(now_det) == table.detector_version)
                      & (table.variant.map(now_fam) == table.attack_version)]
        table = table.reset_index(drop=True)
    want = pd.DataFrame([{"seed": r.seed, **dict(r.setting)} for r in runs(cfg)])
    if want.empty:
        return table
    have = set() if table.empty else set(
        table[["seed", "variant", "shards", "detector"]].itertuples(index=False, name=None))
    want["stored"] = [k in have for k in
                      want[["seed", "variant", "shards", "detector"]].itertuples(index=False,
                                                                                  name=None)]
    for what in ("detector", "variant"):
        for name, g in want.groupby(what, sort=False):
            if g.stored.all():
                continue
            label = (f"detector {name!r} (version {g.detector_version.iloc[0]})"
                     if what == "detector" else
                     f"attack family {name!r} (version {g.attack_version.iloc[0]})")
            print(f"{TABLE}: {label} has no stored rows" if not g.stored.any() else
                  f"{TABLE}: {label} has {int(g.stored.sum())} of {len(g)} runs stored",
                  "; run the notebook with compute True to compute only its runs", sep="")
    return table


def _title(variant: str) -> str:
    return attacks.FAMILY_TITLES.get(variant, variant)


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
    t = table.assign(attack=table.variant.map(_title))
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
    first = first.assign(attack=first.variant.map(_title))
    return ex.over_seeds(first, ["attack", "shards"],
                         ["asr_before", "asr_after", "clean_acc_before", "clean_acc_after"])


# ------------------------------------------------------------ migration to per-detector runs

# The detector versions of the rows stored before runs were per detector, by study
# version: 1 (the first benchmark) scored k-NN without its tie-breaker and the batch test
# without centring per class (each detector's version 1); 2 has today's detectors.
LEGACY_DETECTOR_VERSIONS = {1: {"mu": 1, "sms": 1, "loss": 1, "knn": 1, "batch": 1},
                            2: {"mu": 1, "sms": 1, "loss": 1, "knn": 2, "batch": 2}}
LEGACY_ATTACK_VERSION = 1  # every family's first version


def migrate(store_dir) -> dict:
    """Re-key notebook 07's stored runs that hold every detector's rows under one run key
    (before runs were per detector) into one run per detector, keyed as :func:`runs` keys
    them (the detector's name and version and the family's version, whose columns are
    added to the rows); every other column, the provenance included, is kept, and
    ``run_key`` becomes the new file's stem. Nothing is recomputed: a row's numbers are
    what its old run stored. Runs already per detector are left alone, so running it
    again changes nothing. Returns counts: ``{"runs": old runs split, "written": new run
    files, "kept": runs already per detector}``."""
    folder = Path(store_dir) / TABLE
    counts = {"runs": 0, "written": 0, "kept": 0}
    for path in sorted(folder.glob("*/*.csv")):
        if path.name.startswith(".") or path.name.count(".") != 1:
            continue
        rows = pd.read_csv(path)
        if set(VERSIONS) <= set(rows.columns) and rows.detector.nunique() == 1:
            counts["kept"] += 1
            continue
        if list(path.parent.glob(path.stem + ".*.csv")):
            raise ValueError(f"{path} has side tables; the migration splits run files "
                             "without side tables only")
        skey = path.parent.name
        (study_version,) = rows.study_version.unique()
        legacy = LEGACY_DETECTOR_VERSIONS[int(study_version)]
        new = []
        for det, part in rows.groupby("detector", sort=False):
            (seed,), (variant,), (shards,) = (part[c].unique() for c in ("seed", "variant",
                                                                        "shards"))
            (precision,), (device,) = (part[c].unique() for c in GROUP)
            run = Run(TABLE, int(seed), (("variant", variant), ("shards", int(shards)),
                                         ("detector", det),
                                         ("detector_version", legacy[det]),
                                         ("attack_version", LEGACY_ATTACK_VERSION)))
            rkey = RunStore.run_key(skey, run.key(), precision, device)
            out = part.assign(detector_version=legacy[det], attack_version=LEGACY_ATTACK_VERSION,
                              run_key=rkey)
            order = [c for c in out.columns if c not in (*VERSIONS, *PROVENANCE)]
            at = order.index("detector") + 1
            order = order[:at] + list(VERSIONS) + order[at:]
            new.append((path.with_name(f"{rkey}.csv"),
                        out[order + [c for c in PROVENANCE if c in out.columns]]))
        for target, frame in new:  # every new file in place before the old one goes
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                frame.to_csv(f, index=False)
            os.replace(tmp, target)
        path.unlink()
        counts["runs"] += 1
        counts["written"] += len(new)
    return counts


def main(argv=None) -> None:
    """``python -m bdunlearn.studies.benchmark migrate STORE``: re-key notebook 07's runs
    stored before runs were per detector (:func:`migrate`)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="split each stored run into one run per detector")
    m.add_argument("store", help="the run store, e.g. results/runs")
    args = ap.parse_args(argv)
    counts = migrate(args.store)
    print(f"migrate: {counts['runs']} runs split into {counts['written']} per-detector runs; "
          f"{counts['kept']} already per detector (kept)")


if __name__ == "__main__":
    main()
