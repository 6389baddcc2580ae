"""Reference architectures (BAU paper, section 5) behind one input-scaling wrapper.

Every model takes float images in [0, 1] of shape ``(N, C, H, W)`` and applies its input
scaling itself, so defenses such as Neural Cleanse can optimise directly in pixel space.

Where a reference network applies ReLU and then max-pooling, the models here pool first:
the two commute (ReLU is monotone), so outputs and gradients are bit-for-bit the same
(``tests/test_models.py`` checks it against the reference order), the parameters keep
their names (checkpoints and cache keys do not change), and ReLU and its backward pass
touch a quarter of the values.

Input scalings (:data:`INPUT_SCALINGS`), as ``(x - mean) / std`` inside the model:

* ``"unit"``: [0, 1] unchanged, what the BAU authors' MNIST and Fashion-MNIST pipelines
  feed (``ToTensor()`` with no normalisation); the reference for ``lenet5`` and
  ``fmnist_cnn``.
* ``"signed"``: [-1, 1] (mean 0.5, std 0.5), the package's former choice for every model;
  the reference for ``gtsrb_cnn`` and ``preact_resnet18``.
* ``"imagenet"``: ImageNet channel statistics, what the authors' CIFAR-10 pipeline uses
  (``Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))``); the reference for
  ``vgg11_bn``. Needs three channels.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn

from .checks import choice, integer

ARCHITECTURES = ("lenet5", "fmnist_cnn", "gtsrb_cnn", "vgg11_bn", "preact_resnet18")


class Normalized(nn.Module):
    """``net((x - mean) / std)`` with per-channel statistics stored as buffers."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _flat_size(features: nn.Module, shape) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *shape)).numel()


def lenet5(shape, num_classes):
    c = shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2 if shape[1] == 28 else 0), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, num_classes))


def fmnist_cnn(shape, num_classes):
    """Three 5x5 conv layers (16, 32, 32 channels) with max-pooling, FC 512."""
    c = shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(16, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))


def gtsrb_cnn(shape, num_classes):
    """Six 3x3 conv layers (32, 32, 64, 64, 128, 128), FC 512 with dropout."""
    layers, c = [], shape[0]
    for i, w in enumerate((32, 32, 64, 64, 128, 128)):
        layers.append(nn.Conv2d(c, w, 3, padding=1))
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU())
        c = w
    features = nn.Sequential(*layers, nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Dropout(0.5), nn.Linear(n, 512), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(512, num_classes))


def vgg11_bn(shape, num_classes):
    """VGG11 with batch norm, the 32x32 CIFAR variant (one FC layer)."""
    cfg = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
    layers, c = [], shape[0]
    for v in cfg:
        if v == "M":  # before the last ReLU (see the module docstring)
            layers.insert(len(layers) - 1, nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    features = nn.Sequential(*layers, nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), num_classes))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + short


def preact_resnet18(shape, num_classes):
    layers, c = [nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)], 64
    for w, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [PreActBlock(c, w, stride), PreActBlock(w, w, 1)]
        c = w
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


_BUILDERS = {"lenet5": lenet5, "fmnist_cnn": fmnist_cnn, "gtsrb_cnn": gtsrb_cnn,
             "vgg11_bn": vgg11_bn, "preact_resnet18": preact_resnet18}


INPUT_SCALINGS = {"unit": ((0.0,), (1.0,)), "signed": ((0.5,), (0.5,)),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
REFERENCE_SCALING = {"lenet5": "unit", "fmnist_cnn": "unit", "gtsrb_cnn": "signed",
                     "vgg11_bn": "imagenet", "preact_resnet18": "signed"}


def build_model(arch: str, shape, num_classes: int, seed: int | None = None,
                input_scaling: str | None = None) -> Normalized:
    """Build ``arch`` for images of ``shape = (C, H, W)`` and ``num_classes`` labels.

    ``input_scaling`` is one of :data:`INPUT_SCALINGS`; ``None`` takes the architecture's
    reference scaling (:data:`REFERENCE_SCALING`, the BAU authors' procedure). With
    ``seed`` the initial weights are drawn from that seed without touching the caller's
    global RNG state.
    """
    choice("model", arch, ARCHITECTURES)
    if (not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 3
            or not all(isinstance(d, Integral) and not isinstance(d, bool) and d >= 1
                       for d in shape)):
        raise ValueError(f"image shape {shape!r} must be three positive integers "
                         "(channels, height, width)")
    shape = tuple(int(d) for d in shape)
    num_classes = integer("num_classes", num_classes, low=2)
    if seed is not None:
        seed = integer("seed", seed, low=0)
    scaling = REFERENCE_SCALING[arch] if input_scaling is None else input_scaling
    choice("input_scaling", scaling, tuple(INPUT_SCALINGS))
    mean, std = INPUT_SCALINGS[scaling]
    c = shape[0]
    if len(mean) == 1:
        mean, std = mean * c, std * c
    elif len(mean) != c:
        raise ValueError(f"input_scaling {scaling!r} needs {len(mean)}-channel images, "
                         f"got shape {shape}")
    if seed is None:
        return Normalized(_BUILDERS[arch](shape, num_classes), mean, std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Normalized(_BUILDERS[arch](shape, num_classes), mean, std)
