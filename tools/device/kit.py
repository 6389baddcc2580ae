"""The device kit's job runner: ``tools/device/run.sh`` checks its arguments, then starts it.

    python tools/device/kit.py --out OUT --scratch SCRATCH --deadline SECONDS [-- RUNNER ARGS]

It prints the plan, sets up the environment (:func:`environment`: the carried wheels in an
isolated folder that cannot shadow the image's packages), runs every job bounded in time
into one run store, and packs what there is into OUT every ``--pack-every`` seconds in
the background, before a job is stopped and after every job (:func:`pack`). A job that
fails (a claim that does not hold on the GPU, a crash) is recorded and the next one runs;
at the end every job's outcome is printed with its reason, and the exit status is 1 when
any job failed. docs/scaling.md says what comes back.

Only the standard library is imported here: the kit runs on an image it knows nothing of.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NOTEBOOKS = ("01", "02", "03", "04", "05", "06", "07")
MIN_START = 20  # seconds: a job is not started with less left
ARCHIVES = ("runs.tar.gz", "notebooks.tar.gz")


@dataclass
class Job:
    """One job: ``argv`` after the interpreter, at most ``bound`` seconds. A ``fills`` job
    fills the time it is given (a cut is its normal end and keeps what it stored); a cut
    of any other job counts as a failure."""

    name: str
    argv: list
    bound: int
    fills: bool = False
    kind: str = "runner"  # "runner" (reproduce), "section", "bench" or "command"
    status: str = "planned"
    why: str = ""
    seconds: float = 0.0


def default_plan(device: str, bounds: dict, bench_args: list) -> list[Job]:
    """Coverage first: every notebook at ``smoke`` (one job each), the benchmark, then the
    longest ``default`` work, by value: notebook 06's 20- against 100-epoch section seed by
    seed, then notebook 07's seeds in fp32."""
    jobs = [Job(f"smoke {nb}", ["-m", "bdunlearn.reproduce", "--profile", "smoke", "--only", nb,
                                "-p", "device", device], bounds["smoke"]) for nb in NOTEBOOKS]
    jobs.append(Job("bench", ["-m", "bdunlearn.bench", *bench_args], bounds["bench"],
                    fills=True, kind="bench"))
    jobs.append(Job("default 06 epochs", ["tools/device/section.py", "06_fidelity-epochs",
                                          "--profile", "default", "-p", "seeds", "0-9",
                                          "-p", "device", device], bounds["default"],
                    fills=True, kind="section"))
    # fp32, as notebook 07's stored CPU runs: the two groups then differ by device alone
    jobs.append(Job("default 07", ["-m", "bdunlearn.reproduce", "--profile", "default",
                                   "--only", "07", "-p", "device", device, "-p", "precision",
                                   "fp32"], bounds["default"], fills=True))
    return jobs


def plan_file(path: Path) -> list[Job]:
    """Jobs from a file, one a line: ``NAME|SECONDS|ARGS`` (ARGS after the interpreter,
    shell-quoted; ``#`` starts a comment). ``-m bdunlearn.reproduce`` jobs get the kit's
    store and folders added, as the default ones do."""
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("|", 2)
        if len(parts) != 3 or not parts[1].strip().isdigit():
            raise SystemExit(f"kit: {path} line {n}: want NAME|SECONDS|ARGS, got {line!r}")
        argv = shlex.split(parts[2])
        kind = ("runner" if argv[:2] == ["-m", "bdunlearn.reproduce"] else
                "bench" if argv[:2] == ["-m", "bdunlearn.bench"] else
                "section" if argv and argv[0].endswith("section.py") else "command")
        jobs.append(Job(parts[0].strip(), argv, int(parts[1]), kind=kind))
    if not jobs:
        raise SystemExit(f"kit: {path} holds no job")
    return jobs


# ------------------------------------------------------------------ environment

SITECUSTOMIZE = '''"""The device kit's: the carried wheels go AFTER the image's own packages."""
import os as _os
import site as _site
import sys as _sys

_here = _os.path.dirname(_os.path.abspath(__file__))
_site.addsitedir({target!r})  # appended: the image's site-packages stay first
for _d in list(_sys.path):  # then the image's own sitecustomize, as it would have run
    _p = _os.path.join(_d or ".", "sitecustomize.py")
    if _os.path.abspath(_d or ".") != _here and _os.path.isfile(_p):
        with open(_p) as _f:
            exec(compile(_f.read(), _p, "exec"), {{"__name__": "sitecustomize", "__file__": _p}})
        break
'''


def environment(py: str, scratch: Path, payload: Path, log, force: bool = False) -> dict:
    """The jobs' environment: the project on the path, the checkpoint cache in the
    scratch folder, the carried data, and papermill/ipykernel from the carried wheels
    when the image lacks them (or ``force``). The wheels go into ``scratch/site``, which a
    ``sitecustomize`` appends to ``sys.path`` *after* the image's site-packages, so a
    carried package never shadows one of the image (python-dateutil, packaging, tqdm,
    requests...); :func:`shadowed` checks it. (A ``venv --system-site-packages`` would
    not do: the image's Python is itself a venv, whose packages a nested venv loses.)"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["BDUNLEARN_CACHE"] = str(scratch / "cache")
    # what Jupyter, IPython and matplotlib would keep in the home folder stays in scratch
    for name, sub in (("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("IPYTHONDIR", "ipython"),
                      ("MPLCONFIGDIR", "matplotlib")):
        env[name] = str(scratch / sub)
    for name in ("BDUNLEARN_RESULTS", "BDUNLEARN_FIGURES"):
        env.pop(name, None)
    if (payload / "data").is_dir() and not env.get("BDUNLEARN_DATA"):
        env["BDUNLEARN_DATA"] = str(payload / "data")
    has = subprocess.run([py, "-c", "import papermill, ipykernel"], env=env,
                         capture_output=True).returncode == 0
    if force or not has:
        wheels = payload / "wheels"
        if not any(wheels.glob("*.whl")):
            raise SystemExit(f"kit: {py} lacks papermill/ipykernel and {wheels} holds no "
                             "wheels; run tools/device/prepare.sh on the CPU side and carry "
                             "tools/device/payload")
        target, boot = scratch / "site", scratch / "boot"
        log(f"installing the carried wheels into {target} (after the image's packages)")
        done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-compile",
                               "--disable-pip-version-check", "--find-links", str(wheels),
                               "--target", str(target), "papermill", "ipykernel",
                               "ipywidgets"], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise SystemExit(f"kit: the carried wheels do not install on {py}: {last}")
        boot.mkdir()
        (boot / "sitecustomize.py").write_text(SITECUSTOMIZE.format(target=str(target)))
        env["PYTHONPATH"] = os.pathsep.join([str(boot), env["PYTHONPATH"]])
        env["PATH"] = os.pathsep.join([str(target / "bin"), env.get("PATH", "")])
        bad = shadowed(py, target, env)
        if bad:
            raise SystemExit(f"kit: carried packages shadow the image's: {', '.join(bad)}")
        log(f"isolation: {len(top_level(target))} carried modules, none shadows the image's")
    (scratch / "tmp").mkdir(exist_ok=True)  # ipykernel install leaves a folder in TMPDIR
    kernel = subprocess.run([py, "-m", "ipykernel", "install", "--prefix",
                             str(scratch / "jupyter"), "--name", "python3"],
                            env={**env, "TMPDIR": str(scratch / "tmp")},
                            capture_output=True, text=True)
    if kernel.returncode:
        last = (kernel.stderr.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"kit: no Jupyter kernel could be set up with {py}: {last}")
    env["JUPYTER_PATH"] = str(scratch / "jupyter" / "share" / "jupyter")
    return env


def top_level(target: Path) -> list[str]:
    """The importable top-level names installed in ``target``."""
    names = set()
    for p in target.iterdir():
        if p.name.endswith((".dist-info", ".egg-info", ".pth")) or p.name in ("bin", "share"):
            continue
        stem = p.name.split(".")[0] if p.is_file() else p.name
        if stem.isidentifier() and (p.is_dir() or p.suffix in (".py", ".so")):
            names.add(stem)
    return sorted(names)


def shadowed(py: str, target: Path, env: dict) -> list[str]:
    """The modules of ``target`` that the image has too but that resolve into ``target``
    in the jobs' environment ``env`` (none, when the wheels sit after the image's)."""
    names = top_level(target)
    probe = ("import importlib.util, json, sys\n"
             "out = {}\n"
             "for n in sys.argv[1:]:\n"
             "    try:\n"
             "        s = importlib.util.find_spec(n)\n"
             "    except Exception:\n"
             "        s = None\n"
             "    where = list(s.submodule_search_locations or []) if s else []\n"
             "    out[n] = (s.origin if s.origin not in (None, 'namespace') else"
             " (where[0] if where else None)) if s else None\n"
             "print(json.dumps(out))\n")
    import json

    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    image = json.loads(subprocess.run([py, "-c", probe, *names], env=bare, capture_output=True,
                                      text=True, check=True).stdout)
    ours = json.loads(subprocess.run([py, "-c", probe, *names], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    return [n for n in names if image.get(n) and ours.get(n) != image[n]]


def describe(py: str, env: dict) -> str:
    """env.txt: the GPU (nvidia-smi), torch, its CUDA device and numerics, the cores; and
    whether Fashion-MNIST is readable (if not, one sentence, and no job runs)."""
    parts = []
    try:
        parts.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                                    timeout=30).stdout or "nvidia-smi printed nothing")
    except (OSError, subprocess.SubprocessError):
        parts.append("no nvidia-smi")
    probe = ("import os, platform, torch\n"
             "from bdunlearn.store import processor\n"
             "cuda = torch.cuda.is_available()\n"
             "print('python', platform.python_version(), 'torch', torch.__version__,"
             " 'cuda', torch.version.cuda, 'available', cuda)\n"
             "print('processor', processor('cuda' if cuda else 'cpu'))\n"
             "print('cores', os.cpu_count())\n"
             "from bdunlearn.data import load\n"
             "print('fmnist', len(load('fmnist').y_train), 'training images')\n")
    done = subprocess.run([py, "-c", probe], env=env, capture_output=True, text=True)
    parts.append(done.stdout + done.stderr)
    if done.returncode:
        last = (done.stderr.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"kit: {py} cannot read Fashion-MNIST or query torch ({last}); "
                         "carry tools/device/payload (prepare.sh puts the data there) or set "
                         "BDUNLEARN_DATA")
    return "\n".join(parts)


# ------------------------------------------------------------------ packing

class Packer:
    """Packs the scratch folder's results into OUT, atomically, one pack at a time."""

    def __init__(self, scratch: Path, out: Path):
        self.scratch, self.out, self.store = scratch, out, scratch / "store"
        self.lock = threading.Lock()
        self.seen: dict[str, tuple] = {}

    def _files(self, root: Path, skip_dirs=()):
        """``(path, arcname)`` of every plain file under ``root`` (temporary files of the
        store's atomic writes left out: a run counts once it is renamed into place)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
            for f in sorted(filenames):
                if f.startswith(".tmp-") or f.endswith(".tmp"):
                    continue
                p = Path(dirpath) / f
                out.append((p, str(p.relative_to(root))))
        return out

    def _archive(self, name: str, files) -> None:
        sig = []
        for p, arc in files:
            try:
                st = p.stat()
            except OSError:
                continue
            sig.append((arc, st.st_size, st.st_mtime_ns))
        if self.seen.get(name) == tuple(sig) and (self.out / name).exists():
            return
        tmp = self.out / f".{name}.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for p, arc in files:
                try:
                    data = p.read_bytes()  # whole: a file renamed into place is complete
                except OSError:  # gone meanwhile (a staging folder published)
                    continue
                info = tarfile.TarInfo(arc)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, self.out / name)
        self.seen[name] = tuple(sig)

    def pack(self) -> None:
        """runs.tar.gz (the run store), notebooks.tar.gz (each job's results folder: its
        tables and executed notebooks, the runner's staging folders of a notebook still
        running included), timings.csv (the runner's per-notebook timings, by job)."""
        with self.lock:
            if self.store.is_dir():
                self._archive("runs.tar.gz", self._files(self.store))
            results = []
            for job in sorted(self.scratch.glob("res-*")):
                results += [(p, f"{job.name}/{arc}") for p, arc in self._files(job, ("runs",))]
            if results:
                self._archive("notebooks.tar.gz", results)
            rows = []
            for job in sorted(self.scratch.glob("res-*")):
                for t in sorted(job.rglob("timings.csv")):
                    try:
                        with open(t, newline="") as f:
                            rows += [{"job": job.name, **r} for r in csv.DictReader(f)]
                    except OSError:
                        continue
            if rows:
                fields = list(dict.fromkeys(k for r in rows for k in r))
                tmp = self.out / ".timings.csv.tmp"
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
                os.replace(tmp, self.out / "timings.csv")

    def every(self, seconds: float, stop: threading.Event, log) -> threading.Thread:
        def loop():
            while not stop.wait(seconds):
                try:
                    self.pack()
                except Exception as err:  # noqa: BLE001 - a failed pack is retried
                    log(f"pack failed: {type(err).__name__}: {err}")
        thread = threading.Thread(target=loop, name="packer", daemon=True)
        thread.start()
        return thread


def stored_runs(store: Path) -> int:
    return sum(1 for p in store.glob("*/*/*.csv")
               if p.name.count(".") == 1 and not p.name.startswith("."))


# ------------------------------------------------------------------ jobs

def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the job and everything it started (the notebook's kernel included), then
    SIGKILL what is left after ``grace`` seconds."""
    pids = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(0.5)  # let the kernel go too


def reason(text: str) -> str:
    """What the summary says about a failed job: the runner's "<notebook> failed in cell
    N: <error>" when it printed one, else the last line of its output (progress bars and
    traceback frames left out)."""
    lines = [ln.strip() for chunk in text.splitlines() for ln in chunk.split("\r")]
    lines = [ln for ln in lines if ln and not re.search(r"\d+%\|", ln)
             and not ln.startswith(("File ", "^", "~"))]
    failed = [ln for ln in lines if " failed in cell " in ln]  # the runner's own sentence
    return (failed or lines or ["no output"])[-1][:300]


class Kit:
    def __init__(self, args):
        self.py = sys.executable if args.python is None else args.python
        self.out, self.scratch = Path(args.out), Path(args.scratch)
        self.start, self.deadline = time.monotonic(), args.deadline
        self.store = self.scratch / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.out / "log.txt", "a", buffering=1)
        self.logf.seek(0, os.SEEK_END)
        self.packer = Packer(self.scratch, self.out)
        self.current: subprocess.Popen | None = None

    def log(self, text: str, echo: bool = True) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{self.elapsed():4.0f}s] {text}"
        self.logf.write(line + "\n")
        if echo:
            print(line, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - self.elapsed()

    def argv(self, i: int, job: Job) -> list[str]:
        """The job's command line with the kit's store and its own results folder."""
        res, fig = self.scratch / f"res-{i:02d}", self.scratch / f"fig-{i:02d}"
        if job.kind == "runner":
            return [*job.argv, "-p", "store_dir", repr(str(self.store)), "--results", str(res),
                    "--figures", str(fig)]
        if job.kind == "section":
            return [*job.argv, "-p", "store_dir", repr(str(self.store)), "-p", "results_dir",
                    repr(str(res)), "-p", "figures_dir", repr(str(fig))]
        if job.kind == "bench" and "--csv" not in job.argv:
            return [*job.argv, "--csv", str(self.out / "bench.csv")]
        return list(job.argv)

    def run(self, i: int, job: Job, env: dict) -> None:
        left = self.left()
        if left < MIN_START:
            job.status, job.why = "skipped", f"{left:.0f} s left of the deadline"
            self.log(f"job {i} {job.name}: skipped ({job.why})")
            return
        bound = int(min(job.bound, left))
        argv = [self.py, *self.argv(i, job)]
        self.log(f"job {i} {job.name} (at most {bound} s): {shlex.join(argv[1:])}")
        stdout = open(self.out / "bench.txt", "w") if job.kind == "bench" else None
        at = self.logf.tell()  # the job's output goes to log.txt as it comes
        t0 = time.monotonic()
        self.current = proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                               stdout=stdout or self.logf, stderr=self.logf)
        try:
            rc = proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            self.packer.pack()  # what it has stored and staged, before it is stopped
            stop(proc)
            rc = None
        except BaseException:  # the kit itself is stopped: so is its job, once packed
            self.packer.pack()
            stop(proc)
            raise
        finally:
            self.current = None
            if stdout:
                stdout.close()
        job.seconds = time.monotonic() - t0
        with open(self.out / "log.txt", errors="replace") as f:
            f.seek(at)
            text = f.read()
        if rc == 0:
            job.status = "ok"
        elif rc is None:
            job.status = "cut" if job.fills else "failed"
            job.why = (f"stopped at its {bound} s bound" + (" (it fills the time it is "
                       "given; what it stored is kept)" if job.fills else
                       f"; last output: {reason(text)}"))
        else:
            job.status, job.why = "failed", f"exit {rc}: {reason(text)}"
        self.log(f"job {i} {job.name}: {job.status} after {job.seconds:.0f} s"
                 + (f" ({job.why})" if job.why else "") + f"; {stored_runs(self.store)} runs "
                 "stored so far")


def main(argv=None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--deadline", type=int, required=True)
    ap.add_argument("--python", help="the jobs' interpreter (default: this one)")
    ap.add_argument("--payload", default=str(HERE / "payload"))
    ap.add_argument("--pack-every", type=float, default=60.0)
    ap.add_argument("--device", default="cuda", help="the default plan's device")
    ap.add_argument("--plan", help="a file of jobs (NAME|SECONDS|ARGS a line)")
    ap.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    ap.add_argument("--force-install", action="store_true",
                    help="install the carried wheels even where the image has papermill")
    ap.add_argument("runner", nargs=argparse.REMAINDER,
                    help="after --: one job of python -m bdunlearn.reproduce arguments")
    args = ap.parse_args(argv)
    runner = args.runner[1:] if args.runner[:1] == ["--"] else args.runner
    bounds = {k: int(os.environ.get(f"{k.upper()}_SECONDS", v))
              for k, v in (("smoke", 150), ("bench", 120), ("default", args.deadline))}
    bench_args = shlex.split(os.environ.get("BENCH_ARGS", ""))
    if runner:
        jobs = [Job("runner", ["-m", "bdunlearn.reproduce", *runner], args.deadline,
                    fills=False)]
    elif args.plan:
        jobs = plan_file(Path(args.plan))
    else:
        jobs = default_plan(args.device, bounds, bench_args)
    kit = Kit(args)
    kit.log(f"device kit: deadline {args.deadline} s, packing into {kit.out} every "
            f"{args.pack_every:g} s and after every job; the plan:")
    for i, job in enumerate(jobs, 1):
        kit.log(f"  {i}. {job.name}: at most {job.bound} s"
                f"{', fills its time' if job.fills else ''}: {shlex.join(job.argv)}")
    if args.plan_only:
        return 0
    stop_packing = threading.Event()

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    failed = []
    try:
        env = environment(kit.py, kit.scratch, Path(args.payload), kit.log, args.force_install)
        (kit.out / "env.txt").write_text(described := describe(kit.py, env))
        kit.log(next((ln for ln in described.splitlines() if ln.startswith("processor")),
                     "processor unknown"))
        kit.packer.every(args.pack_every, stop_packing, kit.log)
        for i, job in enumerate(jobs, 1):
            kit.run(i, job, env)
            kit.packer.pack()
    except KeyboardInterrupt as why:  # Kit.run stopped the job it was running
        kit.log(f"interrupted ({why}): packing what there is")
        failed.append(f"the kit was interrupted ({why})")
    except SystemExit as err:  # a setup step failed: one sentence
        failed.append(str(err.code))
        kit.log(str(err.code))
    finally:
        stop_packing.set()
        kit.packer.pack()
    kit.log(f"done in {kit.elapsed():.0f} s: {stored_runs(kit.store)} runs stored and packed; "
            "the jobs:")
    for i, job in enumerate(jobs, 1):
        kit.log(f"  {i}. {job.name}: {job.status}" + (f" after {job.seconds:.0f} s"
                                                       if job.seconds else "")
                + (f": {job.why}" if job.why else ""))
    failed += [f"job {i} {job.name} {job.why}" for i, job in enumerate(jobs, 1)
               if job.status == "failed"]
    if failed:
        print(f"device kit: {len(failed)} failure(s):", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
