"""Dataset readers: real on-disk formats in, uint8 tensors ``(N, C, H, W)`` out.

Every reader returns a :class:`Dataset` holding train and test images as uint8 tensors
and int64 labels. Roots are searched in this order: the ``root`` argument, the
``BDUNLEARN_DATA`` environment variable, the user cache (``~/.cache/bdunlearn``), and
the Debian dataset folder (``/usr/share/datasets``). Layouts are those torchvision
writes, so a root that torchvision downloaded into works as it is.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("fmnist", "mnist", "cifar10", "gtsrb", "digits")
DEBIAN_ROOT = Path("/usr/share/datasets")

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

HOW_TO_GET = {
    "fmnist": "install it with `apt-get install dataset-fashion-mnist` (or `make setup`)",
    "mnist": "put the four MNIST idx files in <root>/MNIST/raw, or call "
             "bdunlearn.data.load('mnist', root, fetch=True) where torchvision imports",
    "cifar10": "extract cifar-10-python.tar.gz so that <root>/cifar-10-batches-py exists, "
               "or call load('cifar10', root, fetch=True) where torchvision imports",
    "gtsrb": "extract the GTSRB training and test archives into <root>/gtsrb "
             "(torchvision's layout), or call load('gtsrb', root, fetch=True) where "
             "torchvision imports",
}


@dataclass(frozen=True)
class Dataset:
    """Train and test split of one image dataset, kept as uint8 tensors."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def subset(self, train: int | None = None, test: int | None = None,
               seed: int = 0) -> "Dataset":
        """A class-stratified random subset (``None`` keeps a split whole)."""
        gen = np.random.default_rng(seed)
        xtr, ytr = _take(self.x_train, self.y_train, train, gen)
        xte, yte = _take(self.x_test, self.y_test, test, gen)
        return Dataset(self.name, xtr, ytr, xte, yte, self.classes)


def _take(x, y, n, gen):
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise ValueError(f"subset size {n} must be a positive number of samples")
    idx = gen.permutation(len(y))[:n]  # experiment.defender_pool relies on this draw
    idx = torch.from_numpy(np.sort(idx))
    return x[idx], y[idx]


def candidate_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data, in order."""
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    if os.environ.get("BDUNLEARN_DATA"):
        roots.append(Path(os.environ["BDUNLEARN_DATA"]).expanduser())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    roots.append(cache / "bdunlearn")
    roots.append(DEBIAN_ROOT)
    return roots


def load(name: str, root: str | os.PathLike | None = None, *, fetch: bool = False) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from the first root that holds it.

    ``fetch=True`` downloads into ``root`` (or the user cache) through torchvision when
    the data is missing; torchvision is imported only then.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return _read_digits()
    reader = {"fmnist": _find_fmnist, "mnist": _find_mnist,
              "cifar10": _find_cifar10, "gtsrb": _find_gtsrb}[name]
    roots = candidate_roots(root)
    for r in roots:
        found = reader(r)
        if found is not None:
            return found
    if fetch:
        target = roots[0] if root is not None else roots[-2]
        _fetch(name, target)
        found = reader(target)
        if found is not None:
            return found
    searched = ", ".join(str(r) for r in roots)
    raise FileNotFoundError(f"{name} data not found under {searched}; {HOW_TO_GET[name]}.")


# ---------------------------------------------------------------- idx (MNIST family)

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzipped or not) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {arr.size} bytes, its header says {tuple(dims)}")
    return arr.reshape(tuple(int(d) for d in dims))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _read_idx_folder(folder: Path, name: str, classes) -> Dataset | None:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    files = [_idx_file(folder, s) for s in stems]
    if any(f is None for f in files):
        return None
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    return Dataset(name, torch.from_numpy(xtr.copy()).unsqueeze(1),
                   torch.from_numpy(ytr.astype(np.int64)),
                   torch.from_numpy(xte.copy()).unsqueeze(1),
                   torch.from_numpy(yte.astype(np.int64)), classes)


def _find_fmnist(root: Path) -> Dataset | None:
    for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        ds = _read_idx_folder(folder, "fmnist", FMNIST_CLASSES)
        if ds is not None:
            return ds
    return None


def _find_mnist(root: Path) -> Dataset | None:
    for folder in (root / "MNIST" / "raw", root / "mnist"):
        ds = _read_idx_folder(folder, "mnist", DIGIT_CLASSES)
        if ds is not None:
            return ds
    return None


# ---------------------------------------------------------------- CIFAR-10 pickles

def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _find_cifar10(root: Path) -> Dataset | None:
    folder = root / "cifar-10-batches-py"
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    if not all(f.is_file() for f in train_files + [folder / "test_batch"]):
        return None

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(f)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = read(train_files)
    xte, yte = read([folder / "test_batch"])
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        classes = tuple(n.decode() for n in _unpickle(meta)[b"label_names"])
    return Dataset("cifar10", xtr, ytr, xte, yte, classes)


# ---------------------------------------------------------------- GTSRB ppm folders

GTSRB_SIZE = 32


def _read_roi(path: Path, row: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        box = tuple(int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
        im = im.crop((box[0], box[1], box[2] + 1, box[3] + 1))
        im = im.resize((GTSRB_SIZE, GTSRB_SIZE), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _read_gt_csv(csv_path: Path, image_dir: Path):
    xs, ys = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            xs.append(_read_roi(image_dir / row["Filename"], row))
            ys.append(int(row["ClassId"]))
    return xs, ys


def _find_gtsrb(root: Path) -> Dataset | None:
    base = root / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_csv = base / "GT-final_test.csv"
    if not (train_dir.is_dir() and test_dir.is_dir() and test_csv.is_file()):
        return None
    xtr, ytr = [], []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        x, y = _read_gt_csv(class_dir / f"GT-{class_dir.name}.csv", class_dir)
        xtr += x
        ytr += y
    xte, yte = _read_gt_csv(test_csv, test_dir)
    if not xtr or not xte:
        return None
    classes = tuple(str(c) for c in range(max(ytr + yte) + 1))
    return Dataset("gtsrb", torch.from_numpy(np.stack(xtr)), torch.tensor(ytr),
                   torch.from_numpy(np.stack(xte)), torch.tensor(yte), classes)


# ---------------------------------------------------------------- scikit-learn digits

def _read_digits(size: int = 28, test: int = 297) -> Dataset:
    """scikit-learn's 8x8 digits, upsampled to ``size`` x ``size`` for tiny tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.from_numpy(d.target.astype(np.int64))
    n = len(y) - test
    return Dataset("digits", x[:n], y[:n], x[n:], y[n:], DIGIT_CLASSES)


# ---------------------------------------------------------------- optional download

def _fetch(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # torchvision missing or built against another torch
        raise RuntimeError(
            f"fetch=True needs a working torchvision ({exc.__class__.__name__}: {exc}); "
            f"otherwise {HOW_TO_GET[name]}") from exc
    cls = {"fmnist": tvd.FashionMNIST, "mnist": tvd.MNIST,
           "cifar10": tvd.CIFAR10, "gtsrb": tvd.GTSRB}[name]
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        if name == "gtsrb":
            cls(str(root), split=split, download=True)
        else:
            cls(str(root), train=split == "train", download=True)
