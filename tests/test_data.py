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


def write_cifar(folder: Path) -> dict:
    """Five training batches and a test batch of 4 random images each, plus batches.meta."""
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
    return batches


def test_cifar10_pickle_reader(isolated):
    batches = write_cifar(isolated / "root" / "cifar-10-batches-py")
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


GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def write_gtsrb(base: Path) -> None:
    """Two training classes (0, 2) of two images each and a test set of two images."""
    header = GT_HEADER
    for cls in (0, 2):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        lines = [f"00000_0000{i}.ppm;{_ppm(folder / f'00000_0000{i}.ppm')};{cls}\n"
                 for i in range(2)]
        (folder / f"GT-{cls:05d}.csv").write_text(header + "".join(lines))
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = [f"0000{i}.ppm;{_ppm(test / f'0000{i}.ppm')};{2 * i}\n" for i in range(2)]
    (base / "GT-final_test.csv").write_text(header + "".join(lines))


def test_gtsrb_ppm_reader_crops_roi(isolated):
    write_gtsrb(isolated / "root" / "gtsrb")
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


def test_subset_is_seeded_and_checked(digits):
    ds = digits
    a, b = ds.subset(100, 50, seed=3), ds.subset(100, 50, seed=3)
    assert len(a.y_train) == 100 and torch.equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match="train subset size 0 must be an integer >= 1"):
        ds.subset(0)
    with pytest.raises(ValueError, match="train subset size 100.0 must be an integer"):
        ds.subset(100.0)


def test_explicit_root_is_honoured_without_fallback(isolated, monkeypatch):
    write_mnist_like(isolated / "env" / "FashionMNIST" / "raw")
    monkeypatch.setenv("BDUNLEARN_DATA", str(isolated / "env"))
    assert len(data.load("fmnist").y_train) == 12  # found through the environment
    with pytest.raises(FileNotFoundError) as err:
        data.load("fmnist", isolated / "elsewhere")
    msg = str(err.value)
    assert f"fmnist data not found under {isolated / 'elsewhere'} (expected" in msg
    assert str(isolated / "env") not in msg and "train-images-idx3-ubyte" in msg


@pytest.mark.parametrize("name, layout", [("cifar10", "cifar-10-batches-py"),
                                          ("gtsrb", "gtsrb/GTSRB/Training")])
def test_missing_cifar_and_gtsrb_say_how_to_pass_a_data_root(isolated, name, layout):
    with pytest.raises(FileNotFoundError) as err:
        data.load(name, isolated / "empty")
    msg = str(err.value)
    assert layout in msg and "-p data_root" in msg and 'make reproduce ARGS="-p data_root' in msg


def _gz_fmnist(root: Path) -> Path:
    write_mnist_like(root / "FashionMNIST" / "raw")
    return root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("damage, reason", [
    (lambda f: f.write_bytes(b"this is not gzip at all"), "BadGzipFile"),
    (lambda f: f.write_bytes(f.read_bytes()[:40]), "EOFError"),
    (lambda f: f.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(20))),
     "not an unsigned-byte idx file"),
    (lambda f: f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-10])),
     "holds 9398 bytes of data, its header says"),
])
def test_damaged_idx_files_name_file_and_dataset(isolated, damage, reason):
    bad = _gz_fmnist(isolated / "root")
    damage(bad)
    with pytest.raises(data.DataFileError) as err:
        data.load("fmnist", isolated / "root")
    msg = str(err.value)
    assert msg.startswith(f"fmnist file {bad} is unreadable") and reason in msg


def test_incomplete_idx_folder_names_the_missing_files(isolated):
    _gz_fmnist(isolated / "root")
    (isolated / "root" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="fmnist data in .* is incomplete: "
                                                "t10k-labels-idx1-ubyte"):
        data.load("fmnist", isolated / "root")


@pytest.mark.parametrize("content, reason", [
    (b"garbage that is no pickle", "UnpicklingError"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "labels are missing"),
    (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
     "data of shape (2, 100), expected (N, 3072)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
     "1 labels for 2 images"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [None, "a"]}),
     "data or labels are not numbers"),
])
def test_corrupt_cifar_batch_names_file_and_dataset(isolated, content, reason):
    folder = isolated / "root" / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(data.DataFileError) as err:
        data.load("cifar10", isolated / "root")
    msg = str(err.value)
    assert msg.startswith(f"cifar10 file {folder / 'data_batch_3'} is unreadable")
    assert reason in msg


@pytest.mark.parametrize("csv_text, reason", [
    ("Filename;ClassId\n00000.ppm;0\n", "column 'Roi.X1' is missing"),
    (GT_HEADER + "00000.ppm;40;30;5;6;24;25;zero\n", "ValueError"),
    (GT_HEADER + "absent.ppm;40;30;5;6;24;25;0\n", "FileNotFoundError"),
])
def test_bad_gtsrb_csv_names_file_and_dataset(isolated, csv_text, reason):
    base = isolated / "root" / "gtsrb"
    write_gtsrb(base)
    (base / "GT-final_test.csv").write_text(csv_text)
    with pytest.raises(data.DataFileError) as err:
        data.load("gtsrb", isolated / "root")
    msg = str(err.value)
    assert msg.startswith(f"gtsrb file {base / 'GT-final_test.csv'} is unreadable")
    assert reason in msg


def test_dataset_refuses_labels_beyond_its_classes():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    y = torch.tensor([0, 1, 7])
    with pytest.raises(ValueError, match="y_train holds label 7 .* outside the 5 classes"):
        data.Dataset("toy", x, y, x, torch.tensor([0, 1, 2]), tuple("abcde"))


def test_import_and_fetch_without_torchvision(tmp_path):
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import bdunlearn, bdunlearn.data, bdunlearn.unlearning, bdunlearn.detect\n"
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


# ------------------------------------------------------------------ the dataset registry

def test_every_dataset_is_registered_with_its_reader():
    from bdunlearn import registry

    assert registry.DATASETS == data.DATASETS == ("fmnist", "mnist", "cifar10", "gtsrb",
                                                  "digits")
    assert registry.REGISTERED is data.REGISTERED
    assert all(callable(s.reader) for s in data.REGISTERED.values())
    assert [n for n, s in data.REGISTERED.items() if s.fetch is not None] == ["fmnist", "mnist",
                                                                        "cifar10", "gtsrb"]


def _toy_spec(name="toy", **kw):
    from bdunlearn.train import TrainConfig

    return data.DatasetSpec(name=name, title="Toy", image_shape=(1, 4, 4), num_classes=2,
                            train_size=6, test_size=2, arch="fmnist_cnn",
                            train=TrainConfig(epochs=1), poison_num=1, mitigation_num=1,
                            it_poison_num=1, it_mitigation_num=1, alpha=0.5,
                            how_to_get="make it with a brush", expected="<root>/toy.npz",
                            **kw)


def test_a_dataset_registered_from_outside_is_loaded_by_its_reader(tmp_path):
    from bdunlearn import registry

    def read_toy(root):
        if not (root / "toy.npz").is_file():
            return None
        x = torch.zeros(8, 1, 4, 4, dtype=torch.uint8)
        y = torch.tensor([0, 1] * 4)
        return data.Dataset("toy", x[:6], y[:6], x[6:], y[6:], ("a", "b"))

    data.register(_toy_spec())(read_toy)
    try:
        assert "toy" in registry.DATASETS and registry.spec("toy").how_to_get.startswith("make")
        with pytest.raises(FileNotFoundError, match=r"toy data not found under .* \(expected "
                                                    r"<root>/toy.npz\); make it with a brush"):
            data.load("toy", tmp_path)
        (tmp_path / "toy.npz").write_bytes(b"")
        assert len(data.load("toy", tmp_path).y_train) == 6
        data.register(_toy_spec())(read_toy)  # the same reader again (a re-run cell): kept
    finally:
        data.REGISTERED.pop("toy")


@pytest.mark.parametrize("call, message", [
    (lambda: data.register({"name": "toy"}), "register needs a bdunlearn.data.DatasetSpec"),
    (lambda: data.register(_toy_spec("fmnist"), lambda root: None),
     "a dataset named 'fmnist' is already registered"),
    (lambda: data.register(_toy_spec("a-b"), lambda root: None),
     "a dataset's name must be a word"),
    (lambda: data.register(_toy_spec(), 3), "its reader must be a function"),
    (lambda: data.register(_toy_spec(fetch="http://x"), lambda root: None),
     "fetch must be callable or None"),
])
def test_register_refuses_bad_datasets_in_one_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    assert "toy" not in data.REGISTERED
