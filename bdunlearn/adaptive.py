"""The adaptive track of the request-detection benchmark (notebook 07): attackers who know
the detectors, and benign users as they are.

The models stay those the attack trained: only the *requests* change. A request stream
is a list of :class:`Request` in arrival order, each sent by one account; an attacker's
strategy is a pure function ``(plan, benign, rng, **knobs) -> stream`` of the attacker's
:class:`Plan` (its mitigation ids in its request order, the clean ids it contributed
itself, and a surrogate's suspicion score of each mitigation id), the benign users'
requests it is sent among (one id array per request, in arrival order) and a seeded
``numpy`` generator. The strategies (:data:`STRATEGIES`, :func:`stream`):

* ``"batches"``: the benchmark's attacker: its whole request order from one account in
  requests of :data:`REQUEST_SIZE` ids, in one burst among the benign requests;
* ``"single"`` (a): one id per request, from one account, in one burst;
* ``"dilute1"``, ``"dilute3"``, ``"dilute5"`` (b): requests of :data:`REQUEST_SIZE`
  ids, each ``k`` mitigation ids among ``REQUEST_SIZE - k`` of the attacker's own clean
  ids (it contributed them, so it may ask for them back);
* ``"sybil"`` (c): the mitigation ids dealt over many accounts, one id per request,
  interleaved in time with the benign users' requests;
* ``"aware"`` (e): the attacker requests only the half of its mitigation samples a
  surrogate scores least suspicious, in requests of :data:`REQUEST_SIZE`.

(d), each camouflage or poison sample with its own trigger, needs its own training: it
is the attack family ``"bn_varied"`` (:mod:`bdunlearn.attacks.varied`), which the track
runs under every strategy above like any family (docs/benchmark.md).

How a service screens a stream (:func:`screen_stream`): a per-request screen sees each
request as sent (a per-sample detector scores each id; a batch detector each request's
windows, so a one-id request is never refused); a *stream* screen pools every pending
request across accounts in arrival order and screens the pooled sequence in windows
(:class:`bdunlearn.detect.BatchFilter` on the concatenation), refusing every id of a
flagged window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .checks import integer, number

REQUEST_SIZE = 10  # ids per request of a batching attacker and of a benign user
DILUTIONS = (1, 3, 5)  # attack ids per request of the dilution strategies
SYBIL_ACCOUNTS = 30  # accounts the Sybil attacker spreads its requests over
AWARE_KEEP = 0.5  # share of its mitigation samples the detector-aware attacker requests


@dataclass(frozen=True)
class Request:
    """One request: the ``account`` that sent it, its ``ids``, and whether the attacker
    sent it (``attack``: ground truth for scoring, never seen by a screen)."""

    account: str
    ids: np.ndarray
    attack: bool = False


@dataclass(frozen=True)
class Plan:
    """What the attacker holds: its ``mitigation`` ids in its request order, the clean
    ``own`` ids it contributed itself, and ``surrogate``: a suspicion score per
    mitigation id (high: suspicious) from a model of its own, or ``None``."""

    mitigation: np.ndarray
    own: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    surrogate: np.ndarray | None = None


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).ravel()


def _chunks(ids: np.ndarray, size: int) -> list[np.ndarray]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _burst(attack: list[Request], benign, rng) -> list[Request]:
    """The attacker's requests sent back to back at a random point of the benign ones."""
    users = [Request(f"user{i}", _ids(b)) for i, b in enumerate(benign)]
    at = int(rng.integers(0, len(users) + 1))
    return users[:at] + attack + users[at:]


def _interleave(attack: list[Request], benign, rng) -> list[Request]:
    """The attacker's requests at random points among the benign ones (each side keeps
    its own order)."""
    users = [Request(f"user{i}", _ids(b)) for i, b in enumerate(benign)]
    slots = np.zeros(len(users) + len(attack), dtype=bool)
    slots[rng.choice(len(slots), len(attack), replace=False)] = True
    a, u = iter(attack), iter(users)
    return [next(a) if s else next(u) for s in slots]


def batches(plan: Plan, benign, rng, *, size: int = REQUEST_SIZE) -> list[Request]:
    """The benchmark's attacker: its whole request order from one account, in requests
    of ``size`` ids, sent in one burst among the benign requests."""
    size = integer("request size", size, 1)
    mine = [Request("attacker", c, True) for c in _chunks(_ids(plan.mitigation), size)]
    return _burst(mine, benign, rng)


def single(plan: Plan, benign, rng) -> list[Request]:
    """(a) One id per request, from one account, in one burst: a screen that scores each
    request as sent sees one id at a time, so a batch test never sees a batch."""
    return batches(plan, benign, rng, size=1)


def dilute(plan: Plan, benign, rng, *, k: int, size: int = REQUEST_SIZE) -> list[Request]:
    """(b) Dilution: every request holds ``k`` mitigation ids (the last one fewer if they
    run out) among ``size - k`` of the attacker's own clean ids, drawn without
    replacement, in one burst from one account. The attacker contributed those clean
    samples itself, so it may ask for them back; it needs ``size - k`` of them for every
    ``k`` mitigation ids."""
    size = integer("request size", size, 2)
    k = integer("attack ids per request k", k, 1, size - 1)
    attack, own = _ids(plan.mitigation), _ids(plan.own)
    chunks = _chunks(attack, k)
    need = len(chunks) * (size - k)
    if need > len(own):
        raise ValueError(f"dilution at k = {k} needs {need} of the attacker's own clean ids "
                         f"({size - k} per request of {size}), but the plan holds {len(own)}")
    fill = rng.permutation(own)[:need].reshape(len(chunks), size - k)
    mine = [Request("attacker", rng.permutation(np.concatenate([c, f])), True)
            for c, f in zip(chunks, fill)]
    return _burst(mine, benign, rng)


def sybil(plan: Plan, benign, rng, *, accounts: int = SYBIL_ACCOUNTS, size: int = 1
          ) -> list[Request]:
    """(c) Sybil: the mitigation ids dealt round-robin over ``accounts`` accounts, each
    sending its share ``size`` ids per request, every request at a random point among
    the benign users' requests (the attacker's own order kept)."""
    accounts = integer("Sybil accounts", accounts, 1)
    size = integer("request size", size, 1)
    attack = _ids(plan.mitigation)
    shares = [attack[a::accounts] for a in range(min(accounts, max(len(attack), 1)))]
    per = [[Request(f"sybil{a}", c, True) for c in _chunks(s, size)]
           for a, s in enumerate(shares)]
    mine = [r for turn in range(max((len(p) for p in per), default=0))
            for p in per if turn < len(p) for r in [p[turn]]]
    return _interleave(mine, benign, rng)


def least_suspicious(plan: Plan, keep: float = AWARE_KEEP) -> np.ndarray:
    """The ``keep`` share (at least one) of the mitigation ids the surrogate scores least
    suspicious, least suspicious first (ties: the attacker's request order)."""
    keep = number("share kept", keep, 0, 1, low_open=True)
    attack = _ids(plan.mitigation)
    if plan.surrogate is None:
        raise ValueError("detector-aware selection needs the plan's surrogate scores, got None")
    s = np.asarray(plan.surrogate, dtype=np.float64).ravel()
    if s.shape != attack.shape:
        raise ValueError(f"the surrogate scores {s.size} ids, the plan holds {attack.size} "
                         "mitigation ids; it must score each once")
    n = max(1, int(round(keep * len(attack))))
    return attack[np.argsort(s, kind="stable")[:n]]


def aware(plan: Plan, benign, rng, *, keep: float = AWARE_KEEP, size: int = REQUEST_SIZE
          ) -> list[Request]:
    """(e) Detector-aware selection: the attacker scores its mitigation samples with a
    surrogate (``plan.surrogate``) and requests only the ``keep`` share it scores least
    suspicious, least suspicious first, in requests of ``size`` from one account in one
    burst. It gives up the rest, so fewer camouflage samples leave the model."""
    picked = least_suspicious(plan, keep)
    return batches(Plan(picked, plan.own), benign, rng, size=size)


STRATEGIES = {"batches": batches, "single": single,
              **{f"dilute{k}": partial(dilute, k=k) for k in DILUTIONS},
              "sybil": sybil, "aware": aware}


def stream(name: str, plan: Plan, benign, rng, **knobs) -> list[Request]:
    """The request stream of strategy ``name`` (one of :data:`STRATEGIES`)."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown attacker strategy {name!r}; choose one of "
                         f"{', '.join(STRATEGIES)}")
    return STRATEGIES[name](plan, benign, rng, **knobs)


def screen_stream(requests: list[Request], screen, *, pooled: bool = False
                  ) -> list[np.ndarray]:
    """Which ids of each request ``screen(ids) -> bool per id`` refuses: each request as
    sent, or (``pooled``) every pending request across accounts at once, in arrival
    order (a stream screen: the windows of a batch filter then span accounts)."""
    if not pooled:
        return [np.asarray(screen(r.ids), dtype=bool) for r in requests]
    if not requests:
        return []
    flags = np.asarray(screen(np.concatenate([r.ids for r in requests])), dtype=bool)
    return np.split(flags, np.cumsum([len(r.ids) for r in requests])[:-1])


def clusters(features, ids, users: int, size: int, rng) -> list[np.ndarray]:
    """Correlated benign users: ``users`` requests, each a random seed id of ``ids`` and
    its ``size - 1`` nearest neighbours (cosine on ``features``, one row per id) among the
    ids no earlier user took: a user deleting near-duplicates, or the photos nearest one
    image."""
    import torch

    ids = _ids(ids)
    users, size = integer("correlated users", users, 1), integer("request size", size, 1)
    f = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
    if f.shape[0] != len(ids):
        raise ValueError(f"features hold {f.shape[0]} rows for {len(ids)} ids")
    if users * size > len(ids):
        raise ValueError(f"{users} correlated users of {size} ids need {users * size} ids, "
                         f"the population holds {len(ids)}")
    free = np.ones(len(ids), dtype=bool)
    out = []
    for _ in range(users):
        seed = int(rng.choice(np.flatnonzero(free)))
        sim = (f @ f[seed]).numpy()
        sim[~free] = -np.inf
        rows = np.argsort(-sim, kind="stable")[:size]
        free[rows] = False
        out.append(ids[rows])
    return out


def benign_requests(ids, users: int, size: int, rng) -> list[np.ndarray]:
    """``users`` benign requests of ``size`` ids each, drawn from ``ids`` without
    replacement (fewer users when ``ids`` hold fewer)."""
    ids = rng.permutation(_ids(ids))
    users, size = integer("benign users", users, 1), integer("request size", size, 1)
    n = min(users, len(ids) // size)
    return [ids[i * size:(i + 1) * size] for i in range(n)]
