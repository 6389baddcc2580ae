"""The benchmark's baselines and figures (pieces that need no long timing)."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from bdunlearn import bench
from bdunlearn.bench import baselines, harness
from bdunlearn.models import build_model
from bdunlearn.registry import reference_config


def test_authors_dataset_is_to_tensor_of_each_image():
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    ds = baselines.AuthorsDataset(x, torch.arange(5))
    img, label = ds[3]
    assert img.dtype == torch.float32 and img.shape == (1, 28, 28) and label == 3
    assert torch.equal(img, x[3].float() / 255)


def test_authors_loop_trains_the_model_in_a_fixed_order():
    x = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (300,))
    cfg = reference_config("fmnist", epochs=1, precision="fp32")
    models = [build_model("fmnist_cnn", (1, 28, 28), 10, seed=0) for _ in range(3)]
    before = [p.clone() for p in models[0].parameters()]
    for m, seed in zip(models, (0, 0, 1)):
        baselines.authors_loop(m, x, y, cfg, torch.device("cpu"), seed=seed)
    same = zip(models[0].parameters(), models[1].parameters())
    assert all(torch.equal(p, q) for p, q in same)  # the seed fixes the order
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(), before))
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(),
                                                     models[2].parameters()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bare_loop_runs_in_the_engine_precision(precision):
    x = torch.rand(200, 1, 28, 28)
    y = torch.randint(0, 10, (200,))
    m = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0)
    before = [p.clone() for p in m.parameters()]
    baselines.bare_loop(m, x, y, reference_config("fmnist", epochs=1), torch.device("cpu"),
                        True, precision)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_quick_whole_run_is_extrapolated_and_says_so():
    rows = harness.whole_run_rows("fmnist", torch.device("cpu"), bench.Settings.quick(), 6030.0)
    assert len(rows) == 1 and rows[0].unit == "s"
    assert rows[0].value == pytest.approx(60300 * 20 / 6030.0)
    assert "extrapolated" in rows[0].figure and "not trained" in rows[0].detail


def test_table_and_csv_show_every_unit(tmp_path):
    info = bench.machine_info(torch.device("cpu"))
    rows = [bench.Row("fmnist", "fmnist_cnn", "whole run", 123.45, "s", "trained once"),
            bench.Row("fmnist", "fmnist_cnn", "bf16 vs fp32", 1.8, "x", "native bf16"),
            bench.Row("fmnist", "fmnist_cnn", "engine throughput", 8870.0, "samples/s")]
    table = bench.format_table(info, rows)
    assert "123.5 s" in table and "1.80x" in table and "8,870 samples/s" in table
    path = tmp_path / "bench.csv"
    bench.write_csv(str(path), info, rows)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["figure"] for r in read] == ["whole run", "bf16 vs fp32", "engine throughput"]
    assert np.isclose(float(read[0]["value"]), 123.45) and read[0]["unit"] == "s"


def test_command_line_refuses_an_unknown_dataset():
    out = subprocess.run([sys.executable, "-m", "bdunlearn.bench", "--quick", "--datasets",
                          "imagenet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unknown dataset 'imagenet'" in out.stderr


def test_training_flops_count_the_paper_model_by_hand():
    # fmnist_cnn forward multiply-adds: three 5x5 convolutions and two linear layers
    macs = (16 * 25 * 28 * 28 + 32 * 16 * 25 * 14 * 14 + 32 * 32 * 25 * 7 * 7
            + 288 * 512 + 512 * 10)
    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    assert harness.training_flops(model, (1, 28, 28)) == 6 * macs  # ~25.4 MFLOP per sample
    assert harness.matmul_rate(torch.device("cpu"), n=256, repeats=1) > 0


def test_each_row_is_in_the_csv_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    """A benchmark cut midway (the device kit's time bound) keeps every row measured."""
    path = tmp_path / "bench.csv"

    def measure_then_cut(datasets, device, quick, st, stacked, on_rows=None):
        on_rows([bench.Row("fmnist", "fmnist_cnn", "engine throughput", 8870.0, "samples/s")])
        with open(path, newline="") as f:  # on disk before the next figure is measured
            assert [r["figure"] for r in csv.DictReader(f)] == ["engine throughput"]
        on_rows([bench.Row("fmnist", "fmnist_cnn", "bf16 vs fp32", 1.8, "x")])
        raise KeyboardInterrupt  # killed while measuring the third

    monkeypatch.setattr(harness, "run_benchmark", measure_then_cut)
    with pytest.raises(KeyboardInterrupt):
        harness.main(["--quick", "--device", "cpu", "--csv", str(path)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["figure"] for r in rows] == ["engine throughput", "bf16 vs fp32"]
    assert rows[0]["device"] == "cpu" and float(rows[1]["value"]) == 1.8
