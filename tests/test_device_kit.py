"""The device kit (tools/device/): it fails loudly before writing anything, plans every
notebook first, keeps going past a failed job, and a run killed mid-job returns every
finished run, which merges into a store and reads back whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from bdunlearn import studies
from bdunlearn.reproduce import ROOT

RUN = ROOT / "tools" / "device" / "run.sh"
PREPARE = ROOT / "tools" / "device" / "prepare.sh"
FMNIST = Path("/usr/share/datasets/fashion-mnist").is_dir()
CUDA = torch.cuda.is_available()


def kit_env(tmp_path, **extra) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path / "tmp"),
           "BDUNLEARN_CACHE": str(tmp_path / "cache"), "DEVICE": "cpu", **extra}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    for name in ("BDUNLEARN_RESULTS", "BDUNLEARN_FIGURES", "DEADLINE", "LIMIT", "MARGIN",
                 "PLAN", "PLAN_ONLY", "FORCE_INSTALL"):
        if name not in extra:
            env.pop(name, None)
    return env


def run_kit(tmp_path, *args, timeout=300, **extra):
    return subprocess.run(["bash", str(RUN), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=kit_env(tmp_path, **extra), cwd=tmp_path)


def test_an_uncreatable_out_exits_nonzero_and_writes_nothing(tmp_path):
    before = set(os.listdir("/"))
    done = run_kit(tmp_path, "/proc/nope")
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip() == ("run.sh: cannot create OUT /proc/nope; give a writable "
                                   "folder")
    assert set(os.listdir("/")) == before  # no log.txt, env.txt or runs.tar.gz in /
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert not any((tmp_path / "tmp").iterdir())  # no scratch folder either


@pytest.mark.parametrize("extra, args, says", [
    ({"DEADLINE": "abc"}, ("out",), "DEADLINE=abc is not a whole number of seconds"),
    ({"LIMIT": "10m"}, ("out",), "LIMIT=10m is not a whole number of seconds"),
    ({"LIMIT": "30", "MARGIN": "60"}, ("out",), "LIMIT=30 must exceed MARGIN=60"),
    ({"PYTHON": "/nonexistent/python3"}, ("out",), "no Python: '/nonexistent/python3'"),
    ({"PYTHON": "/bin/false"}, ("out",), "'/bin/false' does not run as Python 3.10"),
    ({"FORCE_INSTALL": "1", "BDUNLEARN_PAYLOAD": "nowhere"}, ("out",), "no payload:"),
    ({"PLAN": "noplan.txt"}, ("out",), "PLAN=noplan.txt is not a file"),
    pytest.param({"DEVICE": "cuda"}, ("out",), "sees no CUDA GPU, which the default plan runs",
                 marks=pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")),
    ({"DEVICE": "tpu"}, ("out",), "DEVICE=tpu must be cuda or cpu"),
    ({}, ("afile",), "OUT afile exists and is not a folder"),
    ({}, ("",), "usage: tools/device/run.sh OUT"),
    ({}, ("/",), "OUT is '/'"),
])
def test_each_wrong_argument_or_environment_is_one_line_and_nothing_written(
        tmp_path, extra, args, says):
    (tmp_path / "afile").write_text("not a folder")
    done = run_kit(tmp_path, *args, **extra)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists() and (tmp_path / "afile").read_text() == "not a folder"
    assert not any((tmp_path / "tmp").iterdir())


def test_prepare_says_what_is_wrong_in_one_line_and_leaves_no_temporary_folder(tmp_path):
    payload = ROOT / "tools" / "device" / "payload.tmp"
    for args, env, says in [(["/bin/false"], {}, "'/bin/false' cannot run pip"),
                            (["/nonexistent/python3"], {}, "no Python: '/nonexistent/python3'"),
                            ([sys.executable], {"FMNIST": str(tmp_path)}, "run make data first"),
                            ([sys.executable], {"PYVER": "twelve"}, "PYVER=twelve"),
                            ([], {"PYTHON": "/bin/false"}, "'/bin/false' cannot run pip"),
                            (["a", "b"], {}, "usage:")]:
        done = subprocess.run(["bash", str(PREPARE), *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not payload.exists()


def test_the_default_plan_runs_every_notebook_at_smoke_on_cuda_first(tmp_path):
    done = run_kit(tmp_path, tmp_path / "out", PLAN_ONLY="1", DEVICE="cuda")
    assert done.returncode == 0, done.stderr
    plan = [line.split(". ", 1)[1] for line in done.stdout.splitlines() if ". " in line
            and ": at most" in line]
    smoke = [f"smoke {nb}: at most 150 s: -m bdunlearn.reproduce --profile smoke --only {nb} "
             "-p device cuda" for nb in ("01", "02", "03", "04", "05", "06", "07")]
    assert plan[:7] == smoke
    assert plan[7].startswith("bench: ") and "-m bdunlearn.bench" in plan[7]
    assert "section.py 06_fidelity-epochs --profile default -p seeds 0-9 -p device cuda" in plan[8]
    assert "--profile default --only 07 -p device cuda -p precision fp32" in plan[9]
    assert len(plan) == 10
    assert "deadline 540 s" in done.stdout  # LIMIT 600 s less the 60 s margin


def test_a_failed_job_is_recorded_the_next_runs_and_the_kit_exits_nonzero(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("\n".join([
        "# name|seconds|python arguments",
        "works|60|-c \"print('first job ran')\"",
        "claim|60|-c \"raise SystemExit('claim 3 does not hold on this GPU')\"",
        "slow|2|-c \"import time; print('sleeping', flush=True); time.sleep(120)\"",
        "after|60|-c \"print('the job after the failures ran')\""]))
    out = tmp_path / "out"
    done = run_kit(tmp_path, out, PLAN=str(plan), PACK_EVERY="1")
    assert done.returncode == 1, done.stdout + done.stderr
    reasons = done.stderr.splitlines()  # the reasons, not only in log.txt
    assert reasons[0] == "device kit: 2 failure(s):"
    assert "job 2 claim exit 1: claim 3 does not hold on this GPU" in reasons[1]
    assert "job 3 slow stopped at its 2 s bound; last output: sleeping" in reasons[2]
    log = (out / "log.txt").read_text()
    assert "first job ran" in log and "the job after the failures ran" in log
    assert "job 4 after: ok" in log
    assert {"log.txt", "env.txt", "runs.tar.gz"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
    assert not any((tmp_path / "tmp").iterdir())  # the scratch folder is gone


def packed_runs(archive: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tar:
            return [m.name for m in tar.getmembers()
                    if m.name.endswith(".csv") and m.name.count(".") == 1]
    except (OSError, tarfile.TarError, EOFError):
        return []


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_a_run_killed_mid_job_returns_every_finished_run_which_merges_and_reads_back(tmp_path):
    """The kit, packing every second, is killed (SIGKILL, as the device's time limit does)
    once notebook 01 has stored its first seed and is computing the next: what came back
    merges, every run in it whole, and the notebook's table reads back from it."""
    out, merged = tmp_path / "out", tmp_path / "merged"
    params = ["-p", "device", "cpu", "-p", "seeds", "0-2", "-p", "epochs", "2",
              "-p", "train_subset", "1000"]
    kit = subprocess.Popen(["bash", str(RUN), str(out), "--profile", "smoke", "--only", "01",
                            *params], env=kit_env(tmp_path, PACK_EVERY="1"), cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err", "w"),
                           start_new_session=True)
    try:
        for _ in range(1200):  # a guard against a hung kit, not a speed check
            if packed_runs(out / "runs.tar.gz"):
                break
            assert kit.poll() is None, (tmp_path / "err").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the kit packed no run in 1,200 polls a second apart")
    finally:
        try:
            os.killpg(kit.pid, signal.SIGKILL)  # the kit, its job and its packer, mid-job
        except ProcessLookupError:
            pass
        kit.wait()
    runs = packed_runs(out / "runs.tar.gz")
    with tarfile.open(out / "notebooks.tar.gz") as tar:  # the notebook being run, staged
        assert any(n.endswith("/01_attack.ipynb") and "/.01_attack-" in n
                   for n in tar.getnames())
    done = subprocess.run([sys.executable, "-m", "bdunlearn.store", "merge",
                           str(out / "runs.tar.gz"), str(merged)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and f"merge: {len(runs)} runs copied" in done.stdout, done.stdout
    cfg = studies.config("01_attack", "smoke", device="cpu", seeds=[0, 1, 2], epochs=2,
                         train_subset=1000, store_dir=str(merged),
                         results_dir=str(tmp_path / "res"), figures_dir=str(tmp_path / "fig"),
                         compute=False)
    table = studies.Notebook("01_attack", cfg).collect(progress=False)
    assert table.run_key.nunique() == len(runs) >= 1  # every finished run, and no other
    assert len(studies.missing("01_attack", cfg)) == 3 - len(runs)
    assert set(table.device) == {"cpu"} and table.processor.notna().all()
    assert table.select_dtypes("number").notna().all().all()  # nothing half-written


@pytest.mark.unit  # the rest of this file is in the slow tier
def test_provenance_names_the_gpu_with_its_numerics_and_a_cpu_run_never_asks_cuda(monkeypatch):
    from bdunlearn import store

    def no_cuda(*args):
        raise AssertionError("a CPU run asked CUDA")

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    store.processor.cache_clear()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
        assert store.provenance("fp32", "cpu")["processor"] == store.cpu_name()
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
        assert store.provenance("fp32", "cuda")["processor"] == (
            "NVIDIA H100 80GB HBM3 (TF32 off, cuDNN deterministic)")
    finally:
        store.processor.cache_clear()
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


def kit_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "tools/device/kit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("device_kit", mod)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["device_kit"])
    return sys.modules["device_kit"]


@pytest.mark.unit  # the rest of this file is in the slow tier
def test_a_failed_notebook_is_reported_by_its_cell_and_error():
    kit = kit_module()
    text = ("run smoke: tables to /x\n"
            "[1/1] 01_attack (smoke, fmnist, bf16) failed in cell 12: AssertionError: claim "
            "BN switches on: 40% < 50%\nthe executed notebook with the traceback is "
            "/x/01_attack.failed.ipynb; the last good outputs are unchanged\n")
    assert kit.reason(text) == ("[1/1] 01_attack (smoke, fmnist, bf16) failed in cell 12: "
                                "AssertionError: claim BN switches on: 40% < 50%")
    assert kit.reason("Traceback\n  File \"x\", line 1\nValueError: bad\n") == "ValueError: bad"


@pytest.mark.unit  # the rest of this file is in the slow tier
def test_a_pack_holds_finished_runs_and_the_notebook_still_running_but_no_partial_file(
        tmp_path):
    kit = kit_module()
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    run = scratch / "store" / "01_attack" / "abc"
    run.mkdir(parents=True)
    (run / "r1.csv").write_text("seed,asr\n0,0.5\n")
    (run / "r1.scores.csv").write_text("score\n1\n")
    (run / ".tmp-r2.csv").write_text("seed,as")  # a run being written
    staged = scratch / "res-01" / ".01_attack-123-xyz"
    staged.mkdir(parents=True)
    (staged / "01_attack.ipynb").write_text("{}")
    (scratch / "res-01" / "timings.csv").write_text("notebook,seconds\n01_attack,12.5\n")
    out.mkdir()
    kit.Packer(scratch, out).pack()
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["01_attack/abc/r1.csv", "01_attack/abc/r1.scores.csv"]
    with tarfile.open(out / "notebooks.tar.gz") as tar:
        assert "res-01/.01_attack-123-xyz/01_attack.ipynb" in tar.getnames()
    assert (out / "timings.csv").read_text().splitlines() == [
        "job,notebook,seconds", "res-01,01_attack,12.5"]
    assert sorted(p.name for p in out.iterdir()) == ["notebooks.tar.gz", "runs.tar.gz",
                                                    "timings.csv"]


def test_a_kit_terminated_mid_job_stops_the_job_packs_and_leaves_no_scratch(tmp_path):
    plan = tmp_path / "plan.txt"
    marker = f"job-of-{os.getpid()}-{time.time_ns()}"  # in the job's command line
    plan.write_text("long|300|-c \"import time; print('working', flush=True); "
                    f"time.sleep(300)\" {marker}\n")
    out = tmp_path / "out"
    kit = subprocess.Popen(["bash", str(RUN), str(out)], cwd=tmp_path, text=True,
                           env=kit_env(tmp_path, PLAN=str(plan)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    try:
        for _ in range(600):  # a guard against a hung kit, not a speed check
            log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
            if "\nworking\n" in log:  # the job's own line
                break
            assert kit.poll() is None, kit.stderr.read()
            time.sleep(0.5)
        else:
            pytest.fail("the job did not start in 600 polls half a second apart")
        kit.send_signal(signal.SIGTERM)
        _, err = kit.communicate(timeout=120)
    finally:
        if kit.poll() is None:
            os.killpg(kit.pid, signal.SIGKILL)
    assert kit.returncode == 130
    assert "the kit was interrupted" in err
    assert "interrupted (signal 15)" in (out / "log.txt").read_text()
    left = [c for c in Path("/proc").glob("[0-9]*/cmdline")
            if marker.encode() in (c.read_bytes() if c.exists() else b"")]
    assert not left  # the job was stopped with the kit
    assert {"log.txt", "env.txt", "runs.tar.gz"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert not any((tmp_path / "tmp").iterdir())  # the scratch folder is gone
