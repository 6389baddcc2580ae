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
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from . import cache, config
from .layout import ROOT, SAME_RUN, available, folders, notebooks, parse_only, run_name
from .store import RunStore, cpu_name

__all__ = ["ROOT", "SAME_RUN", "available", "folders", "main", "notebooks", "parse_only",
           "run", "run_name"]
READABLE = Path("docs") / "notebooks"  # under ROOT: the default run's executed notebooks
ENV_PATHS = ("BDUNLEARN_CACHE", "BDUNLEARN_DATA", "BDUNLEARN_RESULTS", "BDUNLEARN_FIGURES")
RUNNER_SET = ("profile", "results_dir", "figures_dir")


def _value(text: str):
    """A command-line parameter value: a Python literal when it parses, else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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


def absolute_env_paths(cwd: Path | None = None) -> None:
    """Make relative ``BDUNLEARN_*`` paths absolute against ``cwd`` (the caller's working
    directory), before kernels start elsewhere."""
    cwd = Path.cwd() if cwd is None else cwd
    for name in ENV_PATHS:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str((cwd / Path(value).expanduser()).absolute())


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


# ----------------------------------------------------------------------------- the plan
LONG = 2 * 3600  # a plan longer than this (seconds) names the quick path and the GPU kit
QUICK_PATH = ("to render every figure from the stored runs instead (about a minute), run "
              "`make figures` (python -m bdunlearn.reproduce -p compute False); to compute "
              "the runs on a GPU machine, see tools/device/ and docs/scaling.md (or train "
              "the plan on every core first with `make reproduce RAY=local`)")


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``"40 s"``, ``"12 min"``, ``"3 h 20 min"``,
    ``"2 days 4 h"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"


def survey(profile: str, params: dict, stems: list[str], datasets: list[str], results=None):
    """The runner's plan (:func:`bdunlearn.plan.survey`) of the notebooks ``stems``;
    ``SystemExit`` with its sentence when a parameter is bad."""
    from . import plan

    overrides = {k: v for k, v in params.items() if k != "dataset"}
    try:
        return plan.survey(profile, only=stems, results=results, datasets=datasets,
                           **overrides)
    except ValueError as exc:
        raise SystemExit(f"-p: {exc}") from None


def timing_rates(host: str, folders_=None) -> dict[tuple[str, str, str], float]:
    """Planned sample-epochs per second of whole notebooks that computed runs on this
    machine (``host``, :func:`machine`), per ``(dataset, notebook, precision)``, from the
    newest such row of the ``timings.csv`` files under ``results/`` (the committed one and
    each run's): the plan's measure of a notebook's work over its wall time, the
    notebook's other work (defenses, detectors) included."""
    files = folders_ if folders_ is not None else [
        ROOT / "results" / "timings.csv", *sorted((ROOT / "results").glob("*/timings.csv")),
        *sorted((ROOT / "results").glob("*/*/timings.csv"))]
    rows = []
    for path in files:
        try:
            t = pd.read_csv(path)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        need = {"notebook", "machine", "precision", "seconds", "planned_sample_epochs",
                "date"}
        if need <= set(t.columns):
            rows.append(t)
    if not rows:
        return {}
    t = pd.concat(rows, ignore_index=True)
    t = t[(t.machine == host) & (pd.to_numeric(t.planned_sample_epochs, errors="coerce") > 0)
          & (pd.to_numeric(t.seconds, errors="coerce") > 0)]
    if "dataset" not in t.columns:
        t = t.assign(dataset="fmnist")
    out = {}
    for _, r in t.sort_values("date").iterrows():
        out[(str(r.dataset), str(r.notebook), str(r.precision))] = (
            float(r.planned_sample_epochs) / float(r.seconds))
    return out


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def show_plan(steps, host: str, measure_seconds: float = 2.0) -> dict:  # noqa: C901
    """Print the plan: per notebook, the runs stored for this machine's precision and
    device group and the runs to compute, the slices they train and the request chains
    they run, and an estimate; a plan longer than :data:`LONG` names the quick path.
    Returns the estimated seconds per ``(dataset, stem)``."""
    estimate, how = _estimate([s for s in steps if not s.renders], host, measure_seconds)
    for dataset in dict.fromkeys(s.dataset for s in steps):
        mine = [s for s in steps if s.dataset == dataset]
        width = max(len("notebook"), *(len(s.stem) for s in mine))
        if any(s.renders for s in mine):
            print(f"plan on {dataset}: render the stored runs, compute nothing", flush=True)
            for s in mine:
                held = s.groups.get(s.group, 0)
                print(f"  {s.stem:<{width}}  {_n(held, 'stored run')} of {s.group}"
                      + (" (its largest group)" if len(s.groups) > 1 else ""), flush=True)
            continue
        group = mine[0].group
        print(f"plan on {dataset}, computing in {group} on this machine "
              f"({host.rsplit(', torch', 1)[0]}):", flush=True)
        head = ("notebook", f"runs stored ({group})", "to compute", "slices to train",
                "request chains", "estimate")
        rows = [(s.stem, f"{s.stored} of {s.runs}", str(len(s.missing)),
                 str(len(s.slices)), str(len(s.chains)),
                 "-" if not s.missing else
                 duration(estimate[(s.dataset, s.stem)]) if estimate[(s.dataset, s.stem)]
                 else "trains nothing new") for s in mine]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths))).rstrip(),
                  flush=True)
        for s in mine:
            others = {g: n for g, n in s.groups.items() if g != s.group}
            if others and s.missing:
                g, n = next(iter(others.items()))
                print(f"  {s.stem}: {g} holds {_n(n, 'stored run')}; -p precision "
                      f"{g.split()[0]} computes in that group (make figures renders it)",
                      flush=True)
        cached = sum(len(s.cached) for s in mine)
        if cached:
            print(f"  ({_n(cached, 'more planned slice')} already in the checkpoint cache)",
                  flush=True)
    computed = [s for s in steps if not s.renders]
    runs = sum(len(s.missing) for s in computed)
    if computed and not runs:
        print("every run is stored: the notebooks render them and train nothing", flush=True)
    elif runs:
        total = sum(estimate.values())
        print(f"total: {_n(runs, 'run')} to compute, "
              f"{_n(sum(len(s.slices) for s in computed), 'model slice')} to train and "
              f"{_n(sum(len(s.chains) for s in computed), 'request chain')} to run: about "
              f"{duration(total)} on this machine", flush=True)
        print(f"estimate: {how}", flush=True)
        if total > LONG:
            print(f"this plan is far longer than an hour (about {duration(total)}); "
                  f"{QUICK_PATH}", flush=True)
    return estimate


def _estimate(steps, host: str, measure_seconds: float) -> tuple[dict, str]:
    """Seconds per ``(dataset, stem)`` of the notebooks ``steps`` compute, and a sentence
    saying where the speed comes from: the notebook's last run on this machine
    (:func:`timing_rates`), else a short training of its model measured now
    (:func:`bdunlearn.plan.measure`)."""
    from . import plan

    estimate: dict = {}
    todo = [s for s in steps if s.missing]
    known = timing_rates(host)
    timed = [s for s in todo if (s.dataset, s.stem, s.cfg.precision) in known]
    rest = [s for s in todo if s not in timed]
    how = []
    if timed:
        how.append(f"{', '.join(s.stem for s in timed)} at the pace of their last run on this "
                   "machine (timings.csv, the whole notebook)")
    for s in timed:
        estimate[(s.dataset, s.stem)] = (sum(s.work().values())
                                         / known[(s.dataset, s.stem, s.cfg.precision)])
    models = plan.models(rest)
    if models:
        import torch

        rates = {m: plan.measure(m, measure_seconds) for m in models}
        estimate.update(plan.estimate(rest, rates))
        load = (f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
                if hasattr(os, "getloadavg") else "")
        how.append("; ".join(f"{m[0]} in {m[4].precision} on {m[5]} trains "
                             f"{rates[m]:,.0f} samples/s" for m in models)
                   + f", measured here now in a {measure_seconds:g} s training ({load}"
                   f"{torch.get_num_threads()} torch threads: a busy machine measures slow)")
    for s in steps:
        estimate.setdefault((s.dataset, s.stem), 0.0)
    return estimate, ("; ".join(how) + "; request chains counted at their most (every "
                      "request batch retrains); defenses and detectors, which train no "
                      "slice, come on top")


def check_stored(steps) -> None:
    """``SystemExit`` when a notebook that renders the stored runs has none to render."""
    empty = [s for s in steps if s.renders and not s.groups]
    if empty:
        stores = sorted({s.cfg.store_dir for s in empty})
        raise SystemExit(f"-p compute False renders the stored runs, but there are no stored "
                         f"runs of {', '.join(s.stem for s in empty)} in "
                         f"{', '.join(stores)}; compute them first (leave compute True) "
                         f"or merge runs computed elsewhere (python -m bdunlearn.store merge)")


class Progress:
    """A progress bar (a line per stored run when stderr is not a terminal) over the runs
    a notebook computes, read from its run store every ``every`` seconds while the
    notebook runs in its kernel; its time left starts from the plan's ``estimate`` and
    follows the measured pace once a run is stored."""

    def __init__(self, step, estimate: float, every: float = 2.0):
        self.step, self.estimate, self.every = step, float(estimate), every
        self.store = None if step is None else RunStore(step.cfg.store_dir)
        self.total = 0 if step is None else len(step.missing)
        self.done = 0
        self._stored: set = set()
        self._stop = threading.Event()
        self._thread = None
        self._bar = None

    def _count(self) -> int:
        """Runs stored so far (each run is checked until it is there, then counted)."""
        self._stored.update(k for k in self.step.missing
                            if k not in self._stored and self.store.has(*k))
        return len(self._stored)

    def _left(self, elapsed: float) -> str:
        if self.done:
            return f"about {duration(elapsed / self.done * (self.total - self.done))} left"
        if self.estimate:
            return f"about {duration(max(self.estimate - elapsed, 0))} left (plan)"
        return "time left unknown"

    def _tick(self) -> None:
        done, before = self._count(), self.done
        self.done = done
        elapsed = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix_str(self._left(elapsed))
        elif done > before:
            print(f"  {self.step.stem}: {done} of {self.total} runs stored, "
                  f"{self._left(elapsed) if done < self.total else 'done'}", flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._tick()
            except OSError:
                pass

    def __enter__(self):
        self._start = time.perf_counter()
        if not self.total:
            return self
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=f"{self.step.stem} runs", unit="run",
                             file=sys.stderr, leave=False)
            self._bar.set_postfix_str(self._left(0))
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(OSError):
                self._tick()
        if self._bar is not None:
            self._bar.close()
        return False


# ----------------------------------------------------------------------------- the cache's writers
def _writers_dir() -> Path:
    return cache.default_cache_dir() / ".writers"


@contextlib.contextmanager
def writing(role: str = "runner"):
    """Mark this process as writing the checkpoint cache while the block runs (a file
    ``<cache>/.writers/<host>-<pid>`` naming ``role``), so that a runner on the same
    cache can tell whose models it counts (:func:`other_writers`)."""
    mark = _writers_dir() / f"{socket.gethostname()}-{os.getpid()}"
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(f"{role} {' '.join(sys.argv)}"[:500])
    except OSError:  # a read-only cache: it trains nothing into it
        mark = None
    try:
        yield
    finally:
        if mark is not None:
            with contextlib.suppress(OSError):
                mark.unlink()


def other_writers() -> set[str]:
    """The other live processes marked as writing the checkpoint cache (``"runner pid
    1234"``; another host's marks are taken as live); marks of dead processes on this
    host are removed."""
    here, out = socket.gethostname(), set()
    folder = _writers_dir()
    if not folder.is_dir():
        return out
    for mark in folder.iterdir():
        host, _, pid = mark.name.rpartition("-")
        if not pid.isdigit() or (host == here and int(pid) == os.getpid()):
            continue
        if host == here and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                mark.unlink()
            continue
        try:
            role = mark.read_text().split(" ", 1)[0] or "process"
        except OSError:
            role = "process"
        out.add(f"{role} pid {pid}" + ("" if host == here else f" on {host}"))
    return out


def run(profile: str, only=None, params=None, results=None, figures=None,  # noqa: C901
        folder: Path = ROOT / "notebooks", plan_only: bool = False) -> pd.DataFrame:
    """Run the notebooks (see the module docstring); returns this run's timing rows.
    The plan (:func:`show_plan`) is printed first; ``plan_only`` prints it and returns
    an empty table."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from .studies import STEMS, renders_stored

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
    for dataset in found if not plan_only else ():  # before the plan: it takes a while
        res_dir = folders(profile, params, dataset, only, results, figures)[0]
        try:
            res_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(f"--results {res_dir}: cannot create the folder "
                             f"({err.strerror or err}); give a writable folder") from None
    stems = [nb.stem for nb in todo if nb.stem in STEMS]
    if stems and params.get("compute") is False:
        print("planning: reading the stored runs", flush=True)
    elif stems:
        print("planning: the runs to compute, the trainings they need, and a short training "
              "timed here (a minute or two at default)", flush=True)
    steps = survey(profile, params, stems, found, results) if stems else []
    check_stored(steps)
    estimate = show_plan(steps, host)
    if plan_only:
        return pd.DataFrame(rows)
    by_notebook = {(s.dataset, s.stem): s for s in steps}
    with writing("runner"):
        for dataset in found:
            res_dir, fig_dir, store = folders(profile, params, dataset, only, results, figures)
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
                step = by_notebook.get((dataset, nb.stem))
                writers = other_writers()
                try:
                    with Progress(step, estimate.get((dataset, nb.stem), 0.0)):
                        pm.execute_notebook(
                            str(nb), str(out), cwd=str(folder), kernel_name="python3",
                            progress_bar=sys.stderr.isatty() and step is None,
                            kernel_manager_class=_kernel_manager(),
                            parameters={**{k: v for k, v in params.items() if k in own[nb]},
                                        "profile": profile, "dataset": dataset,
                                        **({"store_dir": str(store)} if "store_dir" in own[nb]
                                           else {}),
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
                writers |= other_writers()
                planned = "" if step is None or step.renders else f" of {len(step.slices)} planned"
                if writers:
                    who = (f"{slices} model slices new in the cache{planned}, trained by this run "
                           f"or by the {', '.join(sorted(writers))} writing the same cache")
                else:
                    who = f"{slices} model slices trained by this run{planned}"
                print(f"{label} done in {seconds:.0f} s; {who}, {len(new) - slices} other cache "
                      "entries written", flush=True)
                work_done = 0 if step is None else sum(step.work().values())
                rows.append({"notebook": nb.stem, "profile": profile, "dataset": dataset,
                             "seconds": round(seconds, 1), "slices_trained": slices,
                             "planned_sample_epochs": work_done, "precision": precision,
                             "date": dt.date.today().isoformat(), "machine": host})
                moves = [(work / "results", res_dir), (work / "figures", fig_dir), (work, res_dir)]
                if committed:
                    staged.append((work, moves, res_dir / f"{nb.stem}.failed.ipynb"))
                else:
                    _publish(work, moves, res_dir / f"{nb.stem}.failed.ipynb")
                    _record(res_dir / "timings.csv", [r for r in rows if r["dataset"] == dataset])
    for work, moves, failed in staged:  # a complete default run: every notebook passed
        _publish(work, moves, failed)
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


def _publish(work: Path, steps, failed: Path | None = None) -> None:
    """Move a finished notebook's outputs into place; its older failed copy ``failed``
    (``<stem>.failed.ipynb``) goes, since a good run replaces it."""
    for src, dst in steps:
        if src.is_dir():
            _move_into(src, dst)
    shutil.rmtree(work, ignore_errors=True)
    if failed is not None:
        with contextlib.suppress(OSError):
            failed.unlink()


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
    ap.add_argument("--plan", action="store_true",
                    help="print what the run would compute (runs stored and to compute per "
                         "notebook, the trainings, an estimate on this machine) and exit")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    only = parse_only(args.only)
    try:
        config.profile_name(args.profile)
    except ValueError as exc:
        raise SystemExit(f"BDUNLEARN_PROFILE: {exc}") from None
    timings = run(args.profile, only, params, args.results, args.figures,
                  plan_only=args.plan)
    if not timings.empty:
        print(timings[["notebook", "dataset", "seconds"]].to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
