"""The README's results table, generated from ``results/*.csv``: ``python -m bdunlearn.summary``.

Each row is one claim of the three papers (defined once in :mod:`bdunlearn.claims`): what
the paper reports, what this package measured, and whether they agree. The table is
written between the markers ``<!-- results:start -->`` and ``<!-- results:end -->`` of
README.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from . import claims

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _tables(results: Path) -> dict[str, pd.DataFrame]:
    """The notebooks' CSVs found in ``results``, keyed by notebook stem."""
    tables = {}
    for p in sorted(results.glob("[0-9][0-9]_*.csv")):
        try:
            tables[p.stem] = pd.read_csv(p)
        except pd.errors.EmptyDataError:  # a table with no stored run yet
            tables[p.stem] = pd.DataFrame()
    return tables


def table(results: Path) -> str:
    """The README's results table: one row per claim of :mod:`bdunlearn.claims` measured
    from the CSVs in ``results``, judged at the profile of the run that wrote them."""
    timings = results / "timings.csv"
    profile = pd.read_csv(timings).profile.iloc[0] if timings.is_file() else "default"
    rows = claims.readme_rows(_tables(results), profile)
    if not rows:
        return "_No results yet: run `make reproduce`._"
    lines = ["| claim | paper | measured here (mean over seeds) | per seed: mean [95% t-interval] "
             "| verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {p} | {m} | {s} | {v} |" for c, p, m, s, v in rows]
    lines += ["", provenance_line(_tables(results))]
    if timings.is_file():
        t = pd.read_csv(timings)
        lines += ["", f"Tables rendered on {t.date.max()} on {t.machine.iloc[0]}, profile "
                  f"`{t.profile.iloc[0]}`; wall time per notebook: "
                  + ", ".join(f"{r.notebook} {r.seconds / 60:.1f} min" for r in t.itertuples())
                  + f" (total {t.seconds.sum() / 60:.1f} min)."]
    return "\n".join(lines)


def provenance_line(tables: dict[str, pd.DataFrame]) -> str:
    """Where and when the stored runs behind the tables were computed, per precision and
    device: dates, processors and commits (from the rows' provenance columns)."""
    rows = [t for t in tables.values() if {"precision", "device", "date"} <= set(t.columns)]
    if not rows:
        return "The tables carry no provenance columns."
    every = pd.concat(rows, ignore_index=True)
    parts = []
    for (precision, device), g in every.groupby(["precision", "device"]):
        parts.append(f"{precision} on {device}: computed {g.date.min()} to {g.date.max()} on "
                     f"{'; '.join(sorted(g.processor.dropna().unique()))} "
                     f"(commits {', '.join(sorted(g.commit.dropna().astype(str).unique()))})")
    return "Stored runs behind these rows: " + "; ".join(parts) + "."


def crosscheck(columns=("asr_before", "asr_after", "mu_auroc", "sms_auroc"),
               path: Path = ROOT / "results" / "crosscheck.csv") -> pd.DataFrame | None:
    """The cross-check against the BAU authors' code (``tools/authors_crosscheck.py``):
    mean, min and max over seeds of each of ``columns`` the CSV holds, per source (the
    authors' code or the package) and shard count; ``None`` when ``path`` does not exist."""
    if not Path(path).is_file():
        return None
    df = pd.read_csv(path)
    cols = [c for c in columns if c in df]
    out = df.groupby(["source", "shards"])[cols].agg(["mean", "min", "max"])
    out[("seeds", "")] = df.groupby(["source", "shards"]).seed.nunique()
    return out.round(3)


def update_readme(readme: Path, results: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{table(results)}\n{END}", text, flags=re.S)
    readme.write_text(new)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--print", action="store_true", help="print the table, leave README alone")
    args = ap.parse_args(argv)
    if args.print:
        print(table(Path(args.results)))
    else:
        update_readme(Path(args.readme), Path(args.results))


if __name__ == "__main__":
    main()
