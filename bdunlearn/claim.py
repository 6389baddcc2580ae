"""What one claim is (:class:`Claim`), and the wording its numbers share.

Each notebook's claims are written beside its study (``CLAIMS`` at the end of
``bdunlearn/studies/<study>.py``) from these pieces; :mod:`bdunlearn.claims` gathers them
by name and checks them. How a verdict follows from the numbers is
:mod:`bdunlearn.verdicts`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from . import verdicts as vd
from .config import PROFILES

ALL_PROFILES = tuple(PROFILES)


@dataclass(frozen=True)
class Claim:
    """One claim: ``measure(table) -> numbers`` (``None`` when the table has no rows for
    it), ``holds(numbers, thresholds) -> bool``, ``describe(numbers) -> str`` (the
    README's "measured here"), ``thresholds[profile]``, and where it is asserted."""

    name: str
    notebook: str
    statement: str
    paper: str
    measure: Callable[[pd.DataFrame], dict | None]
    holds: Callable[[dict, Mapping[str, float]], bool]
    describe: Callable[[dict], str]
    thresholds: Mapping[str, Mapping[str, float]]
    asserted_at: tuple[str, ...] = ALL_PROFILES
    in_readme: bool = True
    # the README rows by the rules of bdunlearn.verdicts: decide(table, thresholds) ->
    # [(setting, measured, verdict)], counts per run and intervals over seeds
    decide: Callable[[pd.DataFrame, Mapping[str, float]], list[tuple[str, str, str]]] | None = (
        None)
    table_name: str | None = None  # the results table it reads (default: its notebook's)
    # each number rests on its own rows (one rate per setting): a seed need not hold all
    # of them to count, and each number says its own seed count (see whole_seeds)
    independent: bool = False

    @property
    def table(self) -> str:
        return self.table_name or self.notebook


def same(values: dict) -> dict:
    """The same thresholds at every profile."""
    return {p: dict(values) for p in ALL_PROFILES}


# ------------------------------------------------------------ wording

def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def points(before: float, after: float) -> str:
    return f"{100 * (after - before):+.1f} points"


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def rate(values) -> str:
    return vd.spread(values, (0.0, 1.0)).text(pct)


# ------------------------------------------------------------ per-seed numbers of the README rows
# Each decide(table, thresholds) -> [(setting, measured, verdict)] follows bdunlearn.verdicts:
# a yes/no outcome per run is k of n with a Wilson interval, a continuous figure a
# t-interval over seeds, an effect its paired per-seed difference from its own control.

def ends(d: pd.DataFrame, col: str = "asr") -> tuple[dict, dict]:
    """Per seed, ``col`` before the first request and after the last."""
    g = d.sort_values("requested").groupby("seed")[col]
    return g.first().to_dict(), g.last().to_dict()


def switches(d: pd.DataFrame) -> dict:
    """Per seed, whether the run switched on (:func:`bdunlearn.verdicts.switched_on`)."""
    before, after = ends(d)
    return {s: bool(vd.switched_on(before[s], after[s])) for s in before}
