"""The README's results table, generated from ``results/*.csv``: ``python -m bdunlearn.summary``.

Each row is one claim of the three papers (defined once in :mod:`bdunlearn.claims`): what
the paper reports, what this package measured, and whether they agree. The table is
written between the markers ``<!-- results:start -->`` and ``<!-- results:end -->`` of
README.md; the request-detection benchmark's leaderboard (notebook 07) between
``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``, its budget selection between
``<!-- budgets:start -->`` and ``<!-- budgets:end -->``, the two precision groups
seed by seed between ``<!-- precision:start -->`` and ``<!-- precision:end -->``, and the
runner's timings between ``<!-- timings:start -->`` and ``<!-- timings:end -->``, in the
README or any page of ``docs/``.
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
    device: dates, processors and how many commits (from the rows' provenance columns; each
    row names its own commit, so the README quotes no commit hash)."""
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
                     f"({g.commit.dropna().nunique()} commits, named in each row's `commit` "
                     "column)")
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


def _gap(best: str, d, detector: str) -> str:
    """A detector's paired difference from the best one (:func:`studies.benchmark.gaps`):
    mean [t-interval] in points of a rate."""
    if detector == best:
        return "best"
    if d is None:
        return "n/a"
    return f"{d.mean:+.0%}" + ("" if d.lo is None else f" [{d.lo:+.0%}, {d.hi:+.0%}]")


def benchmark_table(results: Path, switched: bool = False) -> str:
    """The request-detection leaderboard from ``07_request_detection.csv``: per attack
    family, shard count and detector, over seeds (mean [95% t-interval]; beside each TPR
    the mean false-positive rate its threshold reached on held-out benign requests; the
    TPR's paired difference within seed from the best detector of its family and shard
    count). ``switched``: on the runs whose attack switched on only."""
    from .attacks import title
    from .store import provenance_groups
    from .studies.benchmark import gaps, operating_point, switched_runs

    stem = "07_request_detection"
    t = _tables(results, f"{stem}.csv").get(stem, pd.DataFrame())
    if t.empty:
        return "_No stored runs yet: run notebook 07 (`make reproduce ARGS=\"--only 07\"`)._"
    if switched:
        t = switched_runs(t)
        if t.empty:
            return "_No stored run of any family switched on._"
    lines = []
    for label, g in provenance_groups(t):
        per_seed = g.groupby(["variant", "shards", "detector", "seed"]).first().reset_index()
        fpr = operating_point(per_seed)  # the filters' false-positive rate
        gap = gaps(per_seed, ["variant", "shards"], f"tpr@{fpr}_random")
        lines += [f"Computed in {label}:" if label else "", "",
                  f"| attack | S | detector | AUROC (random) | TPR at 1% FPR (reached) | "
                  f"TPR at {float(fpr):.0%} FPR (reached) | its gap to the best, paired | "
                  "AUROC (hard) | final ASR: no filter / behind it "
                  "| benign refused (random, hard) | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (v, s, d), r in per_seed.groupby(["variant", "shards", "detector"]):
            vs = _gap(*gap[(v, s, d)], d)
            lines.append(
                f"| {title(v)} | {s} | {d} | {_cell(r.auroc_random, False)} | "
                f"{_cell(r['tpr@0.01_random'])} ({r['fpr@0.01_random'].mean():.1%}) | "
                f"{_cell(r[f'tpr@{fpr}_random'])} ({r[f'fpr@{fpr}_random'].mean():.1%}) | "
                f"{vs} | {_cell(r.auroc_hard, False)} | {_cell(r.asr_after)} / "
                f"{_cell(r.asr_filtered)} | {r.benign_refused_random.mean():.1f}, "
                f"{r.benign_refused_hard.mean():.1f} of {int(r.benign_requests.max())} | "
                f"{r.seed.nunique()} |")
        lines.append("")
    return "\n".join(lines).strip()


def budgets_table(results: Path) -> str:
    """Notebook 07's budget selection from ``07_request_detection-budgets.csv``, per
    precision/device group: each candidate's switch-on count over the selection seeds (k of
    n [95% Wilson]), its mean ASR before and after, and the one chosen
    (:func:`bdunlearn.studies.benchmark.budget_view`)."""
    from .store import provenance_groups
    from .studies.benchmark import BUDGETS, budget_view

    t = _tables(results, f"{BUDGETS}.csv").get(BUDGETS, pd.DataFrame())
    if t.empty:
        return ("_No budget run stored yet: run notebook 07's budgets section "
                "(`python tools/device/section.py 07_request_detection-budgets`)._")
    lines = []
    for label, g in provenance_groups(t):
        view = budget_view(g).reset_index()
        cpus = "; ".join(sorted(g.processor.dropna().unique())) if "processor" in g else ""
        when = f" on {cpus}, {g.date.min()} to {g.date.max()}" if cpus else ""
        lines += [f"Computed in {label}{when}:" if label else "", "",
                  "| " + " | ".join(view.columns) + " |",
                  "|" + "---|" * len(view.columns)]
        lines += ["| " + " | ".join(str(x) for x in r) + " |"
                  for r in view.itertuples(index=False)]
        lines.append("")
    return "\n".join(lines).strip()


def precision_table(results: Path) -> str:
    """The same attack in both precision groups, seed by seed: the BN and IT attacks at one
    model as notebook 01 stores them (its group) and as notebook 07 stores its ``bn`` and
    ``it`` families at one model (same attack, same counts, same seed; its group), so a
    reader comparing the two notebooks sees what the precision alone moves."""
    tables = _tables(results)
    one = tables.get("01_attack", pd.DataFrame())
    bench = tables.get("07_request_detection", pd.DataFrame())
    if one.empty or bench.empty or "precision" not in one or "precision" not in bench:
        return "_Both notebooks' stored runs are needed for this comparison._"
    if "unlearning" in one:
        one = one[one.unlearning == "exact"]
    one = one.sort_values("requested").groupby(["variant", "seed"])
    a = pd.DataFrame({"before": one.asr.first(), "after": one.asr.last(),
                      "group": one.precision.first() + ", " + one.processor.first()})
    b = bench[bench.shards == 1].groupby(["variant", "seed"]).first()
    b = pd.DataFrame({"before": b.asr_before, "after": b.asr_after,
                      "group": b.precision + ", " + b.processor})
    both = a.join(b, how="inner", suffixes=(" (01)", " (07)"))
    if both.empty:
        return "_No seed is stored in both notebooks yet._"
    lines = ["| attack | seed | 01: ASR before -> after | its group | 07: ASR before -> after "
             "| its group |", "|---|---|---|---|---|---|"]
    for (variant, seed), r in both.iterrows():
        lines.append(f"| {variant.upper()} | {seed} | {r['before (01)']:.1%} -> "
                     f"{r['after (01)']:.1%} | {r['group (01)']} | {r['before (07)']:.1%} -> "
                     f"{r['after (07)']:.1%} | {r['group (07)']} |")
    return "\n".join(lines)


def _between(text: str, start: str, end: str, body: str, readme: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    return re.sub(re.escape(start) + ".*?" + re.escape(end),
                  lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def timings_table(results: Path) -> str:
    """Per notebook: wall time, model slices trained and precision of the last run of the
    runner that wrote ``results`` (``results/timings.csv``), with its machine and date."""
    path = results / "timings.csv"
    if not path.is_file():
        return "_No timings yet: run `make reproduce`._"
    t = pd.read_csv(path)
    lines = ["| notebook | profile | precision | model slices trained | wall time |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.notebook} | {r.profile} | {r.precision} | {int(r.slices_trained)} | "
              f"{r.seconds:.1f} s |" for r in t.itertuples()]
    return "\n".join(lines + ["", f"Run on {t.date.max()} on {t.machine.iloc[0]}; total "
                              f"{t.seconds.sum():.1f} s."])


BLOCKS = {"results": table, "benchmark": benchmark_table, "budgets": budgets_table,
          "benchmark-switched": lambda results: benchmark_table(results, switched=True),
          "precision": precision_table,
          "timings": timings_table}


def update(page: Path, results: Path) -> bool:
    """Rewrite every generated block (``<!-- name:start -->`` ... ``<!-- name:end -->``,
    ``name`` one of :data:`BLOCKS`) that ``page`` holds; whether it held any."""
    text = page.read_text()
    found = [n for n in BLOCKS if f"<!-- {n}:start -->" in text]
    for name in found:
        text = _between(text, f"<!-- {name}:start -->", f"<!-- {name}:end -->",
                        BLOCKS[name](results), page)
    if found:
        page.write_text(text)
    return bool(found)


def update_readme(readme: Path, results: Path) -> None:
    """The README's generated blocks (it must hold the results table's markers), then those
    of the pages in ``docs/`` beside it."""
    if START not in readme.read_text():
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    update(readme, results)
    for page in sorted((readme.parent / "docs").glob("*.md")):
        update(page, results)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--print", action="store_true", help="print the table, leave README alone")
    args = ap.parse_args(argv)
    if args.print:
        for make in BLOCKS.values():
            print(make(Path(args.results)), end="\n\n")
    else:
        update_readme(Path(args.readme), Path(args.results))


if __name__ == "__main__":
    main()
