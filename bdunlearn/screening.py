"""Notebook 07's screening of deletion requests, end to end: one detector's threshold set on
benign requests alone, then the attacker's requests filtered by it and unlearned
(:func:`screened_requests`)."""

from __future__ import annotations

import numpy as np

from . import attack as attacks
from .config import RunConfig
from .unlearning import SisaService

REQUEST_BATCH = 10  # the attacker's and a benign user's requests come in batches of this
FPRS = (0.01, 0.05)  # operating points of the request-detection benchmark
BENIGN_SAMPLE = 2000  # the most benign requests of a population calibrated or tested on


def benign_populations(atk: attacks.AttackSet) -> dict:
    """The benign requests a detector's threshold is set on: random clean training samples,
    and the harder population of clean samples of the target (IT: the source image's)
    class (:meth:`~bdunlearn.attack.AttackSet.hard_negatives`)."""
    return {"random": atk.detection_negatives(), "hard": atk.hard_negatives()}


def screened_requests(atk: attacks.AttackSet, build, detector: str, cfg: RunConfig
                      ) -> tuple[SisaService, dict]:
    """One detector of the request-detection benchmark, end to end (notebook 07).

    ``build()`` returns the attack's service, untrained (fitting loads its cached models).
    On the fitted service: :func:`bdunlearn.detect.benchmark` against both
    :func:`benign_populations` at :data:`FPRS` and ``cfg.target_fpr``; then a fresh
    service screens the attacker's whole request order with the detector at the
    threshold set on random benign requests for ``cfg.target_fpr`` (batch detector:
    batches of :data:`REQUEST_BATCH` requests) and unlearns what it accepts. Returns that
    service and a dict: the benchmark figures per population, the final ASR and clean
    accuracy behind the filter, how many attack requests it refused, and how many benign
    requests of each population it would refuse (``benign``) out of ``benign_requests``:
    as many as the attack's requests, or fewer when a population's held-out ids (never
    an id the threshold was set on) are fewer, the same count for every population.
    """
    from . import detect

    fprs = tuple(sorted({*FPRS, cfg.target_fpr}))
    pops = benign_populations(atk)
    svc = build().fit()
    order, mitigation = atk.request_order(), atk.ids("mitigation")
    with detect.memo():  # svc's models do not change in this block
        bench = detect.benchmark(svc, mitigation, pops, detector, fprs=fprs,
                                 batch=REQUEST_BATCH, sample=BENIGN_SAMPLE, seed=atk.seed)
        thr = bench["random"][f"threshold@{cfg.target_fpr:g}"]
        screen = detect.screen_for(detector, thr, batch=REQUEST_BATCH)
        calibrated = detect.split_benign(svc, pops["random"], mitigation,
                                         sample=BENIGN_SAMPLE, seed=atk.seed)[0]
        held = {name: detect.split_benign(svc, ids, np.concatenate([mitigation, calibrated]),
                                          sample=BENIGN_SAMPLE, seed=atk.seed, name=name)[1]
                for name, ids in pops.items()}  # never an id the threshold was set on
        n = min(len(order), *map(len, held.values()))
        benign = {name: int(np.asarray(screen(svc, ids[:n])).sum())
                  for name, ids in held.items()}
    guarded = build().fit()
    guarded.screen = screen
    cost = guarded.unlearn(order)
    return guarded, {"benchmark": bench, "threshold": thr, "refused": cost.refused,
                     "requests": len(order), "benign": benign, "benign_requests": n,
                     **atk.evaluate(guarded.predict)}
