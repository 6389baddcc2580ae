"""Store the rows of the `default` run committed before the run store existed as runs.

The committed tables of 2026-11-24 (results commit fffd92d, computed by the code of its
parent 6cbc247 on the 2-core AMD EPYC with AVX512-BF16, bf16, torch 2.13.0+cpu) hold
seeds 0 and 1 of notebooks 01, 02 and 04 and seed 0 of notebook 05 (and its clean-model
Neural Cleanse rows of seeds 0 and 1). The code that computes those rows has not changed
since (``git diff 6cbc247 -- bdunlearn`` touches no attack, training, unlearning,
detection or defense code), so they are stored as version-1 runs of today's studies,
each row labelled with where and when it was computed. Notebook 03's rows are not
imported: they lack the optimiser-step counts the defense-cost claim now uses, and the
04 filter trajectories were never saved.

    python tools/import_committed_runs.py [--results results] [--at 6cbc247]
"""

import argparse
import io
import subprocess
from pathlib import Path

import pandas as pd

from bdunlearn import studies
from bdunlearn.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
PROVENANCE = dict(precision="bf16", device="cpu", processor="AMD EPYC (2 cores, AVX512-BF16)",
                  torch="2.13.0+cpu", date="2026-11-24", commit="6cbc247")


def committed(table: str, commit: str = "fffd92d") -> pd.DataFrame:
    text = subprocess.run(["git", "show", f"{commit}:results/{table}.csv"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    return pd.read_csv(io.StringIO(text))


def rows_of(run, table: pd.DataFrame) -> pd.DataFrame:
    d = table[table.seed == run.seed]
    for k, v in run.setting:
        if k == "part":
            d = d[(d.attack == "none") == (v == "clean")]
        else:
            d = d[d[k] == v]
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(ROOT / "results" / "runs"))
    args = ap.parse_args(argv)
    store = RunStore(args.store)
    for stem, drop in (("01_attack", []), ("02_unlearning_trajectory", []),
                       ("04_detection", ["aurocs", "positives"]),
                       ("05_backdoor_erasure", [])):
        mod = studies.study(stem)
        cfg = studies.config(stem, "default", device="cpu", precision="bf16", seeds=(0, 1),
                             store_dir=args.store)
        table = committed(stem).drop(columns=drop)
        for run in mod.runs(cfg):
            if run.table != stem:
                continue
            rows = rows_of(run, table)
            if rows.empty:
                print(f"{stem} {run.label}: not in the committed table")
                continue
            rows = rows.dropna(axis=1, how="all")
            skey, rkey = studies.stored_key(mod, run, cfg)
            if store.has(run.table, skey, rkey):
                print(f"{stem} {run.label}: already stored")
                continue
            store.put(run.table, skey, rkey, mod.VERSION, rows.reset_index(drop=True),
                      PROVENANCE)
            print(f"{stem} {run.label}: {len(rows)} rows stored")


if __name__ == "__main__":
    main()
