"""Dataset readers: real on-disk formats in, uint8 tensors ``(N, C, H, W)`` out.

Every reader returns a :class:`Dataset` holding train and test images as uint8 tensors
and int64 labels. A ``root`` argument is the only folder searched when it is given;
without one, roots are searched in this order: the ``BDUNLEARN_DATA`` environment
variable, the user cache (``~/.cache/bdunlearn``), and the Debian dataset folder
(``/usr/share/datasets``). Layouts are those torchvision writes, so a root that
torchvision downloaded into works as it is.

A file that is there but cannot be read (truncated, not gzip, wrong magic number, a
corrupt pickle, a CSV without the expected columns) raises :class:`DataFileError`
naming the file and the dataset; missing data raises ``FileNotFoundError`` saying what
is missing where and how to get it.
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .checks import choice, flag, integer
from .train import TrainConfig

DEBIAN_ROOT = Path("/usr/share/datasets")

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
RUNNER_HINT = 'from the command line: make reproduce ARGS="-p data_root /path"'


class DataFileError(ValueError):
    """A data file that exists but cannot be read; the message names file and dataset."""


def _corrupt(dataset: str, path: Path, reason: str) -> DataFileError:
    return DataFileError(f"{dataset} file {path} is unreadable: {reason}; replace it with a "
                         "fresh copy of the original download")


@dataclass(frozen=True)
class Dataset:
    """Train and test split of one image dataset, kept as uint8 tensors."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"x_{split} must be a uint8 tensor (N, C, H, W), got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} "
                                 f"{tuple(getattr(x, 'shape', ()))}")
            if (not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1
                    or len(y) != len(x)):
                raise ValueError(f"y_{split} must be an int64 tensor with one label per image "
                                 f"({len(x)}), got {getattr(y, 'dtype', type(y).__name__)} "
                                 f"{tuple(getattr(y, 'shape', ()))}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"y_{split} holds label {int(y.max())} (min {int(y.min())}), "
                                 f"outside the {len(self.classes)} classes 0.."
                                 f"{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"train images {tuple(self.x_train.shape[1:])} and test images "
                             f"{tuple(self.x_test.shape[1:])} must have the same shape")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def subset(self, train: int | None = None, test: int | None = None,
               seed: int = 0) -> Dataset:
        """A random subset of ``train`` and ``test`` samples (``None`` keeps a split whole;
        a size at least the split's keeps it whole too), drawn from ``seed``
        (:meth:`subset_indices` names the images drawn)."""
        tr, te = self.subset_indices(train, test, seed)
        xtr, ytr = (self.x_train, self.y_train) if tr is None else (self.x_train[tr],
                                                                    self.y_train[tr])
        xte, yte = (self.x_test, self.y_test) if te is None else (self.x_test[te],
                                                                self.y_test[te])
        return Dataset(self.name, xtr, ytr, xte, yte, self.classes)

    def subset_indices(self, train: int | None = None, test: int | None = None,
                       seed: int = 0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The sorted indices :meth:`subset` keeps of each split (``None``: the whole split)."""
        gen = np.random.default_rng(integer("seed", seed, low=0))
        out = []
        for name, n, size in (("train", train, len(self.y_train)),
                              ("test", test, len(self.y_test))):
            if n is not None:
                integer(f"{name} subset size", n, low=1)
            if n is None or n >= size:
                out.append(None)
            else:
                out.append(torch.from_numpy(np.sort(gen.permutation(size)[:n])))
        return out[0], out[1]


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class DatasetSpec:
    """What the package knows about one dataset.

    ``train_size`` and ``test_size`` are the standard splits' sizes (a smaller copy on disk
    is used whole). ``poison_num``/``mitigation_num`` are the BAU paper's BadNets-based
    counts, ``it_poison_num``/``it_mitigation_num`` its input-targeted counts, ``alpha``
    its faint-patch intensity (0.5 for 1-channel images, 0.7 for 3-channel ones).
    ``train`` is the reference optimiser with the authors' attack scripts' default epochs.
    ``how_to_get`` completes the sentence "<name> data not found under ...; " when the
    files are missing, ``expected`` the words "(expected ...)" in it: what a root must hold.

    ``reader(root) -> Dataset | None`` finds the dataset under one root folder (``None``:
    not there; ``FileNotFoundError`` when it is there but incomplete, :class:`DataFileError`
    when a file cannot be read); :func:`register` sets it. ``fetch(root)`` downloads it
    into ``root`` (``None``: no download). ``on_disk`` False: the reader needs no root
    (it is called with ``None``).
    """

    name: str
    title: str
    image_shape: tuple[int, int, int]
    num_classes: int
    train_size: int
    test_size: int
    arch: str
    train: TrainConfig
    poison_num: int
    mitigation_num: int
    it_poison_num: int
    it_mitigation_num: int
    alpha: float
    how_to_get: str
    expected: str = ""
    reader: Callable | None = field(default=None, repr=False, compare=False)
    fetch: Callable | None = field(default=None, repr=False, compare=False)
    on_disk: bool = True


REGISTERED: dict[str, DatasetSpec] = {}  # the registry: name -> spec with its reader


def register(spec: DatasetSpec, reader: Callable | None = None):
    """Register dataset ``spec`` with its ``reader`` (see :class:`DatasetSpec`); without
    ``reader``, a decorator for the reader function. A name already taken by another
    reader fails (the same reader defined again replaces it). Call it from any module; the name
    is then a ``dataset`` every notebook parameter and :func:`load` accept::

        @register(DatasetSpec(name="svhn", title="SVHN", image_shape=(3, 32, 32), ...))
        def read_svhn(root: Path) -> Dataset | None: ...
    """
    if not isinstance(spec, DatasetSpec):
        raise ValueError(f"register needs a bdunlearn.data.DatasetSpec, got "
                         f"{type(spec).__name__}")
    if not isinstance(spec.name, str) or not spec.name.isidentifier():
        raise ValueError(f"a dataset's name must be a word of letters, digits and "
                         f"underscores, got {spec.name!r}")
    if spec.fetch is not None and not callable(spec.fetch):
        raise ValueError(f"dataset {spec.name!r}: fetch must be callable or None, got "
                         f"{type(spec.fetch).__name__}")

    def add(fn):
        if not callable(fn):
            raise ValueError(f"dataset {spec.name!r}: its reader must be a function of a root "
                             f"folder, got {type(fn).__name__}")
        old = REGISTERED.get(spec.name)
        if old is not None and not (
                getattr(old.reader, "__module__", None) == getattr(fn, "__module__", None)
                and getattr(old.reader, "__qualname__", None) == getattr(fn, "__qualname__",
                                                                         None)):
            raise ValueError(f"a dataset named {spec.name!r} is already registered; choose "
                             "another name")
        REGISTERED[spec.name] = replace(spec, reader=fn)
        return fn
    return add if reader is None else add(reader)


def datasets() -> tuple[str, ...]:
    """The registered datasets' names, in registration order."""
    return tuple(REGISTERED)


def __getattr__(name: str):
    if name == "DATASETS":  # the registry's current names
        return datasets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec(name: str) -> DatasetSpec:
    """The facts of dataset ``name``; an unknown name fails naming the known ones."""
    if not isinstance(name, str) or name not in REGISTERED:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(datasets())}")
    return REGISTERED[name]


def reference_config(dataset: str, **overrides) -> TrainConfig:
    """The BAU paper's optimiser settings for ``dataset``, with ``overrides`` replaced
    (``None`` values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(spec(dataset).train, **overrides)


def candidate_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data, in order: only ``root`` when it is given."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"data_root {root!r} must be a folder path")
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get("BDUNLEARN_DATA"):
        roots.append(Path(os.environ["BDUNLEARN_DATA"]).expanduser())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    roots.append(cache / "bdunlearn")
    roots.append(DEBIAN_ROOT)
    return roots


def load(name: str, root: str | os.PathLike | None = None, *, fetch: bool = False) -> Dataset:
    """Load dataset ``name`` (a registered name, :func:`register`) with its reader, from
    the first root holding it.

    ``fetch=True`` downloads into ``root`` (or the user cache) through torchvision when
    the data is missing; torchvision is imported only then. An explicit ``root`` is the
    only folder searched (no fallback to the other roots).
    """
    choice("dataset", name, datasets())
    flag("fetch", fetch)
    s = spec(name)
    if not s.on_disk:
        return s.reader(None)
    roots = candidate_roots(root)
    for r in roots:
        found = s.reader(r)
        if found is not None:
            return found
    if fetch and s.fetch is not None:
        target = roots[0] if root is not None else roots[-2]
        s.fetch(target)
        found = s.reader(target)
        if found is not None:
            return found
    searched = ", ".join(str(r) for r in roots)
    hint = "" if name == "fmnist" else f"; {RUNNER_HINT}"
    expected = f" (expected {s.expected})" if s.expected else ""
    raise FileNotFoundError(f"{name} data not found under {searched}{expected}; "
                            f"{s.how_to_get}{hint}.")


# ---------------------------------------------------------------- idx (MNIST family)

def read_idx(path: str | os.PathLike, dataset: str = "idx") -> np.ndarray:
    """Read one unsigned-byte idx file (gzipped when its name ends in .gz) into an array.

    A file that is not gzip, truncated, or not an idx file raises :class:`DataFileError`
    naming ``path`` and ``dataset``.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(dataset, path, f"{exc.__class__.__name__}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise _corrupt(dataset, path, "not an unsigned-byte idx file (magic number "
                                      f"{data[:4].hex() or 'missing'}, expected 0000080N)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise _corrupt(dataset, path, f"its header is cut short ({len(data)} bytes)")
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise _corrupt(dataset, path, f"it holds {arr.size} bytes of data, its header says "
                                      f"{tuple(int(d) for d in dims)}")
    return arr.reshape(tuple(int(d) for d in dims))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _read_idx_folder(folder: Path, name: str, classes) -> Dataset | None:
    files = [_idx_file(folder, s) for s in IDX_STEMS]
    if all(f is None for f in files):
        return None
    missing = [s for s, f in zip(IDX_STEMS, files) if f is None]
    if missing:
        raise FileNotFoundError(f"{name} data in {folder} is incomplete: {', '.join(missing)} "
                                f"(or .gz) missing; {spec(name).how_to_get}")
    xtr, ytr, xte, yte = (read_idx(f, name) for f in files)
    for xf, yf, x, y in ((files[0], files[1], xtr, ytr), (files[2], files[3], xte, yte)):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise _corrupt(name, xf, f"images of shape {x.shape[1:]}, expected 28x28")
        if y.ndim != 1 or len(y) != len(x):
            raise _corrupt(name, yf, f"{y.size} labels for the {len(x)} images of {xf.name}")
        if y.size and int(y.max()) >= len(classes):
            raise _corrupt(name, yf, f"label {int(y.max())} outside 0..{len(classes) - 1}")
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

# What the CIFAR-10 pickles hold: dicts, lists, bytes, numbers and numpy arrays. Nothing
# else may be named in them, so a planted file cannot run code when it is read.
_CIFAR_GLOBALS = {(module, name) for module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar")} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch "
                                         "never holds (refused: a pickle could run code)")
        return super().find_class(module, name)


def _unpickle(path: Path, keys) -> dict:
    """A CIFAR batch as a dict holding ``keys``, read with an unpickler that accepts only
    the arrays and lists the format holds; anything else is a :class:`DataFileError`."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost any error type
        raise _corrupt("cifar10", path, f"{exc.__class__.__name__}: {exc}") from exc
    if not isinstance(d, dict):
        raise _corrupt("cifar10", path, f"it holds a {type(d).__name__}, not a dict")
    missing = [k.decode() for k in keys if k not in d]
    if missing:
        raise _corrupt("cifar10", path, f"the key(s) {', '.join(missing)} are missing")
    return d


def _cifar_batch(path: Path):
    d = _unpickle(path, (b"data", b"labels"))
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise _corrupt("cifar10", path, f"data or labels are not numbers ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise _corrupt("cifar10", path, f"data of shape {x.shape}, expected (N, 3072)")
    if y.ndim != 1 or len(y) != len(x):
        raise _corrupt("cifar10", path, f"{y.size} labels for {len(x)} images")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise _corrupt("cifar10", path, f"labels outside 0..9 (from {y.min()} to {y.max()})")
    return x.reshape(-1, 3, 32, 32), y


def _find_cifar10(root: Path) -> Dataset | None:
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        return None
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    missing = [f.name for f in train_files + [folder / "test_batch"] if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"cifar10 data in {folder} is incomplete: {', '.join(missing)} "
                                f"missing; {spec('cifar10').how_to_get}; {RUNNER_HINT}")

    def read(files):
        xs, ys = zip(*(_cifar_batch(f) for f in files))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = read(train_files)
    xte, yte = read([folder / "test_batch"])
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta, (b"label_names",))[b"label_names"]
        if not isinstance(names, (list, tuple)) or len(names) != 10:
            raise _corrupt("cifar10", meta, "label_names is not a list of 10 names")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
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
    """Images and labels listed in one GTSRB annotation CSV; a CSV without the expected
    columns, a bad number, or a missing or unreadable image is a :class:`DataFileError`
    naming the CSV."""
    xs, ys = [], []
    try:
        with open(csv_path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f, delimiter=";"), start=2):
                try:
                    xs.append(_read_roi(image_dir / row["Filename"], row))
                    ys.append(int(row["ClassId"]))
                except KeyError as exc:
                    raise _corrupt("gtsrb", csv_path, f"column {exc} is missing (line {line}); "
                                   "expected Filename;...;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
                                   ) from exc
                except (TypeError, ValueError, OSError) as exc:
                    raise _corrupt("gtsrb", csv_path,
                                   f"line {line}: {exc.__class__.__name__}: {exc}") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _corrupt("gtsrb", csv_path, f"{exc.__class__.__name__}: {exc}") from exc
    return xs, ys


def _find_gtsrb(root: Path) -> Dataset | None:
    base = root / "gtsrb"
    if not base.is_dir():
        return None
    train_dir = base / "GTSRB" / "Training"
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_csv = base / "GT-final_test.csv"
    missing = [str(p) for p, ok in ((train_dir, train_dir.is_dir()), (test_dir, test_dir.is_dir()),
                                    (test_csv, test_csv.is_file())) if not ok]
    if missing:
        raise FileNotFoundError(f"gtsrb data in {base} is incomplete: {', '.join(missing)} "
                                f"missing; {spec('gtsrb').how_to_get}; {RUNNER_HINT}")
    xtr, ytr = [], []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        x, y = _read_gt_csv(class_dir / f"GT-{class_dir.name}.csv", class_dir)
        xtr += x
        ytr += y
    xte, yte = _read_gt_csv(test_csv, test_dir)
    if not xtr or not xte:
        empty = train_dir if not xtr else test_csv
        raise FileNotFoundError(f"gtsrb data in {base} lists no images in {empty}; "
                                f"{spec('gtsrb').how_to_get}; {RUNNER_HINT}")
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
            f"otherwise {spec(name).how_to_get}") from exc
    cls = {"fmnist": tvd.FashionMNIST, "mnist": tvd.MNIST,
           "cifar10": tvd.CIFAR10, "gtsrb": tvd.GTSRB}[name]
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        if name == "gtsrb":
            cls(str(root), split=split, download=True)
        else:
            cls(str(root), train=split == "train", download=True)


# ---------------------------------------------------------------- the built-in datasets
# Each spec registered with its reader: shape, classes, default architecture, reference
# optimiser, the BAU paper's attack counts and alpha, and how to get the files.

_IDX = f"the idx files {', '.join(IDX_STEMS)} (optionally .gz)"

register(DatasetSpec(
    name="fmnist", title="Fashion-MNIST", image_shape=(1, 28, 28), num_classes=10,
    train_size=60000, test_size=10000, arch="fmnist_cnn",
    train=TrainConfig(epochs=20, momentum=0.9, weight_decay=5e-4, shuffle="once"),
    poison_num=200, mitigation_num=300, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
    how_to_get="install it with `apt-get install dataset-fashion-mnist` (or `make setup`)",
    expected=f"{_IDX} in <root>, <root>/fashion-mnist or <root>/FashionMNIST/raw",
    fetch=functools.partial(_fetch, "fmnist")), _find_fmnist)
register(DatasetSpec(
    name="mnist", title="MNIST", image_shape=(1, 28, 28), num_classes=10,
    train_size=60000, test_size=10000, arch="lenet5",
    train=TrainConfig(epochs=20, shuffle="once"),
    poison_num=200, mitigation_num=600, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
    how_to_get="put the four MNIST idx files in <root>/MNIST/raw, or call "
               "bdunlearn.data.load('mnist', root, fetch=True) where torchvision imports",
    expected=f"{_IDX} in <root>/MNIST/raw or <root>/mnist",
    fetch=functools.partial(_fetch, "mnist")), _find_mnist)
register(DatasetSpec(
    name="cifar10", title="CIFAR-10", image_shape=(3, 32, 32), num_classes=10,
    train_size=50000, test_size=10000, arch="vgg11_bn",
    train=TrainConfig(epochs=60, momentum=0.9, weight_decay=5e-4, lr_step=10, crop=True,
                      flip=True),
    poison_num=300, mitigation_num=100, it_poison_num=5, it_mitigation_num=15, alpha=0.7,
    how_to_get="extract cifar-10-python.tar.gz so that <root>/cifar-10-batches-py exists, "
               "or call load('cifar10', root, fetch=True) where torchvision imports",
    expected="<root>/cifar-10-batches-py with data_batch_1 to data_batch_5 and test_batch",
    fetch=functools.partial(_fetch, "cifar10")), _find_cifar10)
register(DatasetSpec(
    name="gtsrb", title="GTSRB", image_shape=(3, 32, 32), num_classes=43,
    train_size=39209, test_size=12630, arch="gtsrb_cnn",
    train=TrainConfig(epochs=20, crop=True),
    poison_num=1000, mitigation_num=2000, it_poison_num=5, it_mitigation_num=15,
    alpha=0.7,
    how_to_get="extract the GTSRB training and test archives into <root>/gtsrb "
               "(torchvision's layout), or call load('gtsrb', root, fetch=True) where "
               "torchvision imports",
    expected="<root>/gtsrb/GTSRB/Training, <root>/gtsrb/GTSRB/Final_Test/Images and "
             "<root>/gtsrb/GT-final_test.csv",
    fetch=functools.partial(_fetch, "gtsrb")), _find_gtsrb)
register(DatasetSpec(
    name="digits", title="scikit-learn digits (tests)", image_shape=(1, 28, 28),
    num_classes=10, train_size=1500, test_size=297, arch="fmnist_cnn",
    train=TrainConfig(epochs=20, momentum=0.9, weight_decay=5e-4),
    poison_num=60, mitigation_num=90, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
    how_to_get="it ships with scikit-learn (`pip install scikit-learn`)", on_disk=False),
    lambda root: _read_digits())
