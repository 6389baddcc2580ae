"""A notebook's results tables: shown over seeds (:func:`over_seeds`), written as CSV
with the results contract's columns first (:func:`save_table`), into the run's folders
(:func:`output_dirs`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import RunConfig
from .metrics import interval, value_range
from .store import GROUP, PROVENANCE


def output_dirs(cfg: RunConfig) -> tuple[Path, Path]:
    """The run's results and figures folders (see :mod:`bdunlearn.config`), created."""
    res, fig = Path(cfg.results_dir), Path(cfg.figures_dir)
    res.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    return res, fig


def over_seeds(table: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, 95% t-interval and seed count of ``values`` per group ``by`` (a notebook's
    display of a stored table; :func:`bdunlearn.metrics.interval`). Rows of several
    precisions or devices are never averaged together: each is a group of its own,
    its precision and device leading ``by``."""
    if table.empty:
        return pd.DataFrame({"stored runs": [0]})
    if set(GROUP) <= set(table.columns) and len(table.groupby(list(GROUP))) > 1:
        by = [*GROUP, *by]
    out = {}
    for key, rows in table.groupby(by, sort=True):
        per_seed = rows.groupby("seed")[values].mean()
        cells = {}
        for v in values:
            present = per_seed[v].dropna().tolist()
            if not present:
                cells[v], cells[f"{v} 95% CI"] = float("nan"), ""
                continue
            mean, lo, hi = interval(present, bounds=value_range(v))
            cells[v] = round(mean, 3)
            cells[f"{v} 95% CI"] = "" if lo is None else f"[{lo:.3f}, {hi:.3f}]"
        cells["seeds"] = len(per_seed)
        out[key] = cells
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.names = by
    return frame


def save_table(df: pd.DataFrame, stem: str, results_dir: Path, columns=None) -> Path:
    """Write ``<results_dir>/<stem>.csv``: ``columns`` (the contract's) first, in their
    order, then the others, then the provenance columns (:data:`bdunlearn.store.PROVENANCE`)."""
    columns = list(columns or [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results table {stem} lacks the columns {missing}")
    last = [c for c in PROVENANCE if c in df.columns and c not in columns]
    df = df[columns + [c for c in df.columns if c not in columns and c not in last] + last]
    path = Path(results_dir) / f"{stem}.csv"
    df.to_csv(path, index=False)
    return path
