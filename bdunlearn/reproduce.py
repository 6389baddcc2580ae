"""Run every numbered notebook through papermill: ``python -m bdunlearn.reproduce``.

Where the outputs go:

* a complete ``default`` run with no ``-p`` overrides replaces the committed ``results/``
  and ``figures/`` (only once every notebook has finished and passed its claim checks);
* any other run writes ``results/<profile>/`` and ``figures/<profile>/``, or
  ``results/<profile>-<hash>/`` when ``-p`` overrides are given (the hash is of the
  overrides, printed at the start), plus ``<dataset>/`` for a profile of several
  datasets (``paper`` runs each dataset found on disk and names those it cannot find).

Parameters are checked before any notebook starts (names against the notebooks'
``parameters`` cells, values through :func:`bdunlearn.config.resolve`). Each notebook runs
into a temporary folder; its tables, figures and executed copy (``<stem>.ipynb``) move into
place only when it finished, so a failed run keeps the last good outputs (the failed copy
is kept as ``<stem>.failed.ipynb``). Wall times go to ``timings.csv`` beside the tables.
A complete default run also writes a small, readable copy of each executed notebook to
``docs/notebooks/`` (committed; :func:`readable_copy`).
Relative paths in ``BDUNLEARN_*`` environment variables resolve against the caller's
working directory. Trained models come from the checkpoint cache, so a second run
retrains nothing.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from . import cache, config, data
from .store import cpu_name

ROOT = Path(__file__).resolve().parent.parent
READABLE = Path("docs") / "notebooks"  # under ROOT: the default run's executed notebooks
ENV_PATHS = ("BDUNLEARN_CACHE", "BDUNLEARN_DATA", "BDUNLEARN_RESULTS", "BDUNLEARN_FIGURES")
RUNNER_SET = ("profile", "results_dir", "figures_dir")


def _value(text: str):
    """A command-line parameter value: a Python literal when it parses, else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, restricted to ``only``: whole numbers (``"4"`` or
    ``"04"``) or whole stems (``"04_detection"``), each may be given more than once."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    names = ", ".join(p.stem for p in found)
    picked = []
    for o in only:
        match = [p for p in found if _names(o, p)]
        if not match:
            raise SystemExit(f"--only {o!r} matches no notebook; give a number or a "
                             f"stem of {names}")
        picked += [p for p in match if p not in picked]
    return [p for p in found if p in picked]


def _names(text: str, nb: Path) -> bool:
    """Whether ``text`` names notebook ``nb``: its whole stem or its whole number."""
    number = nb.stem.split("_")[0]
    text = str(text).strip()
    return text == nb.stem or (re.fullmatch("[0-9]{1,3}", text) is not None
                               and int(text) == int(number))


def parse_only(text: str | None) -> list[str] | None:
    """``--only``'s comma-separated notebook numbers or stems as a list (``None``: all)."""
    if text is None:
        return None
    only = [o.strip() for o in text.split(",")]
    if not all(only):
        raise SystemExit(f"--only {text!r} names no notebook; give numbers or stems "
                         "such as 01,04")
    return only


def notebook_parameters(nb: Path) -> set[str]:
    """The parameters of notebook ``nb``: its study's list (which its ``parameters`` cell
    holds, a test checks), else the names its ``parameters`` cell assigns."""
    from . import studies

    if nb.stem in studies.STEMS:
        return set(studies.study(nb.stem).PARAMETERS)
    cells = json.loads(Path(nb).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {t.id for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def check_parameters(profile: str, params: dict, todo: list[Path], datasets) -> None:
    """Fail (``SystemExit``) before any notebook runs on an unknown name, or a bad value
    for any of ``datasets``."""
    valid = set().union(*(notebook_parameters(nb) for nb in todo)) - set(RUNNER_SET)
    for name in params:
        if name in RUNNER_SET:
            flag = {"profile": "--profile", "results_dir": "--results",
                    "figures_dir": "--figures"}[name]
            raise SystemExit(f"-p {name}: the runner sets it; use {flag} instead")
        if name not in valid:
            raise SystemExit(f"-p {name}: unknown parameter for "
                             f"{', '.join(p.stem for p in todo)}; choose from "
                             f"{', '.join(sorted(valid))}")
    try:
        for dataset in datasets:
            config.resolve(profile, **{**params, "dataset": dataset})
    except ValueError as exc:
        raise SystemExit(f"-p: {exc}") from None


# Overrides that keep a run's folder: more of the same runs, the same runs re-rendered, or
# runs in another precision or on another device (stored as their own group beside the
# others; every table holds each group, and the claims check the run's own; with
# `-p compute False` and precision "auto", each notebook's largest stored group, so that
# re-renders the committed runs on any CPU).
SAME_RUN = ("seeds", "store_dir", "compute", "precision", "device")


def run_name(profile: str, params: dict) -> str:
    """``profile``, or ``profile-<8 hex digits>`` naming the overrides ``params`` (seeds
    are not an override of what is measured: their runs join the profile's)."""
    params = {k: v for k, v in params.items() if k not in SAME_RUN}
    if not params:
        return profile
    text = json.dumps(params, sort_keys=True, default=repr)
    return f"{profile}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def folders(profile: str, params: dict, dataset: str, only=None, results=None,
            figures=None) -> tuple[Path, Path, Path]:
    """``(results, figures, store)`` folders of a runner run on ``dataset``.

    A complete ``default`` run (no ``--only``, no overrides but seeds) writes the
    committed ``results/`` and ``figures/``; any other run ``results/<run name>/`` (see
    :func:`run_name`), or the ``--results``/``--figures`` folders given. The run store is
    ``store_dir`` when given, else ``runs/`` in the given results folder, else the
    configuration's (:mod:`bdunlearn.config`: the committed ``results/runs/`` for the
    ``default`` profile whatever the overrides, since runs are stored by what they
    measure, and ``results/<profile>/runs/`` for the others).
    """
    profile = config.profile_name(profile)
    committed = (run_name(profile, params) == "default" and not only and results is None
                 and figures is None)
    several = len(config.profile_datasets(profile)) > 1
    name = run_name(profile, params)
    res = Path(results) if results else ROOT / "results" / ("" if committed else name)
    fig = Path(figures) if figures else ROOT / "figures" / ("" if committed else name)
    if params.get("store_dir"):
        store = Path(params["store_dir"]).expanduser().absolute()
    elif results:
        store = Path(results) / "runs" / (dataset if several else "")
    else:
        store = Path(config.resolve(profile, dataset=dataset).store_dir)
    if several:
        res, fig = res / dataset, fig / dataset
    return res, fig, store


def absolute_env_paths(cwd: Path | None = None) -> None:
    """Make relative ``BDUNLEARN_*`` paths absolute against ``cwd`` (the caller's working
    directory), before kernels start elsewhere."""
    cwd = Path.cwd() if cwd is None else cwd
    for name in ENV_PATHS:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str((cwd / Path(value).expanduser()).absolute())


def available(datasets, data_root) -> tuple[list[str], list[str]]:
    """``(found, missing)``: the datasets whose files are on disk, and one sentence for each
    missing one saying how to get it."""
    found, missing = [], []
    for name in datasets:
        try:
            data.load(name, data_root)
        except (FileNotFoundError, ValueError) as exc:
            missing.append(str(exc))
        else:
            found.append(name)
    return found, missing


def machine() -> str:
    import torch

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _kernel_manager():
    """A kernel manager on local sockets (POSIX), so kernels do not warn that they run
    over unencrypted TCP; Windows keeps jupyter_client's TCP default."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if os.name != "posix":
        return AsyncKernelManager

    class LocalSocketKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport(self):
            return "ipc"

        @default("ip")
        def _ip(self):  # socket files <ip>-<port>, removed when the kernel stops
            return str(Path(tempfile.gettempdir()) / f"bdunlearn-kernel-{os.getpid()}")

    return LocalSocketKernelManager


def _move_into(src: Path, dst: Path) -> list[Path]:
    """Move every file of ``src`` into ``dst`` (replacing files of the same name)."""
    dst.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in sorted(src.iterdir()):
        if f.is_file():
            target = dst / f.name
            shutil.move(str(f), str(target))
            moved.append(target)
    return moved


def run(profile: str, only=None, params=None, results=None, figures=None,
        folder: Path = ROOT / "notebooks") -> pd.DataFrame:
    """Run the notebooks (see the module docstring); returns this run's timing rows."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from .studies import renders_stored

    params = dict(params or {})
    absolute_env_paths()
    for key in ("data_root", "store_dir"):  # kernels run in notebooks/, not here
        if isinstance(params.get(key), str) and params[key].strip():
            params[key] = str(Path(params[key]).expanduser().absolute())
    profile = config.profile_name(profile)
    todo = notebooks(folder, only)
    datasets = [params["dataset"]] if "dataset" in params else list(
        config.profile_datasets(profile))
    check_parameters(profile, params, todo, datasets)
    name = run_name(profile, params)
    committed = name == "default" and not only and results is None and figures is None
    found, missing = available(datasets, params.get("data_root"))
    for why in missing:
        print(f"skipped: {why}", flush=True)
    if not found:
        raise SystemExit(f"none of the datasets {', '.join(datasets)} is on disk")
    res_top, fig_top, _ = folders(profile, params, found[0], only, results, figures)
    if len(config.profile_datasets(profile)) > 1:
        res_top, fig_top = res_top.parent, fig_top.parent
    print(f"run {name}" + (f" (overrides {params})" if params else "")
          + f": tables to {res_top}, figures to {fig_top}", flush=True)
    own = {nb: notebook_parameters(nb) for nb in todo}  # papermill warns about others
    host, rows, staged = machine(), [], []
    for dataset in found:
        res_dir, fig_dir, store = folders(profile, params, dataset, only, results, figures)
        try:
            res_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(f"--results {res_dir}: cannot create the folder "
                             f"({err.strerror or err}); give a writable folder") from None
        remove_orphans(res_dir)
        precision = ("stored" if renders_stored(params.get("compute"), params.get("precision"))
                     else config.resolve(profile, dataset=dataset,
                                         **{k: v for k, v in params.items()
                                            if k in ("device", "precision")}).precision)
        for i, nb in enumerate(todo, 1):
            label = f"[{i}/{len(todo)}] {nb.stem} ({profile}, {dataset}, {precision})"
            work = Path(tempfile.mkdtemp(prefix=f".{nb.stem}-{os.getpid()}-", dir=res_dir))
            out = work / f"{nb.stem}.ipynb"
            start, before = time.perf_counter(), cache_entries()
            try:
                pm.execute_notebook(
                    str(nb), str(out), cwd=str(folder), kernel_name="python3",
                    progress_bar=sys.stderr.isatty(), kernel_manager_class=_kernel_manager(),
                    parameters={**{k: v for k, v in params.items() if k in own[nb]},
                                "profile": profile, "dataset": dataset,
                                **({"store_dir": str(store)} if "store_dir" in own[nb] else {}),
                                "results_dir": str(work / "results"),
                                "figures_dir": str(work / "figures")})
            except PapermillExecutionError as err:
                failed = res_dir / f"{nb.stem}.failed.ipynb"
                shutil.move(str(out), str(failed))
                shutil.rmtree(work, ignore_errors=True)
                raise SystemExit(f"{label} failed in cell {err.cell_index}: {err.ename}: "
                                 f"{err.evalue}\nthe executed notebook with the traceback is "
                                 f"{failed}; the last good outputs are unchanged") from None
            except BaseException:  # interrupted, or the kernel died: nothing is published
                shutil.rmtree(work, ignore_errors=True)
                raise
            seconds = time.perf_counter() - start
            new = cache_entries() - before
            slices = sum(len(p.parts) == 1 for p in new)
            print(f"{label} done in {seconds:.0f} s; {slices} model slices trained, "
                  f"{len(new) - slices} other cache entries written", flush=True)
            rows.append({"notebook": nb.stem, "profile": profile, "dataset": dataset,
                         "seconds": round(seconds, 1), "slices_trained": slices,
                         "precision": precision, "date": dt.date.today().isoformat(),
                         "machine": host})
            step = [(work / "results", res_dir), (work / "figures", fig_dir), (work, res_dir)]
            if committed:
                staged.append((work, step))
            else:
                _publish(work, step)
                _record(res_dir / "timings.csv", [r for r in rows if r["dataset"] == dataset])
    for work, step in staged:  # a complete default run: every notebook passed
        _publish(work, step)
    if committed:
        _record(res_top / "timings.csv", rows)
        for nb in todo:
            readable_copy(res_top / f"{nb.stem}.ipynb", ROOT / READABLE / f"{nb.stem}.ipynb")
    return pd.DataFrame(rows)


def remove_orphans(folder: Path) -> int:
    """Remove the staging folders ``.<stem>-<pid>-*`` in ``folder`` that runners killed
    mid-notebook left behind (their process is gone); returns how many."""
    removed = 0
    for work in folder.glob(".[0-9][0-9]_*-*-*"):
        pid = work.name.split("-")[1]
        if work.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cache_entries() -> set[Path]:
    """The checkpoint cache's entries (paths relative to it): SISA slices at the top,
    Amnesiac records and defense results in their folders."""
    root = cache.default_cache_dir()
    if not root.is_dir():
        return set()
    return {p.relative_to(root) for p in root.rglob("*.pt") if not p.name.startswith(".")}


WIDGET = "application/vnd.jupyter.widget-view+json"


def readable_copy(src: Path, dst: Path) -> Path:
    """An executed notebook made small and readable on a forge: widget outputs keep only
    their static fallback (figure, text), progress bars and stderr are dropped, and the
    widget state, papermill's injected-parameters cell and its metadata (the run's
    temporary paths) are removed."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)  # the run's temporary paths and parameters
    nb.cells = [c for c in nb.cells  # papermill's injected parameters: temporary paths
                if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stderr":
                continue
            data = out.get("data", {})
            if WIDGET in data:
                data.pop(WIDGET)
                if "image/png" not in data:  # a progress bar or a bare widget
                    continue
            kept.append(out)
        cell.outputs = kept
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return dst


def _publish(work: Path, steps) -> None:
    for src, dst in steps:
        if src.is_dir():
            _move_into(src, dst)
    shutil.rmtree(work, ignore_errors=True)


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
    ap.add_argument("--profile", default=None, choices=sorted(config.PROFILES),
                    help="default: $BDUNLEARN_PROFILE, else 'default'")
    ap.add_argument("--only", help="comma-separated notebook numbers or stems, e.g. 01,04")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (Python literal), e.g. -p dataset mnist")
    ap.add_argument("--results", help="results folder (default: see above)")
    ap.add_argument("--figures", help="figures folder (default: see above)")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    only = parse_only(args.only)
    try:
        config.profile_name(args.profile)
    except ValueError as exc:
        raise SystemExit(f"BDUNLEARN_PROFILE: {exc}") from None
    timings = run(args.profile, only, params, args.results, args.figures)
    print(timings[["notebook", "dataset", "seconds"]].to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
