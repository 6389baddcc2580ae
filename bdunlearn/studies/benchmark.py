"""Notebook 07's runs: the request-detection benchmark. For each registered attack family
(:mod:`bdunlearn.attacks`), shard count, seed (every seed of the run: five at ``default``)
and registered detector defined at that shard count (:mod:`bdunlearn.detectors`), one run
fits the attack's service (its models come from the checkpoint cache, shared by every
detector's run), scores the attacker's requests against two benign populations and serves
the whole request order behind a filter at the threshold set on random benign requests
(:func:`bdunlearn.screening.screened_requests`). One row per run, with the attack's ASR
before and after its requests unlearned without a filter (whether the family switches on
at all).

Valid budgets (table :data:`BUDGETS`): each family that declares budgets runs at one model
at its paper's setting and at each budget on :data:`BUDGET_SEEDS`; :func:`chosen_budgets`
picks one, and the budgets written in :data:`CHOSEN` join the benchmark as families of
their own (``"lc@camouflage_x2"``, :func:`bdunlearn.attacks.get`).

A run's key holds the detector's name and version and the family's version, so adding
or changing one detector (or family) computes only its runs; the notebook shows the
current version of each (:func:`select`) and names those with no stored rows.
:func:`migrate` re-keyed the runs stored before runs were per detector
(``python -m bdunlearn.studies.benchmark migrate results/runs``).

The adaptive track (table :data:`ADAPTIVE`, :mod:`bdunlearn.adaptive`): on the same
trained services, at 1 and 5 shards, one run per family, shard count, seed, attacker
strategy and detector (its key holds the strategy and the detector's name and version,
so strategies and seeds accumulate run by run). Its detectors are the per-sample ones,
each also scored per request by the mean and max of its scores (``"mu@mean"``,
:func:`bdunlearn.detect.detector_of`), the batch test, and the stream detector
``"batch@stream"`` (the batch test on every pending request pooled across accounts,
:func:`bdunlearn.adaptive.screen_stream`). Its rows: the final ASR without a filter and
behind the detector's filter for that strategy's requests, the attack ids and requests
refused, and the share of benign requests refused in each of three populations (random,
the target class, correlated users) at the threshold set on random benign requests.
At ``smoke`` the track is narrowed (:data:`SMOKE_ADAPTIVE`, :func:`bdunlearn.studies.at_smoke`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .. import adaptive, attacks
from .. import detectors as registry
from .. import verdicts as vd
from ..checks import flag
from ..claim import Claim, pct, same
from ..detect import detector_of
from ..screening import BENIGN_SAMPLE, REQUEST_BATCH, benign_populations, screened_requests
from ..store import GROUP, PROVENANCE, RunStore
from ..tables import over_seeds
from ..verdicts import SWITCH_AFTER, SWITCH_BEFORE, switched_on
from . import COMMON, MEASURED, Need, Run, at_smoke

PARAMETERS = (*COMMON, "shards", "poison_num", "mitigation_num", "alpha", "epochs",
              "train_subset", "target_fpr")
VERSION = 2  # 2: k-NN ties broken, batch score centred per class, batch thresholds set on
#              2,000 batches, the batch filter's windows all of REQUEST_BATCH ids
# What its rows depend on besides the dataset, the seed and each run's own setting.
SETTINGS = (*MEASURED, "alpha", "poison_num", "mitigation_num", "it_poison_num",
            "it_mitigation_num", "target_fpr")
TABLE = "07_request_detection"
COLUMNS = ["dataset", "variant", "seed", "shards", "detector"]  # a row's identity first
POPULATIONS = ("random", "hard")
VERSIONS = ("detector_version", "attack_version")  # in each run's key and row


def families() -> tuple[str, ...]:
    """The benchmark's attack families: every registered one at its paper's setting, and
    each family of :data:`CHOSEN` at its chosen budget beside it."""
    return tuple(x for v in attacks.names() for x in dict.fromkeys((v, CHOSEN.get(v, v))))


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
    return [*budget_runs(cfg),
            *(Run(TABLE, seed, setting(v, s, d))
              for seed in cfg.seeds for v in families() for s, d in screens(v, cfg)),
            *adaptive_runs(cfg)]


SMOKE_DETECTORS = ("batch",)  # the detector every other family meets at smoke


def screens(variant: str, cfg) -> tuple[tuple[int, str], ...]:
    """The (shard count, detector) pairs the benchmark runs ``variant`` at: every shard
    count of the run with every detector defined there. At ``smoke``, where no claim of
    notebook 07 is asserted, only BAU BadNets runs in that full shape; every other family
    at its paper's setting runs at one model under :data:`SMOKE_DETECTORS`, enough to
    check that it builds, switches on and is screened (CI trains half of notebook 07's
    services and chains), and a family at a chosen budget (the same builder at other
    knobs, built at smoke by the budgets section) not at all."""
    one = min(cfg.shards)
    return at_smoke(cfg, ((s, d) for s in cfg.shards for d in detectors(s)),
                    lambda sd: variant == "bn" or ("@" not in variant and sd[0] == one
                                                   and sd[1] in SMOKE_DETECTORS))


def needs(run: Run, ctx) -> list[Need]:
    if run.table == ADAPTIVE:
        return adaptive_needs(run, ctx)
    if run.table == BUDGETS:
        r = ctx.recipe("attack", run.seed, 1, run["variant"])
        return [Need(f"07 budget {run['variant']}", r, ((), tuple(r.attack().request_order())))]
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
    if run.table == ADAPTIVE:
        return adaptive_compute(run, ctx)
    if run.table == BUDGETS:
        return budget_compute(run, ctx)
    plain, *_ = needs(run, ctx)
    recipe, cfg, det = plain.recipe, ctx.cfg, run["detector"]
    atk = recipe.attack()
    base = _switch_on(recipe, atk)
    r = screened_requests(atk, recipe.build, det, cfg)[1]
    row = {"dataset": ctx.ds.name, "variant": run["variant"], "seed": run.seed,
           "shards": run["shards"], **base, "detector": det,
           **{k: run[k] for k in VERSIONS}, "filter_threshold": r["threshold"],
           "asr_filtered": r["asr"], "clean_acc_filtered": r["clean_acc"],
           "refused": r["refused"], "requests": r["requests"]}
    for pop in POPULATIONS:
        row |= {f"{k}_{pop}": v for k, v in r["benchmark"][pop].items()}
        row[f"benign_refused_{pop}"] = r["benign"][pop]
    row["benign_requests"] = r["benign_requests"]
    return pd.DataFrame([row])


def _version(name: str) -> float:
    """The current version of a detector named in the table (NaN: none registered now)."""
    try:
        return detector_of(base_detector(name)[0]).version
    except ValueError:
        return float("nan")


def select(table: pd.DataFrame, cfg, name: str = TABLE) -> pd.DataFrame:
    """The stored rows of table ``name`` the notebook shows: each detector's and family's
    current version (rows of an earlier version stay stored, out of sight). Prints the
    detectors and families of :func:`runs` that have no stored rows (or only some), so
    none is left out silently."""
    if name == BUDGETS:
        if table.empty:
            return table
        now = table.variant.map(_family_version)
        return table[now == table.attack_version].reset_index(drop=True)
    adaptive_rows = name == ADAPTIVE
    ident = ["seed", "variant", "shards", *(["strategy"] if adaptive_rows else []), "detector"]
    if not table.empty and set(VERSIONS) <= set(table.columns):
        now_det = {d: _version(d) for d in table.detector.unique()}
        now_fam = {v: _family_version(v) for v in table.variant.unique()}
        table = table[(table.detector.map(now_det) == table.detector_version)
                      & (table.variant.map(now_fam) == table.attack_version)]
        table = table.reset_index(drop=True)
    want = pd.DataFrame([{"seed": r.seed, **dict(r.setting)} for r in runs(cfg)
                         if r.table == (ADAPTIVE if adaptive_rows else TABLE)])
    if want.empty:
        return table
    have = set() if table.empty else set(table[ident].itertuples(index=False, name=None))
    want["stored"] = [k in have for k in want[ident].itertuples(index=False, name=None)]
    where = f"{ADAPTIVE if adaptive_rows else TABLE}"
    for what in ("detector", "variant"):
        for name, g in want.groupby(what, sort=False):
            if g.stored.all():
                continue
            label = (f"detector {name!r} (version {g.detector_version.iloc[0]})"
                     if what == "detector" else
                     f"attack family {name!r} (version {g.attack_version.iloc[0]})")
            print(f"{where}: {label} has no stored rows" if not g.stored.any() else
                  f"{where}: {label} has {int(g.stored.sum())} of {len(g)} runs stored",
                  "; run the notebook with compute True to compute only its runs", sep="")
    return table


def switched_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the runs whose attack switched on without a filter (the rule of
    :func:`switched_on`, run by run: concealed before the requests, on after them)."""
    return table[switched_on(table.asr_before, table.asr_after)]


def leaderboard(table: pd.DataFrame, fpr: float = 0.05, switched: bool = False
                ) -> pd.DataFrame:
    """Per attack family, shard count and detector over seeds: AUROC against random benign
    requests, TPR at 1% and at ``fpr`` each beside the false-positive rate its threshold
    reached on held-out random benign requests, AUROC against the hard population, and
    the filter as it was run (at the runs' ``target_fpr``,
    :func:`operating_point`): final ASR without and with it, attack and
    benign requests refused; and each detector's TPR at ``fpr`` against the best
    detector's of its family and shard count, paired within seed (:func:`paired_gap`).
    ``switched``: on the runs whose attack switched on only (:func:`switched_runs`)."""
    flag("switched", switched)
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    if f"tpr@{fpr:g}_random" not in table:
        stored = [c[4:-7] for c in table if c.startswith("tpr@") and c.endswith("_random")]
        raise ValueError(f"fpr {fpr!r} is not an operating point of the stored runs; use one "
                         f"of {', '.join(stored)}")
    if switched:
        table = switched_runs(table)
        if table.empty:
            return pd.DataFrame({"runs that switched on": [0]})
    t = table.assign(attack=table.variant.map(attacks.title))
    cols = list(dict.fromkeys(
        ["auroc_random", "tpr@0.01_random", "fpr@0.01_random", f"tpr@{fpr:g}_random",
         f"fpr@{fpr:g}_random", "auroc_hard", "asr_after", "asr_filtered", "refused",
         "benign_refused_random", "benign_refused_hard"]))
    return over_seeds(t, ["attack", "shards", "detector"], cols).join(
        paired_gap(t, ["attack", "shards"], f"tpr@{fpr:g}_random"))


def switch_on(table: pd.DataFrame) -> pd.DataFrame:
    """Whether each family switches on, per shard count: in how many seeds it did
    (:func:`switched_on`, k of n with a Wilson interval), and its ASR before and after its
    requests are unlearned without a filter and clean accuracy, over seeds."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    run = ["variant", "seed", "shards", *(c for c in GROUP if c in table)]
    first = table.drop_duplicates(run)
    first = first.assign(attack=first.variant.map(attacks.title),
                         on=switched_on(first.asr_before, first.asr_after))
    shown = over_seeds(first, ["attack", "shards"],
                       ["asr_before", "asr_after", "clean_acc_before", "clean_acc_after"])
    by = list(shown.index.names)
    counts = first.groupby(by).on.apply(lambda on: str(vd.count(on))).rename("switched on")
    return shown.join(counts)[["switched on", *shown.columns]]


def _family_version(variant: str) -> float:
    """The current version of a family named in the table (NaN: none registered now)."""
    try:
        return attacks.get(variant).version
    except ValueError:
        return float("nan")


# ------------------------------------------------------------ valid attack budgets

BUDGETS = f"{TABLE}-budgets"
# Budgets are chosen on seeds no benchmark run uses, so that the rows they are reported
# on are not those they were chosen on.
BUDGET_SEEDS = (100, 101, 102)
BUDGET_COLUMNS = ["dataset", "variant", "seed", "asr_before", "asr_after"]
# The budget each family runs at beside its paper's setting: chosen_budgets() on the
# stored budgets table, written here once every candidate has its runs (a test checks
# that the two agree), so the benchmark's runs never depend on what is stored. Chosen
# on the runs of seeds 100-102 computed in bf16; noise camouflage has no valid budget.
CHOSEN: dict[str, str] = {"it": "it@copies_x8", "lc": "lc@camouflage_x2",
                          "blend": "blend@mitigation_x2"}
# At smoke one budget of one family, on one seed: the path runs (two small trainings).
SMOKE_BUDGETS = ("it@copies_x4",)


def budget_runs(cfg) -> list[Run]:
    """One run per family that declares budgets (:func:`bdunlearn.attacks.budgets`), per
    candidate (its paper's setting first) and per seed of :data:`BUDGET_SEEDS`, at one
    model: the attack's ASR before and after its requests are unlearned."""
    pairs = [(name, seed) for v in attacks.names() if attacks.get(v).budgets
             for name in attacks.budgets(v) for seed in BUDGET_SEEDS]
    keep = at_smoke(cfg, pairs, lambda p: p[0] in SMOKE_BUDGETS and p[1] == BUDGET_SEEDS[0])
    return [Run(BUDGETS, seed, (("variant", name), ("attack_version", attacks.get(name).version)))
            for name, seed in keep]


def budget_compute(run: Run, ctx) -> pd.DataFrame:
    (need,) = needs(run, ctx)
    base = _switch_on(need.recipe, need.recipe.attack())
    return pd.DataFrame([{"dataset": ctx.ds.name, "variant": run["variant"], "seed": run.seed,
                          "attack_version": run["attack_version"], **base}])


def budget_choice(table: pd.DataFrame) -> dict[str, str | None]:
    """Per family whose every candidate has a run on every seed of :data:`BUDGET_SEEDS`:
    the candidate that switched on (:func:`switched_on`) in the most seeds, the earlier
    declared on a tie (the paper's setting first), or ``None`` where even that one
    switched on in no more than half of them (the family has no valid budget)."""
    out = {}
    for v in attacks.names():
        names = attacks.budgets(v)
        rows = table[table.variant.isin(names)] if not table.empty else table
        if len(names) < 2 or rows.empty:
            continue
        have = rows.groupby("variant").seed.apply(set)
        if any(not set(BUDGET_SEEDS) <= have.get(n, set()) for n in names):
            continue
        rows = rows[rows.seed.isin(BUDGET_SEEDS)].drop_duplicates(["variant", "seed"])
        on = switched_on(rows.asr_before, rows.asr_after).groupby(rows.variant).sum()
        best = max(names, key=lambda n: (on.get(n, 0), -names.index(n)))
        out[v] = best if 2 * on.get(best, 0) > len(BUDGET_SEEDS) else None
    return out


def chosen_budgets(table: pd.DataFrame) -> dict[str, str]:
    """The families :func:`budget_choice` finds a valid budget for, and that budget (the
    paper's setting itself where it is the best)."""
    return {v: name for v, name in budget_choice(table).items() if name}


def budget_view(table: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: how many selection seeds it switched on in (k of n, Wilson), its ASR
    before and after over those seeds, and which candidate :func:`budget_choice` picks
    ("yes"; "none valid" on every candidate of a family that has no valid budget)."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    rows = table.drop_duplicates(["variant", "seed"])
    choice = budget_choice(rows)
    chosen = set(choice.values())
    invalid = {n for v, c in choice.items() if c is None for n in attacks.budgets(v)}
    out = []
    order = {n: i for i, n in enumerate(n for v in attacks.names() for n in attacks.budgets(v))}
    for name in sorted(set(rows.variant), key=lambda n: (order.get(n, len(order)), n)):
        g = rows[rows.variant == name]
        c = vd.count(switched_on(g.asr_before, g.asr_after))
        out.append({"attack": attacks.title(name), "switched on": str(c),
                    "ASR before": f"{g.asr_before.mean():.1%}",
                    "ASR after": f"{g.asr_after.mean():.1%}",
                    "chosen": ("yes" if name in chosen
                               else "none valid" if name in invalid else "")})
    return pd.DataFrame(out).set_index("attack")


# ------------------------------------------------------------ the adaptive track

ADAPTIVE = f"{TABLE}-adaptive"
ADAPTIVE_SHARDS = (1, 5)  # ten shards stay in the non-adaptive table (issue 47)
ADAPTIVE_POPULATIONS = ("random", "hard", "correlated")
ADAPTIVE_COLUMNS = ["dataset", "variant", "seed", "shards", "strategy", "detector"]
BENIGN_USERS = 30  # benign users of each population, adaptive.REQUEST_SIZE ids each
STREAM = "@stream"  # a batch detector on the pending requests pooled across accounts
# At smoke the track shows one family at one shard count, two strategies and the two
# batch-unit screens, so it trains at most one service more than the other runs.
SMOKE_ADAPTIVE = {"families": ("bn",), "strategies": ("single", "sybil"),
                  "detectors": ("batch", "batch" + STREAM)}


def base_detector(name: str) -> tuple[str, bool]:
    """``(detector, pooled)``: the detector a name of the adaptive track scores with, and
    whether it screens the pooled stream (``"batch@stream"``) or each request as sent."""
    pooled = isinstance(name, str) and name.endswith(STREAM)
    base = name[:-len(STREAM)] if pooled else name
    det = detector_of(base)
    if pooled and det.unit != "batch":
        raise ValueError(f"a stream detector pools requests into batches, so {name!r} needs "
                         f"a batch detector before {STREAM!r}, not per-sample {base!r}")
    return base, pooled


def adaptive_detectors(shards: int, cfg=None) -> tuple[str, ...]:
    """The adaptive track's detectors at ``shards``: each per-sample detector of the
    benchmark, its mean and max per request, every batch detector and the batch test
    on the pooled stream (at ``smoke``: :data:`SMOKE_ADAPTIVE`)."""
    from ..detect import AGGREGATES, aggregated

    sample = [d for d in detectors(shards) if registry.get(d).unit == "sample"]
    batch = [d for d in detectors(shards) if registry.get(d).unit == "batch"]
    out = [*sample, *(aggregated(d, h) for d in sample for h in AGGREGATES), *batch,
           *(d + STREAM for d in batch)]
    return at_smoke(cfg, out, SMOKE_ADAPTIVE["detectors"].__contains__)


def adaptive_shards(cfg) -> tuple[int, ...]:
    """The adaptive track's shard counts: those of :data:`ADAPTIVE_SHARDS` the run has
    (with none of them, the run's fewest; at ``smoke``, the fewest of these)."""
    have = tuple(s for s in cfg.shards if s in ADAPTIVE_SHARDS) or (min(cfg.shards),)
    return at_smoke(cfg, have, lambda s: s == min(have))


def adaptive_setting(variant: str, shards: int, strategy: str, detector: str) -> tuple:
    """An adaptive run's own setting: family, shards, strategy, detector, both versions."""
    return (("variant", variant), ("shards", shards), ("strategy", strategy),
            ("detector", detector),
            ("detector_version", detector_of(base_detector(detector)[0]).version),
            ("attack_version", attacks.get(variant).version))


def adaptive_runs(cfg) -> list[Run]:
    """The adaptive track's runs: family x shard count x seed x strategy x detector."""
    return [Run(ADAPTIVE, seed, adaptive_setting(v, s, st, d))
            for seed in cfg.seeds
            for v in at_smoke(cfg, families(), SMOKE_ADAPTIVE["families"].__contains__)
            for s in adaptive_shards(cfg)
            for st in at_smoke(cfg, adaptive.STRATEGIES, SMOKE_ADAPTIVE["strategies"].__contains__)
            for d in adaptive_detectors(s, cfg)]


_ASR: dict = {}


def _asr_without(recipe, atk, removed: np.ndarray, own: np.ndarray) -> dict:
    """ASR and clean accuracy once ``removed`` are unlearned (the service's own models
    when nothing is; memoised per recipe and removed set: detectors that accept the same
    requests share one unlearning)."""
    key = (recipe, frozenset(np.asarray(removed).tolist()))
    if key not in _ASR:
        svc = recipe.build().fit()
        if len(removed):
            svc.requestable[own] = True  # the attacker's own clean samples are its to delete
            svc.unlearn(np.asarray(removed, dtype=np.int64))
        if len(_ASR) > 64:
            _ASR.clear()
        _ASR[key] = atk.evaluate(svc.predict)
    return _ASR[key]


_CONTEXT: dict = {}


def _adaptive_context(recipe, atk):
    """What every adaptive run of one service shares: the fitted service, the benign
    users of each population (never an id a threshold is calibrated on), the attacker's
    plan (its own clean ids apart from every benign user's) and the calibration ids."""
    from .. import detect

    if recipe in _CONTEXT:
        return _CONTEXT[recipe]
    svc = recipe.build().fit()
    pops = benign_populations(atk)
    mitigation = atk.ids("mitigation")
    calib = detect.split_benign(svc, pops["random"], mitigation, sample=BENIGN_SAMPLE,
                                seed=atk.seed)[0]
    rng = np.random.default_rng([atk.seed, 47])
    held = {k: np.setdiff1d(v, np.concatenate([calib, mitigation])) for k, v in pops.items()}
    size = adaptive.REQUEST_SIZE
    users = {"random": adaptive.benign_requests(held["random"], BENIGN_USERS, size, rng),
             "hard": adaptive.benign_requests(held["hard"], BENIGN_USERS, size, rng)}
    rest = np.setdiff1d(held["random"], np.concatenate(users["random"]))
    pool = np.sort(rng.choice(rest, min(len(rest), 2000), replace=False))
    with detect.memo():  # correlated users: near-neighbours in the first model's features
        feats = detect._outputs(svc, 0, pool, "features")
    # as many users as the held-out pool holds (a tiny dataset holds fewer than 30)
    n = min(BENIGN_USERS, len(pool) // size)
    users["correlated"] = adaptive.clusters(feats, pool, n, size, rng) if n else []
    # the attacker's own clean samples: any clean sample no benign user requests (the
    # defender's calibration sample of its training data may hold some of them)
    own = np.setdiff1d(pops["random"], np.concatenate([u for us in users.values()
                                                       for u in us]))
    order = atk.request_order()
    # the surrogate: the loss of each claimed label under the service's own prediction
    # (mean softmax), which any user who may query the service can compute
    p = svc.predict_proba(atk.x[order], "mean").double()
    surrogate = -p.clamp_min(1e-12).log().gather(1, atk.y[order].view(-1, 1)).squeeze(1)
    plan = adaptive.Plan(order, rng.permutation(own), surrogate.numpy())
    _CONTEXT.clear()  # one service at a time (runs come family by family)
    _CONTEXT[recipe] = (svc, users, plan, calib)
    return _CONTEXT[recipe]


def adaptive_needs(run: Run, ctx) -> list[Need]:
    """The service an adaptive run fits, and its requests unlearned (the unfiltered
    strategies' other removals are known only as the run screens them)."""
    v, s = run["variant"], run["shards"]
    r = ctx.recipe("attack", run.seed, s, v)
    return [Need(f"07 adaptive {v} S={s}", r, ((), tuple(r.attack().request_order())))]


def adaptive_compute(run: Run, ctx) -> pd.DataFrame:
    """One adaptive run: the strategy's request stream among random benign users, screened
    by the detector at the threshold set on random benign requests for ``target_fpr``;
    what it accepts of the attacker's requests is unlearned on a fresh service. Benign
    users of each population are screened the same way, their requests pooled in
    arrival order for a stream detector."""
    from .. import detect

    cfg, det, name = ctx.cfg, run["detector"], run["strategy"]
    recipe = ctx.recipe("attack", run.seed, run["shards"], run["variant"])
    atk = recipe.attack()
    svc, users, plan, _ = _adaptive_context(recipe, atk)
    base, pooled = base_detector(det)
    with detect.memo():
        random = benign_populations(atk)["random"]  # split as the other runs split it
        bench = detect.benchmark(svc, plan.mitigation, {"random": random}, base,
                                 fprs=(cfg.target_fpr,), batch=adaptive.REQUEST_SIZE,
                                 sample=BENIGN_SAMPLE, seed=atk.seed)
        thr = bench["random"][f"threshold@{cfg.target_fpr:g}"]
        screen = detect.screen_for(base, thr, batch=adaptive.REQUEST_SIZE)

        def flags(requests):
            return adaptive.screen_stream(requests, lambda ids: screen(svc, ids),
                                          pooled=pooled)

        rng = np.random.default_rng([atk.seed, 48, sorted(adaptive.STRATEGIES).index(name)])
        stream = adaptive.stream(name, plan, users["random"], rng)
        got = flags(stream)
        benign = {pop: flags([adaptive.Request(f"user{i}", u) for i, u in enumerate(us)])
                  for pop, us in users.items()}
    mine = [(r, f) for r, f in zip(stream, got) if r.attack]
    sent = np.concatenate([r.ids for r, _ in mine])
    accepted = np.concatenate([r.ids[~f] for r, f in mine])
    collateral = [f for r, f in zip(stream, got) if not r.attack]
    before = _switch_on(recipe, atk)
    unfiltered = _asr_without(recipe, atk, sent, plan.own)
    filtered = _asr_without(recipe, atk, accepted, plan.own)
    is_mit = np.isin(sent, plan.mitigation)
    row = {"dataset": ctx.ds.name, "variant": run["variant"], "seed": run.seed,
           "shards": run["shards"], "strategy": name, "detector": det,
           **{k: run[k] for k in VERSIONS}, "filter_threshold": thr,
           "asr_before": before["asr_before"], "asr_after": unfiltered["asr"],
           "clean_acc_after": unfiltered["clean_acc"], "asr_filtered": filtered["asr"],
           "clean_acc_filtered": filtered["clean_acc"], "attack_ids": int(is_mit.sum()),
           "attack_requests": len(mine),
           "attack_refused": float(1 - np.isin(sent[is_mit], accepted).mean()),
           "attack_requests_refused": float(np.mean([f.any() for _, f in mine])),
           "benign_collateral": (float(np.concatenate(collateral).mean()) if collateral
                                 else 0.0)}
    for pop, f in benign.items():
        row[f"benign_refused_{pop}"] = float(np.concatenate(f).mean())
        row[f"benign_requests_refused_{pop}"] = float(np.mean([x.any() for x in f]))
    row["benign_users"] = min(len(u) for u in users.values())
    return pd.DataFrame([row])


def gaps(table: pd.DataFrame, by: list[str], metric: str, higher: bool = True) -> dict:
    """``{(*group, detector): (best, difference)}``: each detector's paired difference
    from the best detector of its group ``by`` (the one with the best mean ``metric`` over
    seeds; ``higher``: high is good), seed by seed over the seeds both hold
    (:func:`bdunlearn.verdicts.paired`; ``None`` when they share none)."""
    from ..verdicts import paired

    out = {}
    for key, g in table.groupby(by, sort=True):
        per = g.groupby(["detector", "seed"])[metric].mean()
        means = per.groupby(level=0).mean()
        best = means.idxmax() if higher else means.idxmin()
        ref = per.loc[best].to_dict()
        for det in means.index:
            out[(*(key if isinstance(key, tuple) else (key,)), det)] = (
                best, paired(ref, per.loc[det].to_dict(), bounds=(-1.0, 1.0)))
    return out


def paired_gap(table: pd.DataFrame, by: list[str], metric: str, higher: bool = True
               ) -> pd.DataFrame:
    """:func:`gaps` as columns ``best``, ``<metric> vs best`` (the mean) and its 95%
    t-interval, indexed by ``by`` and the detector."""
    out = {key: {"best": best, f"{metric} vs best": None if d is None else round(d.mean, 3),
                 f"{metric} vs best 95% CI": ("" if d is None or d.lo is None
                                              else f"[{d.lo:.3f}, {d.hi:.3f}]")}
           for key, (best, d) in gaps(table, by, metric, higher).items()}
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.names = [*by, "detector"]
    return frame


def adaptive_leaderboard(table: pd.DataFrame) -> pd.DataFrame:
    """Per attack family, shard count, strategy and detector over seeds: the final ASR
    without a filter and behind it, the share of attack ids and requests refused, the
    share of benign users' requests refused in each population (and of benign ids
    refused in the attack's own stream), and the paired difference (within seed) of the
    share of attack ids refused from the best detector of that family, shard count and
    strategy."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    t = table.assign(attack=table.variant.map(attacks.title))
    by = ["attack", "shards", "strategy"]
    cols = ["asr_after", "asr_filtered", "attack_refused", "attack_requests_refused",
            *(f"benign_requests_refused_{p}" for p in ADAPTIVE_POPULATIONS),
            "benign_collateral"]
    return over_seeds(t, [*by, "detector"], cols).join(paired_gap(t, by, "attack_refused"))


def stream_view(table: pd.DataFrame, detectors=("batch", "batch" + STREAM)) -> pd.DataFrame:
    """:func:`adaptive_leaderboard` for ``detectors`` alone (the batch test per request
    and on the pooled stream by default), with the columns that tell them apart: attack
    ids refused, final ASR behind the filter and benign requests refused per population."""
    board = adaptive_leaderboard(table)
    if "detector" not in board.index.names:
        return board
    board = board[board.index.get_level_values("detector").isin(detectors)]
    return board[["attack_refused", "asr_filtered",
                  *(f"benign_requests_refused_{p}" for p in ADAPTIVE_POPULATIONS), "seeds"]]


# ------------------------------------------------------------ claims

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


CLAIMS = (
    _benchmark("benchmark_switch_on", "07: which attack families switch on",
               f"switched on: ASR <= {SWITCH_BEFORE:.0%} before the camouflage is unlearned, "
               f">= {SWITCH_AFTER:.0%} after", _families, _describe_families),
    _benchmark("benchmark_best_detector", "07: the detector that catches each attack best",
               "highest TPR at the filters' false-positive rate on random benign requests "
               f"(the batch test's TPR counts batches of {REQUEST_BATCH} requests, the "
               "others' single requests)",
               _best_detectors, _describe_best),
)


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
