"""Dataset facts in one place: one :class:`DatasetSpec` per dataset the package knows.

Everything that needs a fact about a dataset (its image shape and classes, the reference
model and optimiser, the BAU paper's attack counts and patch intensity, where to get the
files) reads it here: ``registry.spec("fmnist").poison_num``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .train import TrainConfig


@dataclass(frozen=True)
class DatasetSpec:
    """What the package knows about one dataset.

    ``train_size`` and ``test_size`` are the standard splits' sizes (a smaller copy on disk
    is used whole). ``poison_num``/``mitigation_num`` are the BAU paper's BadNets-based
    counts, ``it_poison_num``/``it_mitigation_num`` its input-targeted counts, ``alpha``
    its faint-patch intensity (0.5 for 1-channel images, 0.7 for 3-channel ones).
    ``train`` is the reference optimiser with the authors' attack scripts' default epochs.
    ``how_to_get`` completes the sentence "<name> data not found under ...; " when the
    files are missing.
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


SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec(
        name="fmnist", title="Fashion-MNIST", image_shape=(1, 28, 28), num_classes=10,
        train_size=60000, test_size=10000, arch="fmnist_cnn",
        train=TrainConfig(epochs=20, momentum=0.9, weight_decay=5e-4, shuffle="once"),
        poison_num=200, mitigation_num=300, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
        how_to_get="install it with `apt-get install dataset-fashion-mnist` (or `make setup`)"),
    DatasetSpec(
        name="mnist", title="MNIST", image_shape=(1, 28, 28), num_classes=10,
        train_size=60000, test_size=10000, arch="lenet5",
        train=TrainConfig(epochs=20, shuffle="once"),
        poison_num=200, mitigation_num=600, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
        how_to_get="put the four MNIST idx files in <root>/MNIST/raw, or call "
                   "bdunlearn.data.load('mnist', root, fetch=True) where torchvision imports"),
    DatasetSpec(
        name="cifar10", title="CIFAR-10", image_shape=(3, 32, 32), num_classes=10,
        train_size=50000, test_size=10000, arch="vgg11_bn",
        train=TrainConfig(epochs=60, momentum=0.9, weight_decay=5e-4, lr_step=10, crop=True,
                          flip=True),
        poison_num=300, mitigation_num=100, it_poison_num=5, it_mitigation_num=15, alpha=0.7,
        how_to_get="extract cifar-10-python.tar.gz so that <root>/cifar-10-batches-py exists, "
                   "or call load('cifar10', root, fetch=True) where torchvision imports"),
    DatasetSpec(
        name="gtsrb", title="GTSRB", image_shape=(3, 32, 32), num_classes=43,
        train_size=39209, test_size=12630, arch="gtsrb_cnn",
        train=TrainConfig(epochs=20, crop=True),
        poison_num=1000, mitigation_num=2000, it_poison_num=5, it_mitigation_num=15,
        alpha=0.7,
        how_to_get="extract the GTSRB training and test archives into <root>/gtsrb "
                   "(torchvision's layout), or call load('gtsrb', root, fetch=True) where "
                   "torchvision imports"),
    DatasetSpec(
        name="digits", title="scikit-learn digits (tests)", image_shape=(1, 28, 28),
        num_classes=10, train_size=1500, test_size=297, arch="fmnist_cnn",
        train=TrainConfig(epochs=20, momentum=0.9, weight_decay=5e-4),
        poison_num=60, mitigation_num=90, it_poison_num=5, it_mitigation_num=15, alpha=0.5,
        how_to_get="it ships with scikit-learn (`pip install scikit-learn`)"),
)}

DATASETS: tuple[str, ...] = tuple(SPECS)


def spec(name: str) -> DatasetSpec:
    """The facts of dataset ``name``; an unknown name fails naming the known ones."""
    if not isinstance(name, str) or name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SPECS[name]


def reference_config(dataset: str, **overrides) -> TrainConfig:
    """The BAU paper's optimiser settings for ``dataset``, with ``overrides`` replaced
    (``None`` values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(spec(dataset).train, **overrides)
