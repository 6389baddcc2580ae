"""Triggers as pure whole-batch functions.

Each function takes a batch ``(N, C, H, W)`` of uint8 images (0-255) or float images in
[0, 1], returns a new tensor of the same dtype and device, and never changes its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"a trigger needs a batch of shape (N, C, H, W), got {shape}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"a trigger needs uint8 or float images, got {x.dtype}")


def _scale(x: torch.Tensor) -> float:
    return 255.0 if x.dtype == torch.uint8 else 1.0


def stamp_patch(x: torch.Tensor, size: int = 4, intensity: float = 1.0,
                corner: str = "bottom-right") -> torch.Tensor:
    """Set a ``size`` x ``size`` square in every channel to ``intensity`` (fraction of white).

    The BAU poison uses ``intensity = alpha`` (a faint patch), its mitigation samples and
    test trigger ``intensity = 1`` (a bright patch).
    """
    _check_batch(x)
    if not 0 < intensity <= 1:
        raise ValueError(f"patch intensity {intensity} must be in (0, 1]")
    h, w = x.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} must be between 1 and the image side {min(h, w)}")
    rows = slice(h - size, h) if "bottom" in corner else slice(0, size)
    cols = slice(w - size, w) if "right" in corner else slice(0, size)
    if corner not in ("bottom-right", "bottom-left", "top-right", "top-left"):
        raise ValueError(f"unknown corner {corner!r}; use bottom-right, bottom-left, "
                         "top-right or top-left")
    out = x.clone()
    value = intensity * _scale(x)
    out[..., rows, cols] = round(value) if x.dtype == torch.uint8 else value
    return out


def add_noise(x: torch.Tensor, gen: torch.Generator, low: int = -5, high: int = 4) -> torch.Tensor:
    """Independent integer noise in ``[low, high]`` per pixel (0-255 scale), clipped."""
    _check_batch(x)
    noise = torch.randint(low, high + 1, x.shape, generator=gen, device=x.device)
    if x.dtype == torch.uint8:
        return (x.to(torch.int16) + noise).clamp_(0, 255).to(torch.uint8)
    return (x + noise.to(x.dtype) / 255.0).clamp_(0, 1)


@dataclass(frozen=True)
class PatchTrigger:
    """A square patch as a callable trigger (what a defender told the trigger receives)."""

    size: int = 4
    intensity: float = 1.0
    corner: str = "bottom-right"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return stamp_patch(x, self.size, self.intensity, self.corner)


@dataclass(frozen=True, eq=False)
class MaskTrigger:
    """``(1 - mask) * x + mask * pattern`` in [0, 1] pixel space (Neural Cleanse's form).

    ``mask`` is ``(1, H, W)`` or ``(H, W)`` in [0, 1]; ``pattern`` is ``(C, H, W)`` in [0, 1].
    """

    mask: torch.Tensor
    pattern: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        scale = _scale(x)
        m = self.mask.to(x.device, torch.float32)
        p = self.pattern.to(x.device, torch.float32)
        out = (1 - m) * (x.float() / scale) + m * p
        if x.dtype == torch.uint8:
            return (out * 255).round_().clamp_(0, 255).to(torch.uint8)
        return out.to(x.dtype)
