"""Bad input across the package: each case must fail with the named exception type and one
sentence (no line break) that names the offending value.

A case is ``(call, exception type, fragment)``: ``call(ctx)`` gets a :class:`Ctx` with a
tiny fake dataset, an untrained model and a temporary folder; ``fragment`` must appear in
the message. No case trains anything.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bdunlearn import attack, config, data, detect, metrics, reproduce, train, triggers
from bdunlearn.defenses import DefenderView, run_defense
from bdunlearn.models import build_model
from bdunlearn.registry import reference_config
from bdunlearn.unlearning import SisaService

NAN, INF = float("nan"), float("inf")


@dataclass
class Ctx:
    ds: data.Dataset
    atk: attack.AttackSet
    view: DefenderView
    tmp: Path
    sharded: SisaService  # 2 shards, fitted; one mitigation id (``removed``) unlearned
    single: SisaService  # 1 shard, fitted
    removed: int


def _fake_dataset() -> data.Dataset:
    """40 training and 20 test images of 1x8x8 pixels over 4 labels (named "digits" so
    the registry's reference counts apply)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60, 1, 8, 8), generator=gen, dtype=torch.uint8)
    y = torch.arange(60) % 4
    return data.Dataset("digits", x[:40], y[:40], x[40:], y[40:], ("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory):
    ds = _fake_dataset()
    atk = attack.build_badnets(ds, poison_num=5, mitigation_num=5, alpha=0.5, seed=0)
    model = build_model("fmnist_cnn", ds.image_shape, 4, seed=0)
    view = DefenderView(model, ds.x_train, ds.y_train, 4)
    # services over 40 images of 8x8 pixels, one epoch: fitted in a fraction of a second
    cfg = reference_config("digits", epochs=1)
    sharded = SisaService(atk.x, atk.y, arch="fmnist_cnn", num_classes=4, cfg=cfg, shards=2,
                          device="cpu", requestable=atk.ids("mitigation")).fit()
    removed = int(atk.ids("mitigation")[0])
    sharded.unlearn([removed])
    single = SisaService(atk.x, atk.y, arch="fmnist_cnn", num_classes=4, cfg=cfg,
                         device="cpu").fit()
    return Ctx(ds, atk, view, tmp_path_factory.mktemp("bad_input"), sharded, single, removed)


# ------------------------------------------------------------------ data files

def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def _fmnist_root(ctx: Ctx, name: str, damage) -> tuple[Path, Path]:
    """A Fashion-MNIST root of tiny idx files whose training images file is damaged."""
    raw = ctx.tmp / name / "FashionMNIST" / "raw"
    _write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(4))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(2))
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(damage(bad.read_bytes()))
    return ctx.tmp / name, bad


def _load_damaged_fmnist(name, damage):
    def call(ctx):
        root, bad = _fmnist_root(ctx, name, damage)
        call.fragment = str(bad)
        data.load("fmnist", root)
    return call


def _cifar_root(ctx: Ctx, name: str, bad_batch: bytes) -> tuple[Path, Path]:
    folder = ctx.tmp / name / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / batch).write_bytes(pickle.dumps(
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    (folder / "data_batch_2").write_bytes(bad_batch)
    return ctx.tmp / name, folder / "data_batch_2"


def _load_corrupt_cifar(name, content):
    def call(ctx):
        root, bad = _cifar_root(ctx, name, content)
        call.fragment = str(bad)
        data.load("cifar10", root)
    return call


def _load_bad_gtsrb_csv(ctx):
    base = ctx.tmp / "gtsrb_csv" / "gtsrb"
    (base / "GTSRB" / "Training" / "00000").mkdir(parents=True)
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    (base / "GTSRB" / "Training" / "00000" / "GT-00000.csv").write_text(
        "Filename;ClassId\n00000_00000.ppm;0\n")
    (base / "GT-final_test.csv").write_text("Filename;ClassId\n")
    _load_bad_gtsrb_csv.fragment = str(base / "GTSRB" / "Training" / "00000" / "GT-00000.csv")
    data.load("gtsrb", base.parent)


def _dataset_with_label_beyond_classes(ctx):
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    data.Dataset("toy", x, torch.tensor([0, 7]), x, torch.tensor([0, 1]), ("a", "b"))


DATA = [
    ("unknown dataset", lambda c: data.load("svhn"), ValueError, "'svhn'"),
    ("dataset not a name", lambda c: data.load(3), ValueError, "3"),
    ("fetch not a bool", lambda c: data.load("fmnist", fetch="yes"), ValueError, "'yes'"),
    ("explicit root without fmnist", lambda c: data.load("fmnist", c.tmp / "nowhere"),
     FileNotFoundError, "nowhere"),
    ("explicit root without cifar10", lambda c: data.load("cifar10", c.tmp / "no_cifar"),
     FileNotFoundError, "no_cifar"),
    ("explicit root without gtsrb", lambda c: data.load("gtsrb", c.tmp / "no_gtsrb"),
     FileNotFoundError, "no_gtsrb"),
    ("idx: not gzip", _load_damaged_fmnist("fake_gz", lambda b: b"not gzip"),
     data.DataFileError, None),
    ("idx: truncated gzip", _load_damaged_fmnist("cut_gz", lambda b: b[: len(b) // 2]),
     data.DataFileError, None),
    ("idx: wrong magic", _load_damaged_fmnist(
        "magic", lambda b: gzip.compress(b"\x00\x00\x0b\x03" + bytes(12))),
     data.DataFileError, None),
    ("cifar: not a pickle", _load_corrupt_cifar("cifar_garbage", b"garbage"),
     data.DataFileError, None),
    ("cifar: missing labels", _load_corrupt_cifar(
        "cifar_key", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})),
     data.DataFileError, None),
    ("cifar: wrong shape", _load_corrupt_cifar(
        "cifar_shape", pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})),
     data.DataFileError, None),
    ("gtsrb: csv without columns", _load_bad_gtsrb_csv, data.DataFileError, None),
    ("subset size 0", lambda c: c.ds.subset(0), ValueError, "0"),
    ("subset size float", lambda c: c.ds.subset(2.5), ValueError, "2.5"),
    ("subset seed negative", lambda c: c.ds.subset(10, seed=-1), ValueError, "-1"),
    ("labels beyond classes", _dataset_with_label_beyond_classes, ValueError, "7"),
]

# ------------------------------------------------------------------ attack

ATTACK = [
    ("unknown variant", lambda c: attack.build_attack(c.ds, "xx"), ValueError, "'xx'"),
    ("scores of an unfitted service", lambda c: detect.scores(
        _service(c, shards=2), [0, 1], "mu"), ValueError, "not fitted"),
    ("batch scores of an unfitted service", lambda c: detect.batch_scores(
        _service(c, shards=2), [[0, 1]]), ValueError, "not fitted"),
    ("unknown attack knob", lambda c: attack.build_attack(c.ds, "bn", poison=5), ValueError,
     "no knob 'poison'"),
    ("unknown variant (notebooks)", lambda c: attack.build_attack(c.ds, "xx", cfg=None),
     ValueError, "'xx'"),
    ("not a dataset", lambda c: attack.build_badnets([1, 2]), ValueError, "list"),
    ("poison_num too large", lambda c: attack.build_badnets(c.ds, poison_num=10**6),
     ValueError, "1000000"),
    ("poison_num float", lambda c: attack.build_badnets(c.ds, poison_num=2.0), ValueError, "2.0"),
    ("poison_num bool", lambda c: attack.build_badnets(c.ds, poison_num=True), ValueError, "True"),
    ("mitigation_num 0", lambda c: attack.build_badnets(c.ds, poison_num=2,
                                                                 mitigation_num=0),
     ValueError, "mitigation_num 0"),
    ("mitigation_num negative", lambda c: attack.build_badnets(c.ds, poison_num=2,
                                                                 mitigation_num=-3),
     ValueError, "-3"),
    ("mitigation_num too large", lambda c: attack.build_badnets(c.ds, poison_num=2,
                                                                mitigation_num=500),
     ValueError, "500"),
    ("alpha nan", lambda c: attack.build_badnets(c.ds, alpha=NAN), ValueError, "nan"),
    ("alpha inf", lambda c: attack.build_badnets(c.ds, alpha=INF), ValueError, "inf"),
    ("alpha 0", lambda c: attack.build_badnets(c.ds, alpha=0), ValueError, "alpha 0"),
    ("alpha above 1", lambda c: attack.build_badnets(c.ds, alpha=1.5), ValueError, "1.5"),
    ("target out of range", lambda c: attack.build_badnets(c.ds, target=99), ValueError, "99"),
    ("target float", lambda c: attack.build_badnets(c.ds, target=1.0), ValueError, "1.0"),
    ("seed negative", lambda c: attack.build_badnets(c.ds, seed=-1), ValueError, "-1"),
    ("seed float", lambda c: attack.build_badnets(c.ds, seed=0.5), ValueError, "0.5"),
    ("seed bool", lambda c: attack.build_badnets(c.ds, seed=True), ValueError, "True"),
    ("patch larger than image", lambda c: attack.build_badnets(c.ds, patch=100),
     ValueError, "100"),
    ("replace not a bool", lambda c: attack.build_badnets(c.ds, replace="no"), ValueError, "'no'"),
    ("LC camouflage_num 0", lambda c: attack.build_label_consistent(c.ds, poison_num=2,
                                                                    camouflage_num=0),
     ValueError, "camouflage_num 0"),
    ("LC camouflage_num too large", lambda c: attack.build_label_consistent(
        c.ds, poison_num=2, camouflage_num=500), ValueError, "500"),
    ("LC poison_num float", lambda c: attack.build_label_consistent(c.ds, poison_num=2.5),
     ValueError, "2.5"),
    ("noise sigma nan", lambda c: attack.build_noise_camouflage(c.ds, poison_num=2, sigma=NAN),
     ValueError, "nan"),
    ("noise sigma 0", lambda c: attack.build_noise_camouflage(c.ds, poison_num=2, sigma=0),
     ValueError, "sigma 0"),
    ("noise sigma above 1", lambda c: attack.build_noise_camouflage(c.ds, poison_num=2,
                                                                    sigma=3),
     ValueError, "sigma 3"),
    ("blend opacity 0", lambda c: attack.build_blended(c.ds, poison_num=2, mitigation_num=2,
                                                       opacity=0), ValueError, "opacity 0"),
    ("blend opacity above 1", lambda c: attack.build_blended(c.ds, poison_num=2,
                                                             mitigation_num=2, opacity=1.5),
     ValueError, "1.5"),
    ("blend alpha nan", lambda c: attack.build_blended(c.ds, poison_num=2, mitigation_num=2,
                                                       alpha=NAN), ValueError, "nan"),
    ("blend mitigation_num too large", lambda c: attack.build_blended(
        c.ds, poison_num=2, mitigation_num=500), ValueError, "mitigation_num 500"),
    ("blend pattern not uint8", lambda c: triggers.blend(
        c.ds.x_train[:2], torch.zeros(1, 8, 8), 0.2), ValueError, "torch.float32"),
    ("blend pattern of the wrong shape", lambda c: triggers.blend(
        c.ds.x_train[:2], torch.zeros(1, 4, 4, dtype=torch.uint8), 0.2), ValueError, "(1, 4, 4)"),
    ("Gaussian noise without a generator", lambda c: triggers.add_gaussian(
        c.ds.x_train[:2], 0.1, 7), ValueError, "int"),
    ("IT copies beyond memory", lambda c: attack.build_input_targeted(c.ds, poison_num=10**7),
     ValueError, "10000000"),
    ("IT mitigation_num float", lambda c: attack.build_input_targeted(c.ds, mitigation_num=1.5),
     ValueError, "1.5"),
    ("IT target out of range", lambda c: attack.build_input_targeted(c.ds, target=4),
     ValueError, "4"),
    ("IT copies 0", lambda c: attack.build_input_targeted(c.ds, copies=0), ValueError,
     "copies 0"),
    ("IT copies float", lambda c: attack.build_input_targeted(c.ds, copies=2.5), ValueError,
     "copies 2.5"),
    ("IT copies beyond memory at a budget",
     lambda c: attack.build_attack(c.ds, "it@copies_x8", poison_num=10**6), ValueError,
     "8000000"),
    ("LC camouflage_ratio negative",
     lambda c: attack.build_label_consistent(c.ds, camouflage_ratio=-1), ValueError,
     "camouflage_ratio -1"),
    ("noise camouflage_ratio nan",
     lambda c: attack.build_noise_camouflage(c.ds, camouflage_ratio=NAN), ValueError, "nan"),
    ("unknown budget", lambda c: attack.build_attack(c.ds, "blend@mitigation_x9"), ValueError,
     "has no budget 'mitigation_x9'; it declares mitigation_x2, mitigation_x3"),
    ("classic poison_fraction nan",
     lambda c: attack.build_classic_badnets(c.ds, poison_fraction=NAN), ValueError, "nan"),
    ("classic poison_fraction 1", lambda c: attack.build_classic_badnets(c.ds, poison_fraction=1),
     ValueError, "1"),
    ("requests beyond mitigation", lambda c: c.atk.requests(999), ValueError, "999"),
    ("requests float", lambda c: c.atk.requests(2.0), ValueError, "2.0"),
    ("request order seed float", lambda c: c.atk.request_order(1.5), ValueError, "1.5"),
    ("unknown role", lambda c: c.atk.ids("attacker"), ValueError, "'attacker'"),
]

# ------------------------------------------------------------------ triggers

_X = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
_MASK, _PATTERN = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)

TRIGGERS = [
    ("batch without N", lambda c: triggers.stamp_patch(_X[0]), ValueError, "(1, 8, 8)"),
    ("int32 images", lambda c: triggers.stamp_patch(_X.int()), ValueError, "torch.int32"),
    ("patch size 0", lambda c: triggers.stamp_patch(_X, 0), ValueError, "0"),
    ("patch size float", lambda c: triggers.stamp_patch(_X, 2.0), ValueError, "2.0"),
    ("patch size beyond image", lambda c: triggers.stamp_patch(_X, 9), ValueError, "9"),
    ("intensity nan", lambda c: triggers.stamp_patch(_X, 4, NAN), ValueError, "nan"),
    ("intensity 0", lambda c: triggers.stamp_patch(_X, 4, 0), ValueError, "intensity 0"),
    ("unknown corner", lambda c: triggers.stamp_patch(_X, corner="middle"), ValueError,
     "'middle'"),
    ("unknown rounding", lambda c: triggers.stamp_patch(_X, rounding="floor"), ValueError,
     "'floor'"),
    ("PatchTrigger negative size", lambda c: triggers.PatchTrigger(size=-1), ValueError, "-1"),
    ("noise without generator", lambda c: triggers.add_noise(_X, None), ValueError, "NoneType"),
    ("noise high below low", lambda c: triggers.add_noise(_X, torch.Generator(), 3, 1),
     ValueError, "1"),
    ("mask with two channels", lambda c: triggers.MaskTrigger(torch.zeros(2, 8, 8), _PATTERN),
     ValueError, "(2, 8, 8)"),
    ("mask of uint8", lambda c: triggers.MaskTrigger(_MASK.to(torch.uint8), _PATTERN),
     ValueError, "torch.uint8"),
    ("pattern above 1", lambda c: triggers.MaskTrigger(_MASK, _PATTERN + 2), ValueError, "2.0"),
    ("mask on other image size", lambda c: triggers.MaskTrigger(_MASK, _PATTERN)(
        torch.zeros(1, 1, 9, 9)), ValueError, "(1, 9, 9)"),
]

# ------------------------------------------------------------------ metrics

METRICS = [
    ("accuracy lengths differ", lambda c: metrics.accuracy(torch.tensor([1, 2, 3]),
                                                           torch.tensor([1, 2])),
     ValueError, "3 predictions for 2 labels"),
    ("accuracy empty", lambda c: metrics.accuracy(torch.tensor([], dtype=torch.long),
                                                  torch.tensor([], dtype=torch.long)),
     ValueError, "empty"),
    ("accuracy float predictions", lambda c: metrics.accuracy(torch.rand(3),
                                                              torch.tensor([1, 2, 3])),
     ValueError, "torch.float32"),
    ("asr float target", lambda c: metrics.attack_success_rate(torch.tensor([1]), 1.5),
     ValueError, "1.5"),
    ("asr empty", lambda c: metrics.attack_success_rate(torch.tensor([], dtype=torch.long), 0),
     ValueError, "empty"),
    ("auroc nan score", lambda c: metrics.auroc([0.2, NAN], [0.1]), ValueError, "nan"),
    ("auroc no negatives", lambda c: metrics.auroc([0.2], []), ValueError, "at least one"),
    ("auroc 2-d scores", lambda c: metrics.auroc(np.zeros((2, 2)), [0.1]), ValueError, "(2, 2)"),
    ("fpr 1", lambda c: metrics.threshold_at_fpr([0.1, 0.2], 1.0), ValueError, "1.0"),
    ("rate more successes than trials", lambda c: metrics.proportion_interval(3, 2),
     ValueError, "successes 3"),
    ("rate no trials", lambda c: metrics.proportion_interval(0, 0), ValueError, "trials 0"),
    ("fpr nan", lambda c: metrics.threshold_at_fpr([0.1, 0.2], NAN), ValueError, "nan"),
    ("threshold without negatives", lambda c: metrics.threshold_at_fpr([], 0.05), ValueError,
     "at least one negative"),
]

# ------------------------------------------------------------------ models

MODELS = [
    ("unknown model", lambda c: build_model("resnet50", (3, 32, 32), 10), ValueError,
     "'resnet50'"),
    ("one class", lambda c: build_model("lenet5", (1, 28, 28), 1), ValueError, "num_classes 1"),
    ("float classes", lambda c: build_model("lenet5", (1, 28, 28), 10.0), ValueError, "10.0"),
    ("shape without channels", lambda c: build_model("lenet5", (28, 28), 10), ValueError,
     "(28, 28)"),
    ("unknown input scaling", lambda c: build_model("lenet5", (1, 28, 28), 10,
                                                    input_scaling="zscore"),
     ValueError, "'zscore'"),
    ("negative model seed", lambda c: build_model("lenet5", (1, 28, 28), 10, seed=-2),
     ValueError, "-2"),
]

# ------------------------------------------------------------------ defenses

DEFENSES = [
    ("unknown defense", lambda c: run_defense("spectral", c.view), ValueError, "'spectral'"),
    ("empty clean set", lambda c: DefenderView(c.view.model, c.ds.x_train[:0],
                                               c.ds.y_train[:0], 4), ValueError,
     "no image"),
    ("num_classes 4.5", lambda c: DefenderView(c.view.model, c.ds.x_train, c.ds.y_train, 4.5),
     ValueError, "num_classes 4.5"),
    ("unknown knob", lambda c: run_defense("finetune", c.view, learning_rate=0.1), ValueError,
     "learning_rate"),
    ("NC steps 0", lambda c: run_defense("neural_cleanse", c.view, steps=0), ValueError,
     "steps 0"),
    ("NC lr nan", lambda c: run_defense("neural_cleanse", c.view, lr=NAN), ValueError, "nan"),
    ("BAERASER target out of range", lambda c: run_defense("baeraser", c.view, target=10),
     ValueError, "10"),
    ("BAERASER negative batch", lambda c: run_defense("baeraser", c.view, batch_size=-8),
     ValueError, "-8"),
    ("Grad-Prune one sample per class",
     lambda c: run_defense("grad_prune", c.view, samples_per_class=1), ValueError, "1"),
    ("Grad-Prune nan max_drop", lambda c: run_defense("grad_prune", c.view, max_drop=NAN),
     ValueError, "nan"),
    ("fine-tuning negative epochs", lambda c: run_defense("finetune", c.view, epochs=-1),
     ValueError, "-1"),
    ("fine-pruning ratio 1", lambda c: run_defense("fine_pruning", c.view, max_ratio=1.0),
     ValueError, "1.0"),
    ("defense seed float", lambda c: run_defense("finetune", c.view, seed=0.5), ValueError,
     "0.5"),
    ("view of float images", lambda c: DefenderView(c.view.model, c.ds.x_train.float(),
                                                    c.ds.y_train, 4),
     ValueError, "torch.float32"),
    ("view with float classes", lambda c: DefenderView(c.view.model, c.ds.x_train,
                                                       c.ds.y_train, 4.0),
     ValueError, "4.0"),
]

# ------------------------------------------------------------------ services and requests

def _service(c, **kw):
    args = dict(arch="fmnist_cnn", num_classes=4, cfg=reference_config("digits", epochs=1),
                device="cpu")
    args.update(kw)
    return SisaService(c.atk.x, c.atk.y, **args)


def _amnesiac(c, **kw):
    from bdunlearn.unlearning import AmnesiacService

    return AmnesiacService(c.atk.x, c.atk.y, arch="fmnist_cnn", num_classes=4,
                           cfg=reference_config("digits", epochs=1),
                           watch=c.atk.ids("mitigation"), device="cpu", **kw)


def _short_screen(c):
    ids = [int(i) for i in c.atk.ids("mitigation") if i != c.removed][:2]
    before = (c.sharded.removed.copy(), len(c.sharded.log))
    c.sharded.screen = lambda svc, arr: np.zeros(0, dtype=bool)
    try:
        c.sharded.unlearn(ids)
    finally:
        c.sharded.screen = None
        # a failed call changes nothing
        assert (c.sharded.removed == before[0]).all() and len(c.sharded.log) == before[1]


def _already_removed(c):
    _already_removed.fragment = str(c.removed)
    c.sharded.unlearn([c.removed])


def _non_member(c):
    clean = int(c.atk.ids("clean")[0])
    _non_member.fragment = f"sample id {clean}"
    c.sharded.unlearn([clean])


SERVICES = [
    ("unknown id", lambda c: c.sharded.unlearn([10**6]), ValueError, "1000000"),
    ("already removed", _already_removed, ValueError, None),
    ("not the requester's sample", _non_member, ValueError, None),
    ("negative id", lambda c: c.sharded.unlearn([-1]), ValueError, "-1"),
    ("float id", lambda c: c.sharded.unlearn([1.5]), ValueError, "1.5"),
    ("bool id", lambda c: c.sharded.unlearn([True]), ValueError, "True"),
    ("empty request", lambda c: c.sharded.unlearn([]), ValueError, "at least one sample id"),
    ("aggregation median", lambda c: c.sharded.predict(c.ds.x_test, aggregation="median"),
     ValueError, "'median'"),
    ("num_classes below the labels", lambda c: _service(c, num_classes=2), ValueError,
     "num_classes 2"),
    ("shards 0", lambda c: _service(c, shards=0), ValueError, "shards 0"),
    ("shards beyond the data", lambda c: _service(c, shards=1000), ValueError, "1000"),
    ("shards float", lambda c: _service(c, shards=2.0), ValueError, "2.0"),
    ("unknown model", lambda c: _service(c, arch="resnet50"), ValueError, "'resnet50'"),
    ("unknown device", lambda c: _service(c, device="tpu"), ValueError, "'tpu'"),
    ("device meta", lambda c: _service(c, device="meta"), ValueError, "'meta'"),
    ("device mps", lambda c: _service(c, device="mps"), ValueError, "'mps'"),
    ("seed -1", lambda c: _service(c, seed=-1), ValueError, "seed -1"),
    ("seed 'abc'", lambda c: _service(c, seed="abc"), ValueError, "seed 'abc'"),
    ("seed 1.9 (would share seed 1's checkpoints)", lambda c: _service(c, seed=1.9),
     ValueError, "seed 1.9"),
    ("cache_dir 5", lambda c: _service(c, cache_dir=5), ValueError, "cache_dir 5"),
    ("Amnesiac seed 1.9", lambda c: _amnesiac(c, seed=1.9), ValueError, "seed 1.9"),
    ("Amnesiac cache_dir 5", lambda c: _amnesiac(c, cache_dir=5), ValueError, "cache_dir 5"),
    ("Amnesiac scale -1", lambda c: _amnesiac(c, scale=-1.0), ValueError, "scale -1"),
    ("a screen returning too few flags", _short_screen, ValueError, "returned 0 flags"),
]

# ------------------------------------------------------------------ detectors

DETECTORS = [
    ("unknown detector", lambda c: detect.scores(c.sharded, [0], "entropy"), ValueError,
     "'entropy'"),
    ("SMS on one model", lambda c: detect.scores(c.single, [0], "sms"), ValueError,
     "single model"),
    ("negative id scored", lambda c: detect.scores(c.sharded, [-1], "mu"), ValueError, "-1"),
    ("float id scored", lambda c: detect.scores(c.sharded, [0.5], "mu"), ValueError, "0.5"),
    ("filter with NaN threshold", lambda c: detect.RequestFilter("mu", NAN), ValueError, "nan"),
    ("filter with unknown detector", lambda c: detect.RequestFilter("xx", 0.5), ValueError,
     "'xx'"),
    ("batch detector scored per sample", lambda c: detect.scores(c.sharded, [0, 1], "batch"),
     ValueError, "'batch'"),
    ("a batch of one request", lambda c: detect.batch_scores(c.sharded, [[0, 1], [2]]),
     ValueError, "at least two"),
    ("batch filter of size 1", lambda c: detect.BatchFilter(0.5, size=1), ValueError,
     "batch size 1"),
    ("batch filter with NaN threshold", lambda c: detect.BatchFilter(NAN), ValueError, "nan"),
    ("screen for an unknown detector", lambda c: detect.screen_for("xx", 0.5), ValueError,
     "'xx'"),
    ("benchmark on too few benign ids", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), {"tiny": [0, 1]}, "mu"), ValueError, "'tiny'"),
    ("benchmark with batch 0", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), {"random": range(30)}, "batch", batch=0),
     ValueError, "batch size 0"),
    ("benchmark with sample 1", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), {"random": range(30)}, "mu", sample=1),
     ValueError, "sample 1"),
    ("benchmark with a negative seed", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), {"random": range(30)}, "mu", seed=-1),
     ValueError, "seed -1"),
    ("benchmark populations not a dict", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), [range(30)], "mu"), ValueError, "list"),
    ("benchmark at a false-positive rate of 2", lambda c: detect.benchmark(
        c.sharded, c.atk.ids("mitigation"), {"random": range(30)}, "mu", fprs=(2,)),
     ValueError, "rate 2"),
    ("inference batch size 0", lambda c: train.predict_proba(c.view.model, c.ds.x_train[:2],
                                                             batch_size=0),
     ValueError, "inference batch size 0"),
    ("benchmark on one attack request", lambda c: detect.benchmark(
        c.sharded, [int(c.atk.ids("mitigation")[1])], {"random": range(30)}, "mu"), ValueError,
     "at least two"),
]

# ------------------------------------------------------------------ configuration and runner

def _runner_env(env):
    """The runner under the environment variables ``env``."""
    def call(ctx):
        import os

        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            _runner()(ctx)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return call


def _runner(*argv):
    """``reproduce.main(argv)`` with notebook execution replaced by a failure, so a check
    that regressed fails here at once instead of running notebooks."""
    def call(ctx):
        import papermill

        def started(*args, **kwargs):
            raise AssertionError(f"reproduce.main{argv} started a notebook")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(papermill, "execute_notebook", started)
            reproduce.main(list(argv))
    return call


CONFIG = [
    ("unknown parameter", lambda c: config.resolve("smoke", epoch=1), ValueError, "'epoch'"),
    ("float epochs", lambda c: config.resolve("smoke", epochs=2.5), ValueError, "2.5"),
    ("epochs 0", lambda c: config.resolve("smoke", epochs=0), ValueError, "epochs 0"),
    ("shards [0]", lambda c: config.resolve("smoke", shards=[0]), ValueError, "[0]"),
    ("shards not a list of ints", lambda c: config.resolve("smoke", shards="3"), ValueError,
     "'3'"),
    ("seeds []", lambda c: config.resolve("smoke", seeds=[]), ValueError, "seeds []"),
    ("unknown dataset", lambda c: config.resolve("smoke", dataset="svhn"), ValueError,
     "'svhn'"),
    ("unknown profile", lambda c: config.resolve("huge"), ValueError, "'huge'"),
    ("alpha nan", lambda c: config.resolve("smoke", alpha=NAN), ValueError, "nan"),
    ("runner: unknown parameter", _runner("--only", "01", "-p", "epoch", "1"), SystemExit,
     "-p epoch"),
    ("runner: shards [0]", _runner("--only", "02", "-p", "shards", "[0]"), SystemExit, "[0]"),
    ("runner: seeds []", _runner("--only", "01", "-p", "seeds", "[]"), SystemExit, "[]"),
    ("seeds given twice (counted twice in an interval)",
     lambda c: config.resolve("smoke", seeds=(0, 0)), ValueError, "holds 0 more than once"),
    ("shards given twice", lambda c: config.resolve("smoke", shards=(3, 3)), ValueError,
     "holds 3 more than once"),
    ("seed range backwards", lambda c: config.resolve("smoke", seeds="5-2"), ValueError,
     "'5-2'"),
    ("seed range text", lambda c: config.resolve("smoke", seeds="a-b"), ValueError, "'a-b'"),
    ("results_dir ''", lambda c: config.resolve("smoke", results_dir=""), ValueError,
     "results_dir ''"),
    ("request_steps 10**6 (one-id batches)",
     lambda c: config.resolve("smoke", request_steps=10**6), ValueError,
     "request_steps 1000000 asks for more request batches than the 300"),
    ("store_dir 5", lambda c: config.resolve("smoke", store_dir=5), ValueError, "store_dir 5"),
    ("runner: epochs 2.5", _runner("--only", "01", "-p", "epochs", "2.5"), SystemExit, "2.5"),
    ("runner: --only ''", _runner("--only", ""), SystemExit, "--only '' names no notebook"),
    ("runner: -p profile", _runner("-p", "profile", "smoke"), SystemExit, "use --profile"),
    ("runner: -p results_dir", _runner("-p", "results_dir", "/x"), SystemExit,
     "use --results"),
    ("runner: -p data_root ''", _runner("--only", "01", "-p", "data_root", "''"), SystemExit,
     "data_root '' must be a folder path"),
    ("runner: --results /proc/nope", _runner("--only", "01", "--results", "/proc/nope/x"),
     SystemExit, "--results /proc/nope/x"),
    ("runner: BDUNLEARN_PROFILE=huge", _runner_env({"BDUNLEARN_PROFILE": "huge"}), SystemExit,
     "BDUNLEARN_PROFILE: unknown profile 'huge'"),
    ("seeds '0-200000' (refused before the range is built)",
     lambda c: config.resolve("smoke", seeds="0-200000"), ValueError,
     "seeds '0-200000' holds more than 10000 seeds; give at most 10000"),
    ("seeds 20,000 in a list", lambda c: config.resolve("smoke", seeds=list(range(20000))),
     ValueError, "holds 20000 values; give at most 10000"),
    ("seed 2**31", lambda c: config.resolve("smoke", seeds="0,2147483648"), ValueError,
     "holds 2147483648; give seeds between 0 and 2147483647"),
    ("runner: seeds 0-200000", _runner("--only", "01", "-p", "seeds", "0-200000"), SystemExit,
     "seeds '0-200000' holds more than 10000 seeds"),
    ("runner: --only 0 (no prefix match)", _runner("--only", "0"), SystemExit,
     "--only '0' matches no notebook"),
    ("runner: --only 01,9", _runner("--only", "01,9"), SystemExit,
     "--only '9' matches no notebook"),
    ("runner: compute False on an empty store",
     lambda c: _runner("--only", "01,01", "-p", "compute", "False", "-p", "store_dir",
                       str(c.tmp / "empty-store"))(c), SystemExit,
     "there are no stored runs of 01_attack in"),
]

CASES = ([("data", *c) for c in DATA] + [("attack", *c) for c in ATTACK]
         + [("triggers", *c) for c in TRIGGERS] + [("metrics", *c) for c in METRICS]
         + [("models", *c) for c in MODELS] + [("defenses", *c) for c in DEFENSES]
         + [("services", *c) for c in SERVICES] + [("detectors", *c) for c in DETECTORS]
         + [("config", *c) for c in CONFIG])


def _params(cases):
    return [pytest.param(call, exc, fragment, id=f"{area}: {name}", marks=marks)
            for area, name, call, exc, fragment, *marks in cases]


@pytest.mark.parametrize("call, exc, fragment", _params(CASES))
def test_bad_input_fails_with_one_sentence_naming_the_value(module_ctx, call, exc, fragment):
    with pytest.raises(exc) as err:
        call(module_ctx)
    msg = str(err.value)
    fragment = getattr(call, "fragment", None) if fragment is None else fragment
    assert fragment is not None and fragment in msg, msg
    assert "\n" not in msg, msg
