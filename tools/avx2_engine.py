"""Time the training engine on the kernels an AVX2-only CPU runs, on any x86 CPU.

    python tools/avx2_engine.py            # this CPU's own kernels, bf16 and fp32
    python tools/avx2_engine.py --avx2     # AVX2 kernels only (ATen, oneDNN, MKL), fp32

One epoch of ``train.fit`` on 12,000 Fashion-MNIST images (random images where the data
is not installed), with max-pooling before the ReLU (the package's order) and after it
(the reference networks' order; the same outputs and gradients), interleaved over
``--repeats`` runs; prints the median and best samples/s and the share of the processor's
matrix-product rate. Run it on a quiet machine: a second job on two cores halves it.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def reference_order(model):
    """``model`` with every max-pooling moved back after the ReLU it precedes."""
    import torch

    model = copy.deepcopy(model)
    mods = list(model.net[0])
    for i in range(len(mods) - 1):
        if isinstance(mods[i], torch.nn.MaxPool2d) and isinstance(mods[i + 1], torch.nn.ReLU):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
    model.net[0] = torch.nn.Sequential(*mods)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avx2", action="store_true", help="AVX2 kernels only (fp32)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.avx2 and any(os.environ.get(k) != v for k, v in AVX2.items()):
        # The kernels are chosen when torch loads: start again with the restriction set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2})

    import torch

    from bdunlearn.bench.harness import bench_data, matmul_rate, training_flops
    from bdunlearn.models import build_model
    from bdunlearn.registry import reference_config
    from bdunlearn.train import fit

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    x, y, source = bench_data("fmnist", 12000)
    precisions = ["fp32"] if args.avx2 else ["bf16", "fp32"]
    orders = {"pool first": lambda m: m, "reference order": reference_order}
    times: dict = {}
    for r in range(args.repeats + 1):  # the first round warms up and is not counted
        for p in precisions:
            cfg = reference_config("fmnist", epochs=1, batch_size=100, precision=p)
            for name, arrange in orders.items():
                model = arrange(build_model("fmnist_cnn", (1, 28, 28), 10, seed=r))
                t = time.perf_counter()
                fit(model, x if r else x[:300], y if r else y[:300], cfg, seed=r, device="cpu")
                if r:
                    times.setdefault((p, name), []).append(time.perf_counter() - t)
    flops = training_flops(build_model("fmnist_cnn", (1, 28, 28), 10), (1, 28, 28))
    print(f"kernels {torch.backends.cpu.get_cpu_capability()}, {source} images, "
          f"{torch.get_num_threads()} threads, {args.repeats} runs")
    for p in precisions:
        peak = matmul_rate(torch.device("cpu"), torch.float32 if p == "fp32" else torch.bfloat16)
        for name in orders:
            med = len(x) / statistics.median(times[(p, name)])
            best = len(x) / min(times[(p, name)])
            print(f"{p} {name:16s} median {med:7.0f}  best {best:7.0f} samples/s  "
                  f"{100 * med * flops / 1e9 / peak:4.1f}% of the {peak:.0f} GFLOP/s product")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
