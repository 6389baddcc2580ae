"""Performance figures (docs/performance.md), printed as a table: ``python -m bdunlearn.bench``.

The training loops compared with the engine live in :mod:`bdunlearn.bench.baselines`.

For the reference model of each dataset, at batch 100:

``engine``
    throughput of :func:`bdunlearn.train.fit` (uint8 data in memory, per-batch conversion
    and augmentation) beside a bare forward/backward/step loop of the same model, same
    optimiser and same memory layout on a float tensor already in memory; the difference
    is the engine's data and bookkeeping overhead in %.
``engine compute rate`` and ``matrix product rate``
    the engine's samples/s times the model's training FLOPs per sample
    (:func:`training_flops`) against a 2048 x 2048 matrix product in the engine's
    precision on the same device (:func:`matmul_rate`), and the share it reaches.
``bf16 vs fp32`` and ``1 thread``
    the engine with bf16 autocast against fp32 (the precision ``"auto"`` picks is the one
    the engine rows use), and the engine at one torch thread.
``dataloader``
    the engine against the conventional pipeline of most backdoor codebases: a
    ``torch.utils.data.Dataset`` that turns each uint8 image into a PIL image, then a
    normalised float tensor (with per-sample crop/flip where the reference training
    augments), ``DataLoader(batch_size=100, shuffle=True, num_workers=0)``.
``processes vs threads``
    as many independent trainings as cores in one-thread worker processes
    (:func:`bdunlearn.parallel.train_jobs`, process start included) against one after
    another in this process with all threads.
``authors' pipeline`` (Fashion-MNIST)
    the engine against the BAU authors' way of feeding their model (per-sample PIL and
    ``ToTensor``, DataLoader at batch 100, order shuffled once, fp32) on identical work.
``whole run`` (Fashion-MNIST)
    seconds to train the paper's model once: all 60,000 images plus the attack's 300, 20
    epochs; measured in the full run, extrapolated from measured throughput in
    ``--quick`` (the row says which).
``sisa S=k``
    one unlearning request that touches 1 of ``k`` shards against a full retrain, in
    seconds and in sample-epochs (:class:`bdunlearn.unlearning.SisaService`).
``stacked S=k`` (CUDA only unless ``--stacked``)
    ``k`` constituent models trained together by :func:`bdunlearn.stacked.fit_stacked`
    against one after another.
``neural cleanse``
    all classes reverse-engineered in one batched run against one class at a time.

Every figure is the best of ``--repeats`` interleaved runs after a warm-up, so a busy
machine lowers the figures less than it scatters them; the header prints the machine,
its load average, the torch thread count and the date, so numbers can be compared
between runs (on a small shared machine ``--threads 1`` gives steadier figures: contending
intra-op threads can slow training several-fold). Datasets that are not on disk are
replaced by random uint8 images of the right shape (throughput does not depend on pixel
values; the table says which).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..defenses import DefenderView, run_defense
from ..models import build_model
from ..parallel import Job, Stage, cores, train_jobs
from ..registry import reference_config, spec
from ..stacked import fit_many, stackable
from ..store import cpu_name
from ..train import (
    _channels_last,
    cpu_has_native_bf16,
    fit,
    numerics_label,
    resolve_device,
    resolve_precision,
)
from ..unlearning import SisaService
from .baselines import BATCH, authors_loop, bare_loop, dataloader_loop

BENCH_DATASETS = ("fmnist", "mnist", "gtsrb", "cifar10")
_SHAPES = {"fmnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
           "gtsrb": ((3, 32, 32), 43), "cifar10": ((3, 32, 32), 10),
           "digits": ((1, 28, 28), 10)}
WHOLE_RUN_SAMPLES = 60300  # Fashion-MNIST's 60,000 images plus 300 mitigation samples
WHOLE_RUN_EPOCHS = 20


@dataclass
class Settings:
    """How long to measure. ``budget`` is the target seconds of one timed run."""

    budget: float = 4.0
    repeats: int = 3
    sisa_budget: float = 20.0
    shards: tuple[int, ...] = (1, 5, 10, 20)
    sisa_datasets: int | None = None  # None: every dataset; k: the first k
    stacked_shards: tuple[int, ...] = (5, 10, 20)
    nc_steps: int = 100
    nc_samples: int = 200
    nc_datasets: int | None = None  # None: every dataset; k: the first k
    parallel_budget: float = 8.0
    whole_run: bool = True  # train the paper's model once (else extrapolate)

    @classmethod
    def quick(cls) -> Settings:
        return cls(budget=0.8, repeats=2, sisa_budget=1.2, sisa_datasets=1,
                   stacked_shards=(5,), nc_steps=10, nc_samples=100, nc_datasets=1,
                   parallel_budget=2.0, whole_run=False)


@dataclass
class Row:
    dataset: str
    arch: str
    figure: str
    value: float | None
    unit: str
    detail: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ machine and data

def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":  # resolve_device set the numerics: TF32 off, cuDNN deterministic
        info["gpu"] = f"{torch.cuda.get_device_name(device)} ({numerics_label()})"
    try:
        info["load"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        info["load"] = "n/a"
    return info


def bench_data(name: str, n: int, seed: int = 0):
    """``(x, y, source)``: the real training set when on disk, else random uint8 images."""
    try:
        from ..data import load

        ds = load(name)
        x, y = ds.x_train, ds.y_train
        if len(y) >= n:
            idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(y))[:n])
            return x[idx], y[idx], "real"
        reps = -(-n // len(y))
        return x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n], "real (repeated)"
    except (FileNotFoundError, ValueError, RuntimeError, ImportError):
        shape, k = _SHAPES[name]
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                torch.randint(0, k, (n,), generator=g), "random")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


# ------------------------------------------------------------------ figures

def _size_for(rate: float, budget: float, cap: int, min_batches: int = 2) -> int:
    n = int(rate * budget) // BATCH * BATCH
    return int(max(min_batches * BATCH, min(n, cap)))


def training_flops(model: torch.nn.Module, shape) -> float:
    """FLOPs of one training sample through ``model``: three times the forward pass's
    multiply-adds of its convolutions and linear layers, two FLOPs each (the backward
    pass costs about twice the forward one)."""
    macs = []

    def count(mod, inputs, out):
        if isinstance(mod, torch.nn.Conv2d):
            per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            macs.append(out[0].numel() * per_out)
        else:
            macs.append(mod.in_features * mod.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
    return 3 * 2 * float(sum(macs))


def matmul_rate(dev, dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n`` x ``n`` matrix product on ``dev`` (best of ``repeats``): the
    processor's own dense rate, what the engine's compute rate is compared with."""
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    a @ b  # warm-up
    return 2 * n ** 3 / min(_timed(lambda: a @ b, dev) for _ in range(repeats)) / 1e9


def throughput_rows(name: str, dev, st: Settings, cap: int = 60000) -> tuple[list[Row], float]:
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    precision = resolve_precision("auto", dev)  # the engine's default
    other = "fp32" if precision == "bf16" else "bf16"
    cfg = reference_config(name, epochs=1, batch_size=BATCH, precision=precision)
    cfg_other = dataclasses.replace(cfg, precision=other)
    channels_last = _channels_last(build_model(arch, shape, k), dev)  # the engine's choice
    # Warm-up (kernel selection, allocator) and calibration of the sample count.
    xw, yw, _ = bench_data(name, 3 * BATCH)
    for c in (cfg, cfg_other):
        fit(build_model(arch, shape, k, seed=0), xw, yw, c, seed=0, device=dev)
    m = build_model(arch, shape, k, seed=0)
    xf = (xw.float() / 255).to(dev)
    if channels_last:
        xf = xf.contiguous(memory_format=torch.channels_last)
    bare_loop(m, xf[:BATCH], yw[:BATCH].to(dev), cfg, dev, channels_last, precision)
    rate = 2 * BATCH / _timed(lambda: bare_loop(m, xf[BATCH:], yw[BATCH:].to(dev), cfg, dev,
                                                channels_last, precision), dev)
    n = _size_for(rate, st.budget, cap)
    x, y, source = bench_data(name, n)
    xf = (x.float() / 255).to(dev)
    xf_cl = xf.contiguous(memory_format=torch.channels_last) if channels_last else xf
    yd = y.to(dev)
    dataloader_loop(build_model(arch, shape, k, seed=0), x[:BATCH], y[:BATCH], cfg, dev)
    threads = torch.get_num_threads()
    t_eng, t_other, t_one, t_bare, t_plain, t_dl = [], [], [], [], [], []
    for r in range(st.repeats):  # interleaved, best of each
        t_eng.append(_timed(lambda: fit(build_model(arch, shape, k, seed=r), x, y, cfg,
                                        seed=r, device=dev), dev))
        t_other.append(_timed(lambda: fit(build_model(arch, shape, k, seed=r), x, y,
                                          cfg_other, seed=r, device=dev), dev))
        if dev.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
            try:
                t_one.append(_timed(lambda: fit(build_model(arch, shape, k, seed=r), x, y,
                                                cfg, seed=r, device=dev), dev))
            finally:
                torch.set_num_threads(threads)
        t_bare.append(_timed(lambda: bare_loop(build_model(arch, shape, k, seed=r), xf_cl, yd,
                                               cfg, dev, channels_last, precision), dev))
        if channels_last:
            t_plain.append(_timed(lambda: bare_loop(build_model(arch, shape, k, seed=r), xf,
                                                    yd, cfg, dev, False, precision), dev))
        t_dl.append(_timed(lambda: dataloader_loop(build_model(arch, shape, k, seed=r), x, y,
                                                   cfg, dev, seed=r), dev))
    eng, bare, dl = n / min(t_eng), n / min(t_bare), n / min(t_dl)
    aug = "+".join(a for a, on in (("crop", cfg.crop), ("flip", cfg.flip)) if on) or "none"
    layout = "channels-last" if channels_last else "default layout"
    speed = {precision: eng, other: n / min(t_other)}
    native = ("native bf16" if (cpu_has_native_bf16() if dev.type == "cpu" else
                                resolve_precision("auto", dev) == "bf16") else "no native bf16")
    rows = [
        Row(name, arch, "engine throughput", eng, "samples/s",
            f"train.fit, {precision}, {threads} threads, {n} {source} samples, "
            f"augmentation {aug}"),
        Row(name, arch, f"engine throughput, {other}", speed[other], "samples/s",
            f"train.fit with precision={other!r}"),
        Row(name, arch, "bf16 vs fp32", speed["bf16"] / speed["fp32"], "x",
            f"engine samples/s, bf16 autocast over fp32 ({native}; auto picks {precision})"),
    ]
    if t_one:
        rows.append(Row(name, arch, "engine throughput, 1 thread", n / min(t_one), "samples/s",
                        f"{precision}; {eng / (n / min(t_one)):.2f}x faster with {threads} "
                        "threads"))
    rows.append(Row(name, arch, "bare loop throughput", bare, "samples/s",
                    f"float tensor in memory, {layout}, {precision}"))
    if channels_last:
        rows.append(Row(name, arch, "bare loop, default layout", n / min(t_plain),
                        "samples/s", "the same loop without channels-last"))
    flops = training_flops(build_model(arch, shape, k), shape)
    peak = matmul_rate(dev, torch.bfloat16 if precision == "bf16" else torch.float32)
    rows += [
        Row(name, arch, "engine compute rate", eng * flops / 1e9, "GFLOP/s",
            f"{flops / 1e6:.1f} MFLOP per training sample x engine samples/s"),
        Row(name, arch, f"matrix product rate, {precision}", peak, "GFLOP/s",
            "2048 x 2048 on this device: the processor's own dense rate"),
        Row(name, arch, "engine vs matrix product", 100 * eng * flops / 1e9 / peak, "%",
            f"share of the {precision} matrix-product rate the engine reaches"),
        Row(name, arch, "engine overhead", 100 * (bare / eng - 1), "%",
            "time over the bare loop (target <= 10 on CPU)"),
        Row(name, arch, "engine vs DataLoader", eng / dl, "x",
            f"per-sample PIL DataLoader at {dl:.0f} samples/s"),
    ]
    return rows, eng


def sisa_rows(name: str, dev, st: Settings, rate: float) -> list[Row]:
    """One request touching 1 of S shards against a full retrain (S = 1 is the retrain)."""
    cfg = reference_config(name, epochs=1, batch_size=BATCH)
    n = _size_for(rate, st.sisa_budget, 60000, min_batches=max(st.shards))
    x, y, source = bench_data(name, n)
    rows, full = [], None
    for s in sorted(set(st.shards) | {1}):
        svc = SisaService(x, y, arch=spec(name).arch, num_classes=_SHAPES[name][1],
                          cfg=cfg, shards=s, seed=0, cache_dir=None, device=dev).fit()
        # ``repeats`` requests of one id each; every one touches exactly one shard.
        costs = [svc.unlearn([i]) for i in range(st.repeats)]
        cost = min(costs, key=lambda c: c.seconds)
        if s == 1:  # every S=1 request, and the S=1 fit, is a full retrain
            full = cost
            if svc.fit_cost.seconds < full.seconds:
                full = dataclasses.replace(cost, seconds=svc.fit_cost.seconds)
        if s not in st.shards:
            continue
        rows.append(Row(
            name, spec(name).arch, f"sisa request, S={s}", cost.seconds / full.seconds, "x",
            f"{cost.seconds:.2f} s vs {full.seconds:.2f} s full retrain; sample-epochs "
            f"{cost.sample_epochs}/{full.sample_epochs} = "
            f"{cost.sample_epochs / full.sample_epochs:.3f}; {n} {source} samples, 1 epoch",
            {"sample_epoch_ratio": cost.sample_epochs / full.sample_epochs,
             "seconds": cost.seconds, "full_seconds": full.seconds,
             "shards_retrained": cost.shards_retrained}))
    return rows


def stacked_rows(name: str, dev, st: Settings, rate: float, force: bool) -> list[Row]:
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    if dev.type != "cuda" and not force:
        return [Row(name, arch, "stacked vs sequential", None, "",
                    "skipped on CPU: fit_many trains one model after another there "
                    "(pass --stacked to measure anyway)")]
    probe = [build_model(arch, shape, k), build_model(arch, shape, k)]
    if not stackable(probe):
        return [Row(name, arch, "stacked vs sequential", None, "",
                    "not stackable (batch norm or dropout): fit_many trains sequentially")]
    cfg = reference_config(name, epochs=1, batch_size=BATCH)
    rows = []
    for s in st.stacked_shards:
        n = _size_for(rate, st.budget, 60000, min_batches=s)
        x, y, source = bench_data(name, n)
        parts = [torch.from_numpy(p) for p in np.array_split(np.arange(n), s)]
        xs, ys = [x[p] for p in parts], [y[p] for p in parts]
        seeds = list(range(s))

        def run(stacked):
            models = [build_model(arch, shape, k, seed=i) for i in range(s)]
            fit_many(models, xs, ys, cfg, seeds=seeds, device=dev, stacked=stacked)

        run(True)  # warm-up
        t_stk, t_seq = [], []
        for _ in range(st.repeats):
            t_stk.append(_timed(lambda: run(True), dev))
            t_seq.append(_timed(lambda: run(False), dev))
        rows.append(Row(name, arch, f"stacked vs sequential, S={s}", min(t_seq) / min(t_stk),
                        "x", f"{min(t_stk):.2f} s stacked vs {min(t_seq):.2f} s one after "
                        f"another; {n} {source} samples, 1 epoch"))
    return rows


def parallel_rows(name: str, dev, st: Settings, rate: float) -> list[Row]:
    """As many trainings as cores in one-thread processes against one after another."""
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    workers = cores()
    if dev.type != "cpu" or workers < 2:
        return [Row(name, arch, "processes vs threads", None, "",
                    "needs a CPU with at least two cores")]
    cfg = reference_config(name, epochs=1, batch_size=BATCH)
    n = _size_for(rate / workers, st.parallel_budget, 60000)
    x, y, source = bench_data(name, n * workers)

    def jobs():
        return [Job(build_model(arch, shape, k, seed=i), x[i * n:(i + 1) * n],
                    y[i * n:(i + 1) * n], cfg, [Stage(n, seed=i, epochs=1)])
                for i in range(workers)]

    t_seq, t_proc, t_train = [], [], []
    for _ in range(st.repeats):
        t_seq.append(_timed(lambda: train_jobs(jobs(), device=dev, workers=1), dev))
        start = time.perf_counter()
        results = train_jobs(jobs(), device=dev, workers=workers)
        t_proc.append(time.perf_counter() - start)
        t_train.append(max(seconds for job in results for _, seconds in job))
    threads = torch.get_num_threads()
    return [Row(name, arch, "processes vs threads", min(t_seq) / min(t_proc), "x",
                f"{workers} jobs of {n} {source} samples: {min(t_proc):.2f} s in {workers} "
                f"one-thread processes (start included) vs {min(t_seq):.2f} s one after "
                f"another with {threads} threads"),
            Row(name, arch, "processes vs threads, training only",
                min(t_seq) / min(t_train), "x",
                f"the same without starting the processes: the slowest worker trained for "
                f"{min(t_train):.2f} s (what long jobs such as SISA shards see)")]


def authors_rows(name: str, dev, st: Settings, rate: float) -> list[Row]:
    """The engine against the BAU authors' Fashion-MNIST pipeline on identical work."""
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    cfg = reference_config(name, epochs=1, batch_size=BATCH, shuffle="once")
    fp32 = dataclasses.replace(cfg, precision="fp32")
    n = _size_for(rate, st.budget / 3, 60000)
    x, y, source = bench_data(name, n)
    authors_loop(build_model(arch, shape, k, seed=0), x[:BATCH], y[:BATCH], fp32, dev)
    t_eng, t_fp32, t_auth = [], [], []
    for r in range(st.repeats):
        t_eng.append(_timed(lambda: fit(build_model(arch, shape, k, seed=r), x, y, cfg,
                                        seed=r, device=dev), dev))
        t_fp32.append(_timed(lambda: fit(build_model(arch, shape, k, seed=r), x, y, fp32,
                                         seed=r, device=dev), dev))
        t_auth.append(_timed(lambda: authors_loop(build_model(arch, shape, k, seed=r), x, y,
                                                  fp32, dev, seed=r), dev))
    auth = n / min(t_auth)
    precision = resolve_precision(cfg.precision, dev)
    return [Row(name, arch, "engine vs authors' pipeline", min(t_auth) / min(t_eng), "x",
                f"engine {precision} at {n / min(t_eng):,.0f} samples/s vs the BAU authors' "
                f"per-sample ToTensor DataLoader (batch 100, order shuffled once, fp32) at "
                f"{auth:,.0f} samples/s; engine fp32 alone "
                f"{min(t_auth) / min(t_fp32):.2f}x; {n} {source} samples, 1 epoch",
                {"authors_samples_per_s": auth, "engine_fp32_ratio": min(t_auth) / min(t_fp32)})]


def whole_run_rows(name: str, dev, st: Settings, rate: float) -> list[Row]:
    """Seconds to train the paper's Fashion-MNIST model once (60,300 samples, 20 epochs)."""
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    cfg = reference_config(name, epochs=WHOLE_RUN_EPOCHS, batch_size=BATCH)
    what = (f"{WHOLE_RUN_SAMPLES:,} samples x {WHOLE_RUN_EPOCHS} epochs, "
            f"{resolve_precision(cfg.precision, dev)}, {torch.get_num_threads()} threads")
    if not st.whole_run:
        seconds = WHOLE_RUN_SAMPLES * WHOLE_RUN_EPOCHS / rate
        return [Row(name, arch, "whole run (extrapolated)", seconds, "s",
                    f"{what}; extrapolated from the measured engine throughput "
                    f"({rate:,.0f} samples/s), not trained")]
    x, y, source = bench_data(name, WHOLE_RUN_SAMPLES)
    seconds = _timed(lambda: fit(build_model(arch, shape, k, seed=0), x, y, cfg, seed=0,
                                 device=dev), dev)
    return [Row(name, arch, "whole run", seconds, "s", f"{what}; trained once on {source} "
                "samples")]


def neural_cleanse_rows(name: str, dev, st: Settings) -> list[Row]:
    arch = spec(name).arch
    shape, k = _SHAPES[name]
    x, y, source = bench_data(name, st.nc_samples)
    model = build_model(arch, shape, k, seed=0)
    fit(model, x, y, reference_config(name, epochs=1, batch_size=BATCH), seed=0, device=dev)
    view = DefenderView(model, x, y, num_classes=k, device=dev)
    times = {}
    for batched in (True, False):
        call = lambda: run_defense("neural_cleanse", view, batched=batched,  # noqa: E731
                                   steps=st.nc_steps)
        run_defense("neural_cleanse", view, batched=batched, steps=1)  # warm-up
        times[batched] = min(_timed(call, dev) for _ in range(max(1, st.repeats - 1)))
    return [Row(name, arch, "neural cleanse batched vs per class", times[False] / times[True],
                "x", f"{times[True]:.2f} s all {k} classes at once vs {times[False]:.2f} s "
                f"one class at a time; at most {st.nc_steps} steps, {len(y)} {source} "
                "clean samples")]


# ------------------------------------------------------------------ driver and printing

def run_benchmark(datasets=("fmnist",), device="auto", quick: bool = False,  # noqa: C901
                  settings: Settings | None = None, stacked_on_cpu: bool = False,
                  log=print, on_rows=None) -> tuple[dict, list[Row]]:
    """Measure every figure for ``datasets``; return the machine info and the rows.

    ``on_rows(rows)`` receives each group of rows as soon as it is measured (the command
    line writes them to its CSV then, so a run cut short keeps every figure it measured)."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("no dataset given; choose from " + ", ".join(BENCH_DATASETS))
    for d in datasets:
        if d not in _SHAPES:
            raise ValueError(f"unknown dataset {d!r}; choose from {', '.join(BENCH_DATASETS)}")
    dev = resolve_device(device)
    st = settings or (Settings.quick() if quick else Settings())
    info = machine_info(dev)
    rows: list[Row] = []

    def emit(got: list[Row]) -> None:
        rows.extend(got)
        if on_rows is not None:
            on_rows(list(got))

    for i, name in enumerate(datasets):
        log(f"[bench] {name}: throughput ...", file=sys.stderr)
        got, rate = throughput_rows(name, dev, st)
        emit(got)
        if st.sisa_datasets is None or i < st.sisa_datasets:
            log(f"[bench] {name}: SISA requests ...", file=sys.stderr)
            emit(sisa_rows(name, dev, st, rate))
        else:
            emit([Row(name, spec(name).arch, "sisa request", None, "",
                      "skipped in --quick (first dataset only)")])
        if st.sisa_datasets is None or i < st.sisa_datasets:
            log(f"[bench] {name}: processes vs threads ...", file=sys.stderr)
            emit(parallel_rows(name, dev, st, rate))
        if name == "fmnist":  # the paper's model and the authors' pipeline
            log(f"[bench] {name}: the authors' pipeline and the whole run ...",
                file=sys.stderr)
            emit(authors_rows(name, dev, st, rate))
            emit(whole_run_rows(name, dev, st, rate))
        log(f"[bench] {name}: stacked training ...", file=sys.stderr)
        emit(stacked_rows(name, dev, st, rate, stacked_on_cpu))
        if st.nc_datasets is None or i < st.nc_datasets:
            log(f"[bench] {name}: Neural Cleanse ...", file=sys.stderr)
            emit(neural_cleanse_rows(name, dev, st))
        else:
            emit([Row(name, spec(name).arch, "neural cleanse batched", None, "",
                      "skipped in --quick (first dataset only)")])
    info["load_after"] = machine_info(dev)["load"]
    return info, rows


def _busy(info: dict) -> bool:
    try:
        loads = [float(v) for v in (info["load"] + " " + info.get("load_after", "")).split()]
    except (ValueError, KeyError):
        return False
    return bool(loads) and max(loads) > 0.5 * (info.get("cores") or 1)


def format_table(info: dict, rows: list[Row]) -> str:
    head = [f"bdunlearn benchmark  {info['date']}",
            f"cpu: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}",
            f"torch {info['torch']}, python {info['python']}, device {info['device']}"
            + (f" ({info['gpu']})" if "gpu" in info else ""),
            f"load average before: {info['load']}, after: {info.get('load_after', 'n/a')}"]
    if _busy(info):
        head.append("note: the machine was busy (load average above half the cores); "
                    "figures are noisy" + ("" if info["threads"] == 1 else
                                           ", and --threads 1 gives steadier ones"))
    head.append("")
    cols = ("dataset", "model", "figure", "value", "detail")
    body = []
    for r in rows:
        if r.value is None:
            val = "-"
        elif r.unit == "x":
            val = f"{r.value:.2f}x"
        elif r.unit == "%":
            val = f"{r.value:+.1f}%"
        elif r.unit == "s":
            val = f"{r.value:,.1f} s"
        else:
            val = f"{r.value:,.0f} {r.unit}"
        body.append((r.dataset, r.arch, r.figure, val, r.detail))
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(cols[:-1])]
    line = lambda cells: "  ".join(  # noqa: E731
        [c.ljust(w) if i != 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        + [cells[-1]])
    out = head + [line(cols), line(["-" * w for w in widths] + ["-" * 6])]
    out += [line(b) for b in body]
    return "\n".join(out)


CSV_FIELDS = ["date", "cpu", "cores", "threads", "torch", "device", "gpu", "dataset", "model",
              "figure", "value", "unit", "detail", "extra"]


class CsvRows:
    """The benchmark's CSV, written row by row: the header at once, then each row flushed
    to disk as it is added, so a run killed midway leaves every row measured before."""

    def __init__(self, path: str, info: dict):
        self.info = info
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_FIELDS)
        self.writer.writeheader()
        self.file.flush()

    def add(self, rows: list[Row]) -> None:
        info = self.info
        for r in rows:
            self.writer.writerow({
                "date": info["date"], "cpu": info["cpu"], "cores": info["cores"],
                "threads": info["threads"], "torch": info["torch"], "device": info["device"],
                "gpu": info.get("gpu", ""), "dataset": r.dataset, "model": r.arch,
                "figure": r.figure, "value": "" if r.value is None else r.value,
                "unit": r.unit, "detail": r.detail,
                "extra": json.dumps(r.extra) if r.extra else ""})
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def write_csv(path: str, info: dict, rows: list[Row]) -> None:
    out = CsvRows(path, info)
    try:
        out.add(rows)
    finally:
        out.close()


def row_line(r: Row) -> str:
    """One measured row as a line of the progress log."""
    value = "-" if r.value is None else f"{r.value:,.4g} {r.unit}"
    return f"[bench] {r.dataset} {r.figure}: {value}" + (f" ({r.detail})" if r.detail else "")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return vals


def main(argv=None) -> int:  # noqa: C901
    p = argparse.ArgumentParser(prog="python -m bdunlearn.bench",
                                description="Print the performance figures (docs/performance.md).")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--datasets",
                   help="comma-separated, from " + ", ".join(BENCH_DATASETS)
                   + " (default: all; fmnist with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="every figure at reduced repeats (within 5 minutes on two CPU cores)")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, help="timed repeats per figure (best is kept)")
    p.add_argument("--shards", type=_int_list, help="SISA shard counts, e.g. 1,5,10,20")
    p.add_argument("--stacked", action="store_true",
                   help="measure stacked training on the CPU too")
    args = p.parse_args(argv)
    if args.datasets is None:
        args.datasets = "fmnist" if args.quick else ",".join(BENCH_DATASETS)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in _SHAPES]
    if bad or not datasets:
        p.error(f"unknown dataset {bad[0] if bad else args.datasets!r}; choose from "
                + ", ".join(BENCH_DATASETS))
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads {args.threads} must be a positive integer")
        torch.set_num_threads(args.threads)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats {args.repeats} must be a positive integer")
    st = Settings.quick() if args.quick else Settings()
    if args.repeats:
        st.repeats = args.repeats
    if args.shards:
        st.shards = args.shards
    out = None
    if args.csv:
        try:
            dev = resolve_device(args.device)
            out = CsvRows(args.csv, machine_info(dev))
        except ValueError as exc:
            p.error(str(exc))
        except OSError as exc:
            p.error(f"--csv {args.csv}: cannot write it ({exc.strerror or exc})")

    def measured(rows):  # as each group is measured: to the CSV and the progress log
        if out is not None:
            out.add(rows)
        for r in rows:
            print(row_line(r), file=sys.stderr, flush=True)

    try:
        info, rows = run_benchmark(datasets, args.device, args.quick, st, args.stacked,
                                   on_rows=measured)
    except ValueError as exc:
        p.error(str(exc))
    finally:
        if out is not None:
            out.close()
    print(format_table(info, rows))
    if args.csv:
        print(f"\nwrote {args.csv} (row by row, as measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
