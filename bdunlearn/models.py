"""Reference architectures (BAU paper, section 5) behind one normalising wrapper.

Every model takes float images in [0, 1] of shape ``(N, C, H, W)`` and normalises them
itself, so defenses such as Neural Cleanse can optimise directly in pixel space.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("lenet5", "fmnist_cnn", "gtsrb_cnn", "vgg11_bn", "preact_resnet18")
DEFAULT_ARCH = {"mnist": "lenet5", "digits": "fmnist_cnn", "fmnist": "fmnist_cnn",
                "gtsrb": "gtsrb_cnn", "cifar10": "vgg11_bn"}


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
        nn.Conv2d(c, 6, 5, padding=2 if shape[1] == 28 else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, num_classes))


def fmnist_cnn(shape, num_classes):
    """Three 5x5 conv layers (16, 32, 32 channels) with max-pooling, FC 512."""
    c = shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))


def gtsrb_cnn(shape, num_classes):
    """Six 3x3 conv layers (32, 32, 64, 64, 128, 128), FC 512 with dropout."""
    layers, c = [], shape[0]
    for i, w in enumerate((32, 32, 64, 64, 128, 128)):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
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
        if v == "M":
            layers.append(nn.MaxPool2d(2))
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


def build_model(arch: str, shape, num_classes: int, mean=None, std=None,
                seed: int | None = None) -> Normalized:
    """Build ``arch`` for images of ``shape = (C, H, W)`` and ``num_classes`` labels.

    With ``seed`` the initial weights are drawn from that seed without touching the
    caller's global RNG state.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown model {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if len(shape) != 3:
        raise ValueError(f"image shape {tuple(shape)} must be (channels, height, width)")
    c = shape[0]
    mean = (0.5,) * c if mean is None else tuple(mean)
    std = (0.5,) * c if std is None else tuple(std)
    if seed is None:
        return Normalized(_BUILDERS[arch](tuple(shape), num_classes), mean, std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Normalized(_BUILDERS[arch](tuple(shape), num_classes), mean, std)


def default_arch(dataset: str) -> str:
    if dataset not in DEFAULT_ARCH:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DEFAULT_ARCH)}")
    return DEFAULT_ARCH[dataset]
