import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bdunlearn import data


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    payload = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_like(folder: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28))
    xte = rng.integers(0, 256, (n_test, 28, 28))
    ytr, yte = np.arange(n_train) % 10, np.arange(n_test) % 10
    write_idx(folder / "train-images-idx3-ubyte", xtr, gz)
    write_idx(folder / "train-labels-idx1-ubyte", ytr, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", xte, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No environment root, an empty cache, and no Debian folder."""
    monkeypatch.delenv("BDUNLEARN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_ROOT", tmp_path / "no-debian")
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_idx_reader_torchvision_layout(isolated, gz):
    xtr, ytr, xte, yte = write_mnist_like(isolated / "root" / "FashionMNIST" / "raw", gz=gz)
    ds = data.load("fmnist", isolated / "root")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64 and ds.x_test.shape == (5, 1, 28, 28)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(xtr.astype(np.uint8)))
    assert ds.y_test.tolist() == yte.tolist() and ds.classes[0] == "T-shirt/top"


def test_mnist_reader_from_environment_root(isolated, monkeypatch):
    write_mnist_like(isolated / "env" / "MNIST" / "raw", gz=False)
    monkeypatch.setenv("BDUNLEARN_DATA", str(isolated / "env"))
    ds = data.load("mnist")
    assert ds.name == "mnist" and len(ds.y_train) == 12 and ds.classes[3] == "3"


def test_idx_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        data.read_idx(bad)


def test_cifar10_pickle_reader(isolated):
    folder = isolated / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, 4))}
        batches[name] = d
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}, f)
    ds = data.load("cifar10", isolated / "root")
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32)
    assert torch.equal(ds.x_train[0], torch.from_numpy(first))
    assert ds.y_test.tolist() == [int(v) for v in batches["test_batch"][b"labels"]]
    assert ds.classes[-1] == "truck"


def _ppm(path: Path, size=(40, 30), roi=(5, 6, 24, 25)):
    """A black image whose ROI is white, saved as PPM."""
    from PIL import Image

    img = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x1, y1, x2, y2 = roi
    img[y1:y2 + 1, x1:x2 + 1] = 255
    Image.fromarray(img).save(path, format="PPM")
    return f"{size[0]};{size[1]};{x1};{y1};{x2};{y2}"


def test_gtsrb_ppm_reader_crops_roi(isolated):
    base = isolated / "root" / "gtsrb"
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    for cls in (0, 2):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        lines = [f"00000_0000{i}.ppm;{_ppm(folder / f'00000_0000{i}.ppm')};{cls}\n" for i in range(2)]
        (folder / f"GT-{cls:05d}.csv").write_text(header + "".join(lines))
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = [f"0000{i}.ppm;{_ppm(test / f'0000{i}.ppm')};{2 * i}\n" for i in range(2)]
    (base / "GT-final_test.csv").write_text(header + "".join(lines))
    ds = data.load("gtsrb", isolated / "root")
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.tolist() == [0, 0, 2, 2] and ds.y_test.tolist() == [0, 2]
    assert ds.x_train.float().mean() > 250  # the ROI (all white) fills the 32x32 image


def test_digits_for_tiny_tests():
    ds = data.load("digits")
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert len(ds.y_train) + len(ds.y_test) == 1797 and ds.num_classes == 10


def test_missing_data_says_how_to_get_it(isolated):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fmnist")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", isolated / "nothing")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; choose one of"):
        data.load("svhn")


def test_subset_is_seeded_and_checked():
    ds = data.load("digits")
    a, b = ds.subset(100, 50, seed=3), ds.subset(100, 50, seed=3)
    assert len(a.y_train) == 100 and torch.equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match="subset size 0"):
        ds.subset(0)


def test_import_and_fetch_without_torchvision(tmp_path):
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import bdunlearn, bdunlearn.data, bdunlearn.sisa, bdunlearn.detect\n"
            "from bdunlearn import data\n"
            "try:\n"
            f"    data.load('cifar10', {str(tmp_path)!r}, fetch=True)\n"
            "except RuntimeError as e:\n"
            "    print('MSG', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "MSG fetch=True needs a working torchvision" in out.stdout


@pytest.mark.skipif(not (data.DEBIAN_ROOT / "fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package():
    ds = data.load("fmnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.y_test.bincount().tolist() == [1000] * 10
