"""Stacked (vmapped) training equals one ``fit`` after another; fall-backs and checks work.

Smoke scale on the CPU: small random images so the file runs in seconds.
"""

import pytest
import torch
from torch import nn

from bdunlearn.models import Normalized, build_model
from bdunlearn.stacked import fit_many, fit_stacked, stackable, why_not_stackable
from bdunlearn.train import TrainConfig, fit


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, two contending threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SIZES = (200, 150, 170)  # batch 50: 4, 3 and 4 steps, the last one short (20)
SEEDS = (11, 22, 33)


def _data(shape, sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g) for n in sizes]
    ys = [torch.randint(0, 10, (n,), generator=g) for n in sizes]
    return xs, ys


def _models(arch, shape, k=3):
    return [build_model(arch, shape, 10, seed=100 + i) for i in range(k)]


def _sequential(arch, shape, xs, ys, cfg, **kw):
    models = _models(arch, shape, len(xs))
    for m, x, y, s in zip(models, xs, ys, SEEDS):
        fit(m, x, y, cfg, seed=s, device="cpu", **kw)
    return models


def _assert_same(a, b, atol=1e-4):
    for ma, mb in zip(a, b):
        for (na, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
            torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-4, msg=na)


@pytest.mark.parametrize("cfg, shape, atol", [
    (TrainConfig(epochs=2, batch_size=50, momentum=0.9, weight_decay=5e-4, precision="fp32"),
     (1, 16, 16), 1e-4),
    (TrainConfig(epochs=2, batch_size=50, momentum=0.9, weight_decay=5e-4, lr_step=1,
                 crop=True, flip=True, precision="fp32"), (3, 12, 12), 1e-4),
    (TrainConfig(epochs=2, batch_size=50, momentum=0.9, weight_decay=5e-4, precision="fp32",
                 shuffle="once"), (1, 16, 16), 1e-4),
    # bf16 autocast: the vmapped and the plain forward round differently
    (TrainConfig(epochs=2, batch_size=50, momentum=0.9, weight_decay=5e-4, precision="bf16"),
     (1, 16, 16), 2e-2),
])
def test_stacked_equals_sequential(cfg, shape, atol):
    xs, ys = _data(shape)
    seq = _sequential("fmnist_cnn", shape, xs, ys, cfg)
    stk = fit_stacked(_models("fmnist_cnn", shape), xs, ys, cfg, seeds=SEEDS, device="cpu")
    _assert_same(seq, stk, atol=atol)
    untrained = _models("fmnist_cnn", shape)
    moved = [(p - q).abs().max() for p, q in zip(stk[1].parameters(), untrained[1].parameters())]
    assert max(moved) > 1e-3  # it did train
    assert not any(m.training for m in stk)


def test_stacked_slice_schedule_and_empty_shard():
    """``epochs``/``epoch_offset`` as SISA slices use them; an empty shard stays as it was."""
    shape = (1, 16, 16)
    cfg = TrainConfig(epochs=4, batch_size=50, momentum=0.9, weight_decay=5e-4, lr_step=2,
                      precision="fp32")
    xs, ys = _data(shape, sizes=(120, 0, 60))
    seq = _models("lenet5", shape)
    for m, x, y, s in zip(seq, xs, ys, SEEDS):
        fit(m, x, y, cfg, seed=s, device="cpu", epochs=1, epoch_offset=2)
    stk = fit_stacked(_models("lenet5", shape), xs, ys, cfg, seeds=SEEDS, device="cpu",
                      epochs=1, epoch_offset=2)
    _assert_same(seq, stk)
    _assert_same([stk[1]], [_models("lenet5", shape)[1]], atol=0)


def test_fit_many_auto_is_sequential_on_cpu():
    shape = (1, 12, 12)
    cfg = TrainConfig(epochs=1, batch_size=50, momentum=0.9, precision="fp32")
    xs, ys = _data(shape)
    seq = _sequential("fmnist_cnn", shape, xs, ys, cfg)
    many = fit_many(_models("fmnist_cnn", shape), xs, ys, cfg, seeds=SEEDS, device="cpu")
    _assert_same(seq, many, atol=0)
    forced = fit_many(_models("fmnist_cnn", shape), xs, ys, cfg, seeds=SEEDS, device="cpu",
                      stacked=True)
    _assert_same(seq, forced)


def _bn_model(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))
    return Normalized(net, (0.5,), (0.5,))


def test_batchnorm_and_dropout_fall_back_to_sequential():
    shape = (1, 8, 8)
    cfg = TrainConfig(epochs=1, batch_size=50, momentum=0.9, precision="fp32")
    xs, ys = _data(shape)
    bn = [_bn_model(i) for i in range(3)]
    assert not stackable(bn) and "BatchNorm2d" in why_not_stackable(bn)
    with pytest.raises(ValueError, match="cannot be trained stacked"):
        fit_stacked(bn, xs, ys, cfg, seeds=SEEDS, device="cpu")
    with pytest.raises(ValueError, match="cannot be trained stacked"):
        fit_many(bn, xs, ys, cfg, seeds=SEEDS, device="cpu", stacked=True)
    ref = [_bn_model(i) for i in range(3)]
    for m, x, y, s in zip(ref, xs, ys, SEEDS):
        fit(m, x, y, cfg, seed=s, device="cpu")
    _assert_same(ref, fit_many(bn, xs, ys, cfg, seeds=SEEDS, device="cpu"), atol=0)
    assert not stackable(_models("gtsrb_cnn", (3, 8, 8)))  # dropout
    assert not stackable([build_model("lenet5", (1, 16, 16), 10),
                          build_model("fmnist_cnn", (1, 16, 16), 10)])


def test_fit_is_seeded_even_with_dropout_and_keeps_the_global_rng():
    shape = (3, 8, 8)
    cfg = TrainConfig(epochs=1, batch_size=50, precision="fp32")
    xs, ys = _data(shape, sizes=(100,))
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        m = fit(build_model("gtsrb_cnn", shape, 10, seed=5), xs[0], ys[0], cfg, seed=7,
                device="cpu")
        assert torch.equal(torch.get_rng_state(), state)
        runs.append(m)
    _assert_same(runs[:1], runs[1:], atol=0)
    conv = next(p for p in runs[0].parameters() if p.dim() == 4)
    assert conv.is_contiguous()  # channels-last training hands back the default layout


def test_fit_watch_reports_watched_steps():
    shape = (1, 16, 16)
    cfg = TrainConfig(epochs=1, batch_size=50, precision="fp32")
    xs, ys = _data(shape, sizes=(150,))
    watch = torch.zeros(150, dtype=torch.bool)
    watch[[3, 77]] = True
    seen = []
    fit(build_model("lenet5", shape, 10, seed=0), xs[0], ys[0], cfg, seed=1, device="cpu",
        watch=watch, on_update=lambda idx, deltas: seen.append(set(idx.tolist())))
    assert 1 <= len(seen) <= 2 and {3, 77} <= set().union(*seen)
    with pytest.raises(ValueError, match="on_update"):
        fit(build_model("lenet5", shape, 10), xs[0], ys[0], cfg, seed=1, device="cpu",
            watch=watch)


def test_bad_input_is_refused_with_a_clear_message():
    shape = (1, 16, 16)
    cfg = TrainConfig(epochs=1, batch_size=50)
    xs, ys = _data(shape)
    models = _models("lenet5", shape)
    with pytest.raises(ValueError, match="one of each per model"):
        fit_many(models, xs, ys[:2], cfg, seeds=SEEDS, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        fit_many(models, [x.float() for x in xs], ys, cfg, seeds=SEEDS, device="cpu")
    with pytest.raises(ValueError, match="must be an integer"):
        fit_many(models, xs, ys, cfg, seeds=(1, 2, "x"), device="cpu")
    with pytest.raises(ValueError, match="stacked"):
        fit_many(models, xs, ys, cfg, seeds=SEEDS, device="cpu", stacked="yes")
    with pytest.raises(ValueError, match="same shape"):
        fit_many(models, [xs[0], xs[1][:, :, :4], xs[2]], ys, cfg, seeds=SEEDS, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        fit_stacked([], [], [], cfg, seeds=[], device="cpu")


def test_bench_command_line_refuses_bad_input_and_formats_rows(capsys):
    """The benchmark's arguments are checked; its table renders (no timing here)."""
    from bdunlearn import bench

    for argv in (["--datasets", "imagenet"], ["--threads", "0"], ["--shards", "0,5"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
    assert "imagenet" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dataset"):
        bench.run_benchmark(["imagenet"], device="cpu")
    info = bench.machine_info(torch.device("cpu"))
    rows = [bench.Row("fmnist", "fmnist_cnn", "engine overhead", 3.14, "%", "note"),
            bench.Row("fmnist", "fmnist_cnn", "stacked", None, "", "skipped")]
    table = bench.format_table(info, rows)
    assert "+3.1%" in table and "skipped" in table and info["torch"] in table
