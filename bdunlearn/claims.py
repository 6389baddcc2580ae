"""The papers' claims by name: each notebook's asserted or reported, and the README's rows.

Each claim is written once, beside the study whose table it reads (``CLAIMS`` at the end
of each module of :mod:`bdunlearn.studies`; a :class:`~bdunlearn.claim.Claim`: how it is
measured, its thresholds per profile, its README rows by the rules of
:mod:`bdunlearn.verdicts`). A notebook asserts its claims with ``claims.check(name, table,
profile)``: the claim's numbers are measured from the notebook's tidy table, printed
beside the thresholds, and an ``AssertionError`` with the measured numbers is raised when
the claim fails at a profile where it is asserted (``Claim.asserted_at``; elsewhere it is
reported only). The README's results table (:mod:`bdunlearn.summary`) is built from the
same claims over the saved CSVs (:func:`readme_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .claim import ALL_PROFILES, Claim
from .config import RunConfig
from .store import provenance_groups
from .studies import (
    attack,
    benchmark,
    detection,
    erasure,
    fidelity,
    overhead,
    own_group,
    trajectory,
)

# Every claim by name, in the README's order: the headline (the papers' main claims at both
# epoch counts, from notebook 06's epochs section), then each notebook's own.
CLAIMS: dict[str, Claim] = {c.name: c for c in (
    *fidelity.HEADLINE,
    *attack.CLAIMS,
    *trajectory.CLAIMS,
    *detection.CLAIMS,
    *overhead.CLAIMS,
    *erasure.CLAIMS,
    *fidelity.CLAIMS,
    *benchmark.CLAIMS,
)}


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
