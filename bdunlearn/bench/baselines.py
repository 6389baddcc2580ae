"""The training loops the engine (:func:`bdunlearn.train.fit`) is measured against.

``bare_loop``
    forward/backward/SGD step over float batches already in memory: the model's own cost.
``dataloader_loop``
    the conventional pipeline of most backdoor codebases: per-sample PIL image, normalised
    float tensor (crop/flip per sample where the reference training augments),
    ``DataLoader(batch_size=100, shuffle=True, num_workers=0)``.
``authors_loop``
    how the BAU authors feed their Fashion-MNIST model (``attack/bn/fmnist_bn.py``,
    ``attack/sharded.py``): each uint8 image becomes a PIL image, then ``ToTensor()``
    (float in [0, 1], no normalisation; implemented here without torchvision as PIL ->
    float tensor / 255), through a ``DataLoader`` at batch 100 whose order is the shard's
    order shuffled once and kept for every epoch; fp32, default memory layout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..train import autocast

BATCH = 100


def bare_loop(model, xf, y, cfg, dev, channels_last: bool, precision: str = "fp32"):
    """Forward/backward/step of ``model`` over float batches already in memory, with the
    forward in ``precision`` (``"fp32"`` or ``"bf16"``) as the engine runs it."""
    model.to(dev).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    for xb, yb in zip(xf.split(BATCH), y.split(BATCH)):
        with autocast(precision, dev):
            out = model(xb)
        loss = F.cross_entropy(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)


class PerSampleDataset(Dataset):
    """The conventional pipeline: uint8 image -> PIL -> (crop, flip) -> float -> normalise."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std, crop: bool, flip: bool,
                 seed: int = 0):
        self.x = x.permute(0, 2, 3, 1).numpy()  # HWC, as images on disk decode
        self.y = y.numpy()
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.crop, self.flip = crop, flip
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        arr = self.x[i]
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        if self.crop:
            w, h = img.size
            img = ImageOps.expand(img, border=4, fill=0)
            dx, dy = self.rng.integers(0, 9, size=2)
            img = img.crop((int(dx), int(dy), int(dx) + w, int(dy) + h))
        if self.flip and self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        a = np.asarray(img, dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy((a - self.mean) / self.std), int(self.y[i])


def dataloader_loop(model, x, y, cfg, dev, seed: int = 0):
    """One epoch the conventional way: per-sample PIL conversion, ``num_workers=0``; the
    pipeline normalises, so the model's own input scaling is skipped (``model.net``)."""
    net = model.net.to(dev).train()
    ds = PerSampleDataset(x, y, model.mean.flatten().tolist(), model.std.flatten().tolist(),
                          cfg.crop, cfg.flip, seed)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    for xb, yb in loader:
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class AuthorsDataset(Dataset):
    """The BAU authors' Fashion-MNIST dataset: uint8 image -> PIL -> ``ToTensor()``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x[:, 0].numpy()  # (N, 28, 28) grey images, as their arrays hold them
        self.y = y.numpy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.x[i])
        # ToTensor() on a mode-"L" image: HW uint8 -> 1xHxW float32 in [0, 1]
        tensor = torch.from_numpy(np.array(img, dtype=np.uint8)).unsqueeze(0).float() / 255
        return tensor, int(self.y[i])


def authors_loop(model, x, y, cfg, dev, epochs: int = 1, seed: int = 0):
    """``epochs`` epochs the authors' way: their dataset, the shard order shuffled once
    (seeded) and kept, ``DataLoader(batch_size=100, shuffle=False)``, fp32, the model's
    default memory layout; the model takes [0, 1] images as theirs does."""
    model.to(dev).train()
    order = np.random.default_rng(seed).permutation(len(y)).tolist()
    loader = DataLoader(torch.utils.data.Subset(AuthorsDataset(x, y), order),
                        batch_size=BATCH, shuffle=False, num_workers=0)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
