"""The README's results table, generated from ``results/*.csv``: ``python -m bdunlearn.summary``.

Each row is one claim of the three papers (defined once in :mod:`bdunlearn.claims`): what
the paper reports, what this package measured, and whether they agree. The table is
written between the markers ``<!-- results:start -->`` and ``<!-- results:end -->`` of
README.md; the request-detection benchmark's leaderboard (notebook 07) between
``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from . import claims

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
BENCH_START, BENCH_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def _tables(results: Path, pattern: str = "[0-9][0-9]_*.csv") -> dict[str, pd.DataFrame]:
    """The notebooks' CSVs found in ``results`` (those matching ``pattern``), keyed by
    notebook stem."""
    tables = {}
    for p in sorted(results.glob(pattern)):
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
    tables = _tables(results)
    rows = claims.readme_rows(tables, profile)
    if not rows:
        return "_No results yet: run `make reproduce`._"
    lines = ["| claim | paper | measured here: k of n runs [95% Wilson] or mean over seeds "
             "[95% t-interval] | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {p} | {m} | {v} |" for c, p, m, v in rows]
    lines += ["", provenance_line(tables)]
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
        cpus = sorted(g.processor.dropna().unique())
        pooled = (f", pooling seeds from {len(cpus)} processors" if len(cpus) > 1 else "")
        parts.append(f"{precision} on {device}: computed {g.date.min()} to {g.date.max()} on "
                     f"{'; '.join(cpus)}{pooled} "
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


def _cell(values, pct: bool = True) -> str:
    """``mean [lo, hi]`` of a rate or an AUROC over seeds (:func:`bdunlearn.metrics.interval`
    within [0, 1]), as a percentage or, ``pct`` False, to two decimals."""
    from .metrics import interval

    values = [v for v in values if pd.notna(v)]
    if not values:
        return "n/a"
    mean, lo, hi = interval(values, bounds=(0.0, 1.0))
    f = "{:.0%}".format if pct else "{:.2f}".format
    return f(mean) + ("" if lo is None else f" [{f(lo)}, {f(hi)}]")


def benchmark_table(results: Path) -> str:
    """The README's request-detection leaderboard from ``07_request_detection.csv``: per
    attack family, shard count and detector, over seeds (mean [95% t-interval]; beside
    each TPR the mean false-positive rate its threshold reached on held-out benign requests)."""
    from .attack import FAMILY_TITLES
    from .claims import operating_point
    from .store import provenance_groups

    stem = "07_request_detection"
    t = _tables(results, f"{stem}.csv").get(stem, pd.DataFrame())
    if t.empty:
        return "_No stored runs yet: run notebook 07 (`make reproduce ARGS=\"--only 07\"`)._"
    lines = []
    for label, g in provenance_groups(t):
        per_seed = g.groupby(["variant", "shards", "detector", "seed"]).first().reset_index()
        fpr = operating_point(per_seed)  # the filters' false-positive rate
        lines += [f"Computed in {label}:" if label else "", "",
                  f"| attack | S | detector | AUROC (random) | TPR at 1% FPR (reached) | "
                  f"TPR at {float(fpr):.0%} FPR (reached) | AUROC (hard) | final ASR: no "
                  "filter / behind it "
                  "| benign refused (random, hard) | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for (v, s, d), r in per_seed.groupby(["variant", "shards", "detector"]):
            lines.append(
                f"| {FAMILY_TITLES.get(v, v)} | {s} | {d} | {_cell(r.auroc_random, False)} | "
                f"{_cell(r['tpr@0.01_random'])} ({r['fpr@0.01_random'].mean():.1%}) | "
                f"{_cell(r[f'tpr@{fpr}_random'])} ({r[f'fpr@{fpr}_random'].mean():.1%}) | "
                f"{_cell(r.auroc_hard, False)} | {_cell(r.asr_after)} / "
                f"{_cell(r.asr_filtered)} | {r.benign_refused_random.mean():.1f}, "
                f"{r.benign_refused_hard.mean():.1f} of {int(r.benign_requests.max())} | "
                f"{r.seed.nunique()} |")
        lines.append("")
    return "\n".join(lines).strip()


def _between(text: str, start: str, end: str, body: str, readme: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    return re.sub(re.escape(start) + ".*?" + re.escape(end),
                  lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def update_readme(readme: Path, results: Path) -> None:
    text = _between(readme.read_text(), START, END, table(results), readme)
    if BENCH_START in text:
        text = _between(text, BENCH_START, BENCH_END, benchmark_table(results), readme)
    readme.write_text(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--print", action="store_true", help="print the table, leave README alone")
    args = ap.parse_args(argv)
    if args.print:
        print(table(Path(args.results)))
        print(benchmark_table(Path(args.results)))
    else:
        update_readme(Path(args.readme), Path(args.results))


if __name__ == "__main__":
    main()
