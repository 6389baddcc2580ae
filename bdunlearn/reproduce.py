"""Run every numbered notebook through papermill: ``python -m bdunlearn.reproduce``.

Executed notebooks are saved beside their results (``results/<stem>.ipynb``), never over
the sources; the wall time of each goes to ``results/timings.csv``. The ``default``
profile writes ``results/`` and ``figures/``; other profiles write ``results/<profile>/``
and ``figures/<profile>/`` so they never overwrite the committed default run. Trained
models come from the checkpoint cache, so a second run retrains nothing.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from .profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent


def _value(text: str):
    """A command-line parameter value: a Python literal when it parses, else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, restricted to ``only`` (numbers or stems)."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    picked = [p for p in found if any(p.stem == o or p.stem.startswith(o) for o in only)]
    if len(picked) < len(only) or not picked:
        names = ", ".join(p.stem for p in found)
        raise SystemExit(f"--only {','.join(only)} matches no notebook; choose from {names}")
    return picked


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def run(profile: str, only=None, params=None, results=None, figures=None,
        folder: Path = ROOT / "notebooks") -> pd.DataFrame:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    sub = "" if profile == "default" else profile
    results = Path(results) if results else ROOT / "results" / sub
    figures = Path(figures) if figures else ROOT / "figures" / sub
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    rows, host = [], machine()
    todo = notebooks(folder, only)
    for i, nb in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {nb.stem} (profile {profile})", flush=True)
        out = results / f"{nb.stem}.ipynb"
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(out), cwd=str(folder), progress_bar=True, kernel_name="python3",
                parameters={"profile": profile, "results_dir": str(results),
                            "figures_dir": str(figures), **(params or {})})
        except PapermillExecutionError as err:
            raise SystemExit(f"{nb.stem} failed in cell {err.cell_index} "
                             f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
                             f"the executed notebook with the traceback is {out}") from None
        seconds = time.perf_counter() - start
        print(f"    done in {seconds:.0f} s -> {out}", flush=True)
        rows.append({"notebook": nb.stem, "profile": profile, "seconds": round(seconds, 1),
                     "date": dt.date.today().isoformat(), "machine": host})
        timings = _record(results / "timings.csv", rows)  # kept if a later notebook fails
    return timings


def _record(path: Path, rows: list[dict]) -> pd.DataFrame:
    """Merge ``rows`` into the timings table at ``path`` (newer rows win) and save it."""
    timings = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_csv(path)
        timings = pd.concat([old[~old.notebook.isin(timings.notebook)], timings])
    timings = timings.sort_values("notebook")
    timings.to_csv(path, index=False)
    return timings


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES))
    ap.add_argument("--only", help="comma-separated notebook numbers or stems, e.g. 01,04")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (Python literal), e.g. -p dataset mnist")
    ap.add_argument("--results", help="results folder (default: results/[profile])")
    ap.add_argument("--figures", help="figures folder (default: figures/[profile])")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    only = args.only.split(",") if args.only else None
    timings = run(args.profile, only, params, args.results, args.figures)
    print(timings[["notebook", "seconds"]].to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
