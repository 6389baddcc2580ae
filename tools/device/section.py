"""Compute the missing runs of one table of a notebook's study, without the notebook.

    python tools/device/section.py TABLE [--profile P] [-p NAME VALUE]...

``TABLE`` is a study table such as ``06_fidelity-epochs`` (notebook 06's 20- against
100-epoch section); ``-p`` takes the notebook's parameters as the runner does (``-p seeds
0-9 -p device cuda -p store_dir DIR``). Each run is stored as it finishes, under the very
key the notebook would store it (:meth:`bdunlearn.studies.Notebook.collect` on that table
alone), in the study's run order (seed by seed), so a run cut by a deadline keeps every
run that finished. Nothing is rendered and no claim is checked: the notebook does that
later from the store (``python -m bdunlearn.reproduce -p compute False``). The device kit
(``tools/device/run.sh``) runs notebook 06's longest section this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="a study table, e.g. 06_fidelity-epochs")
    ap.add_argument("--profile", default=None, help="default: $BDUNLEARN_PROFILE, else 'default'")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"), help="a notebook parameter (Python literal)")
    args = ap.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bdunlearn import studies
    from bdunlearn.reproduce import _value

    stem = next((s for s in studies.STEMS if args.table == s or args.table.startswith(s + "-")),
                None)
    if stem is None:
        raise SystemExit(f"section: {args.table!r} is no study table; give a notebook stem "
                         f"or stem-section such as 06_fidelity-epochs (notebooks: "
                         f"{', '.join(studies.STEMS)})")
    params = {k: _value(v) for k, v in args.parameter}
    unknown = sorted(set(params) - set(studies.study(stem).PARAMETERS))
    if unknown:
        raise SystemExit(f"section: -p {unknown[0]} is no parameter of {stem}")
    try:
        cfg = studies.config(stem, args.profile, **params)
    except ValueError as exc:
        raise SystemExit(f"section: {exc}") from None
    nb = studies.Notebook(stem, cfg)
    runs = nb.runs(args.table)
    if not runs:
        tables = sorted({r.table for r in nb.runs()})
        raise SystemExit(f"section: {args.table} has no runs at these settings; tables of "
                         f"{stem}: {', '.join(tables)}")
    todo = studies.missing(stem, cfg)
    todo = [r for r in todo if r.table == args.table]
    print(f"section {args.table} ({cfg.profile}, {cfg.precision}, {cfg.device_type}, seeds "
          f"{list(cfg.seeds)}): {len(todo)} of {len(runs)} runs to compute into "
          f"{cfg.store_dir}", flush=True)
    table = nb.collect(args.table, progress=False)
    print(f"section {args.table}: {len(todo)} runs computed, {len(table)} rows stored at "
          "these settings", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
