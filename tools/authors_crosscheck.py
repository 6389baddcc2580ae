"""Run the BAU authors' Fashion-MNIST BadNets code and bdunlearn on the same seeds.

The authors' code (github.com/seartifacts/bau) seeds nothing; this script seeds Python's
``random``, NumPy and torch from outside before each of their scripts runs, records the
target label their script draws, and runs the package on the same seed and target label.
For each seed and shard count it records, for both: clean accuracy and ASR before the
requests and after all mitigation samples are unlearned, MU AUROC (every shard count)
and SMS AUROC (shard counts >= 2), AUROCs as the authors compute them (negatives: clean
training samples of the same shard that are neither poison nor mitigation originals,
mean of 5 draws)::

    python tools/authors_crosscheck.py --authors /path/to/bau --python /path/to/python \\
        --seeds 0 1 2 --shards 1 5 --out results/crosscheck.csv

``--authors`` is a clone of the authors' repository (a work tree or a bare git
directory); ``--python`` an interpreter with their dependencies: torch 2.13.0, torchvision
0.28.0, numpy, scikit-learn, Pillow, h5py, scikit-image, opencv-python-headless (their
``attack/util_file.py`` imports the last three at module top). The PyPI torchvision does
not load its C extension against the CPU torch build; a ``sitecustomize.py`` shim defines
the two operators its import needs (see the project's notes). The script patches one
line of their ``fmnist_bn.py`` for numpy >= 1.24 (ragged request lists) and links the
``_100`` folder their detector scripts expect. Nothing of their code is committed here.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import pandas as pd

FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte"]
SHIM = '''import torch
try:
    torch.ops.torchvision.nms
except (AttributeError, RuntimeError):
    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
'''
RUNNER = '''import random, runpy, sys
import numpy as np, torch
seed = int(sys.argv[1])
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
torch.set_num_threads({threads})
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def prepare(authors: Path, work: Path, threads: int) -> Path:
    """A scratch copy of the authors' tree with the data, the shim and the seeding runner."""
    tree = work / "bau"
    if not tree.exists():
        if (authors / "attack").is_dir():
            shutil.copytree(authors, tree, ignore=shutil.ignore_patterns(".git"))
        else:  # a bare git directory (what a mirror holds)
            blob = subprocess.run(["git", "--git-dir", str(authors), "archive", "HEAD"],
                                  check=True, capture_output=True).stdout
            tree.mkdir(parents=True)
            tarfile.open(fileobj=BytesIO(blob)).extractall(tree)
        script = tree / "attack" / "bn" / "fmnist_bn.py"
        text = script.read_text()
        fixed = text.replace("        np.array(requests),\n",
                             "        np.array(requests, dtype=object),\n")
        if fixed == text:
            raise SystemExit(f"{script} changed upstream: the numpy>=1.24 patch did not apply")
        script.write_text(fixed)
    raw = tree / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        src = FMNIST / f"{name}.gz"
        if not src.is_file():
            raise SystemExit(f"{src} is missing: apt-get install dataset-fashion-mnist")
        if not (raw / f"{name}.gz").is_file():
            shutil.copy(src, raw / f"{name}.gz")
            (raw / name).write_bytes(gzip.decompress(src.read_bytes()))
    (work / "shim").mkdir(exist_ok=True)
    (work / "shim" / "sitecustomize.py").write_text(SHIM)
    (work / "run_seeded.py").write_text(RUNNER.format(threads=threads))
    return tree


def authors_run(python: str, tree: Path, work: Path, folder: str, script: str, seed: int,
                args: list[str], log: Path) -> str:
    """Run one of the authors' scripts with every RNG seeded; return its output."""
    env = dict(os.environ, PYTHONPATH=str(work / "shim"), OMP_NUM_THREADS="1")
    cmd = [python, str(work / "run_seeded.py"), str(seed), script, *args]
    out = subprocess.run(cmd, cwd=tree / folder, env=env, capture_output=True, text=True)
    log.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"the authors' {script} failed (exit {out.returncode}); see {log}")
    return out.stdout


def _floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"^(0(?:\.\d+)?|1(?:\.0+)?)$", text, re.M)]


def authors_seed(python: str, tree: Path, work: Path, seed: int, shards: int,
                 epochs: int, poison: int, mitigation: int, alpha: float) -> dict:
    """The authors' attack at one seed and shard count: before/after and detectors."""
    root = work / f"authors-{seed}"
    common = ["--gpu=-1", f"--path={root}", f"--shards={shards}", "--slices=1",
              f"--epochs={epochs}", f"--poison_num={poison}", f"--mitigation_num={mitigation}",
              f"--alpha={alpha}", f"--experiment_id={seed}"]
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    row = {"source": "authors", "seed": seed, "shards": shards}
    # a run stopped part-way leaves checkpoints their code refuses to overwrite: start clean
    shutil.rmtree(root / f"{shards}_1_{epochs}", ignore_errors=True)
    start = time.perf_counter()
    for stage, k in (("before", 0), ("after", mitigation)):
        out = authors_run(python, tree, work, "attack/bn", "fmnist_bn.py", seed,
                          [*common, f"--requests={k}"], logs / f"{seed}-{shards}-{stage}.log")
        row["target"] = int(re.search(r"poison label of poison data is:\s+(\d+)", out)[1])
        acc, asr = _floats(out)[-2:]
        row[f"clean_acc_{stage}"], row[f"asr_{stage}"] = acc, asr
    row["train_seconds"] = time.perf_counter() - start
    # their detector scripts look for a folder named <shards>_<slices>_100
    link = root / f"{shards}_1_100"
    if epochs != 100 and not link.exists():
        link.symlink_to(f"{shards}_1_{epochs}")
    det = [a for a in common if not a.startswith("--epochs")] + ["--requests=0"]
    for name in ("mu", "sms") if shards > 1 else ("mu",):
        out = authors_run(python, tree, work, f"defense/{name}", f"fmnist_bn_{name}.py", seed,
                          det, logs / f"{seed}-{shards}-{name}.log")
        row[f"{name}_auroc"] = float(re.findall(r"^(\d\.\d+)$", out, re.M)[-1])
    return row


def package_seed(seed: int, target: int, shards: int, epochs: int, poison: int,
                 mitigation: int, alpha: float) -> dict:
    """The package at the same seed and target label: before/after and detectors."""
    from bdunlearn import attack, data, detect, registry
    from bdunlearn.unlearning import SisaService

    ds = data.load("fmnist")
    spec = registry.spec("fmnist")  # the reference procedure: [0, 1] inputs, one order
    atk = attack.build_badnets(ds, poison_num=poison, mitigation_num=mitigation, alpha=alpha,
                               target=target, seed=seed)
    start = time.perf_counter()
    svc = SisaService(atk.x, atk.y, arch=spec.arch, num_classes=ds.num_classes,
                      cfg=registry.reference_config("fmnist", epochs=epochs), shards=shards,
                      seed=seed, cache_dir="auto", requestable=atk.ids("mitigation")).fit()
    row = {"source": "package", "seed": seed, "shards": shards, "target": target}
    before = atk.evaluate(svc.predict)
    negatives = atk.detection_negatives()
    for name in ("mu", "sms") if shards > 1 else ("mu",):
        row[f"{name}_auroc"] = detect.evaluate(svc, atk.ids("mitigation"), negatives, name,
                                               seed=seed, draws=5)["auroc"]
    svc.unlearn(atk.ids("mitigation"))
    after = atk.evaluate(svc.predict)
    row.update(clean_acc_before=before["clean_acc"], asr_before=before["asr"],
               clean_acc_after=after["clean_acc"], asr_after=after["asr"],
               train_seconds=time.perf_counter() - start)
    return row


COLUMNS = {"asr_before": "ASR before", "asr_after": "ASR after",
           "clean_acc_before": "clean accuracy before", "mu_auroc": "MU AUROC",
           "sms_auroc": "SMS AUROC"}
SOURCES = {"authors": "the authors' code", "package": "bdunlearn (reference procedure, bf16)"}


def markdown(path: Path) -> str:
    """The README's table: mean (range over seeds) per source and shard count, from the
    library's aggregation of ``path`` (``bdunlearn.summary.crosscheck``)."""
    from bdunlearn import summary

    agg = summary.crosscheck(tuple(COLUMNS), path)
    seeds = pd.read_csv(path).groupby(["source", "shards"]).seed.unique()
    lines = ["| source | shards | seeds | " + " | ".join(COLUMNS.values()) + " |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for (src, shards), row in agg.sort_index(level=["shards", "source"]).iterrows():
        cells = []
        for col in COLUMNS:
            mean, lo, hi = (row.get((col, k)) for k in ("mean", "min", "max"))
            if mean is None or pd.isna(mean):
                cells.append("n/a")
                continue
            fmt = (lambda v: f"{100 * v:.1f}%") if col.startswith(("asr", "clean")) else (
                lambda v: f"{v:.3f}")
            cells.append(fmt(mean) if lo == hi else f"{fmt(mean)} ({fmt(lo)}-{fmt(hi)})")
        names = ", ".join(str(s) for s in sorted(seeds[(src, shards)]))
        lines.append(f"| {SOURCES.get(src, src)} | {shards} | {names} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", type=Path, help="clone of github.com/seartifacts/bau")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with the authors' dependencies")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--poison-num", type=int, default=200)
    ap.add_argument("--mitigation-num", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bau-crosscheck"))
    ap.add_argument("--out", type=Path, default=Path("results/crosscheck.csv"))
    ap.add_argument("--only", choices=("authors", "package"),
                    help="run one side (the package side needs the authors' rows in --out "
                         "for their target labels)")
    args = ap.parse_args(argv)
    if args.only != "package" and args.authors is None:
        ap.error("--authors PATH is required to run the authors' code")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(args.out).to_dict("records") if args.out.is_file() else []
    done = {(r["source"], r["seed"], r["shards"]) for r in rows}
    tree = prepare(args.authors, args.work, args.threads) if args.only != "package" else None

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)

    for seed in args.seeds:
        for shards in args.shards:
            if args.only != "package" and ("authors", seed, shards) not in done:
                rows.append(authors_seed(args.python, tree, args.work, seed, shards,
                                         args.epochs, args.poison_num, args.mitigation_num,
                                         args.alpha))
                save()
            if args.only != "authors" and ("package", seed, shards) not in done:
                theirs = [r for r in rows if r["source"] == "authors" and r["seed"] == seed]
                if not theirs:
                    raise SystemExit(f"no authors' row for seed {seed} in {args.out}: "
                                     "run their side first for the target label")
                rows.append(package_seed(seed, int(theirs[0]["target"]), shards, args.epochs,
                                         args.poison_num, args.mitigation_num, args.alpha))
                save()
    df = pd.DataFrame(rows)
    df["epochs"] = args.epochs
    df.to_csv(args.out, index=False)
    print(markdown(args.out))


if __name__ == "__main__":
    main()
