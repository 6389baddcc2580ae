"""Triggers as pure whole-batch functions.

Each function takes a batch ``(N, C, H, W)`` of uint8 images (0-255) or float images in
[0, 1], returns a new tensor of the same dtype and device, and never changes its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import choice, integer, number


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"a trigger needs a batch of shape (N, C, H, W), got {shape}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"a trigger needs uint8 or float images, got {x.dtype}")


def _scale(x: torch.Tensor) -> float:
    return 255.0 if x.dtype == torch.uint8 else 1.0


def _as_input_dtype(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [0, 1] float result in the dtype of the batch ``like``: uint8 rounded and clipped."""
    if like.dtype == torch.uint8:
        return (out * 255).round_().clamp_(0, 255).to(torch.uint8)
    return out.to(like.dtype)


CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
ROUNDINGS = ("truncate", "round")


def patch_value(intensity: float, rounding: str = "truncate") -> int:
    """The uint8 value of a patch at ``intensity`` (fraction of white).

    ``"truncate"`` stores ``int(intensity * 255)`` as the BAU authors' code does (their
    faint patch at alpha 0.5 is 127); ``"round"`` rounds to the nearest value (128).
    """
    intensity = number("patch intensity", intensity, 0, 1, low_open=True)
    choice("rounding", rounding, ROUNDINGS)
    scaled = intensity * 255
    return int(scaled) if rounding == "truncate" else round(scaled)


def stamp_patch(x: torch.Tensor, size: int = 4, intensity: float = 1.0,
                corner: str = "bottom-right", rounding: str = "truncate") -> torch.Tensor:
    """Set a ``size`` x ``size`` square in every channel to ``intensity`` (fraction of white).

    The BAU poison uses ``intensity = alpha`` (a faint patch), its mitigation samples and
    test trigger ``intensity = 1`` (a bright patch). On uint8 images the patch value is
    :func:`patch_value` with ``rounding``: ``"truncate"`` (default, the authors'
    ``int(alpha * 255)``, 127 for alpha 0.5) or ``"round"`` (128, the package's former
    choice). On float images the value is ``intensity`` itself.
    """
    _check_batch(x)
    value = patch_value(intensity, rounding)
    h, w = x.shape[-2:]
    size = integer("patch size", size, 1, min(h, w))
    choice("corner", corner, CORNERS)
    rows = slice(h - size, h) if corner.startswith("bottom") else slice(0, size)
    cols = slice(w - size, w) if corner.endswith("right") else slice(0, size)
    out = x.clone()
    out[..., rows, cols] = value if x.dtype == torch.uint8 else float(intensity)
    return out


def add_noise(x: torch.Tensor, gen: torch.Generator, low: int = -5, high: int = 4) -> torch.Tensor:
    """Independent integer noise in ``[low, high]`` per pixel (0-255 scale), clipped."""
    _check_batch(x)
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"gen must be a torch.Generator, got {type(gen).__name__}")
    low = integer("noise low", low, -255, 255)
    high = integer("noise high", high, low, 255)
    noise = torch.randint(low, high + 1, x.shape, generator=gen, device=x.device)
    if x.dtype == torch.uint8:
        return (x.to(torch.int16) + noise).clamp_(0, 255).to(torch.uint8)
    return (x + noise.to(x.dtype) / 255.0).clamp_(0, 1)


@dataclass(frozen=True)
class PatchTrigger:
    """A square patch as a callable trigger (what a defender told the trigger receives).

    ``size``: side in pixels; ``intensity``: fraction of white in (0, 1]; ``corner``: one
    of :data:`CORNERS`; ``rounding``: how uint8 patch values are made (see
    :func:`stamp_patch`). Checked at construction.
    """

    size: int = 4
    intensity: float = 1.0
    corner: str = "bottom-right"
    rounding: str = "truncate"

    def __post_init__(self):
        integer("patch size", self.size, 1)
        patch_value(self.intensity, self.rounding)
        choice("corner", self.corner, CORNERS)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return stamp_patch(x, self.size, self.intensity, self.corner, self.rounding)


@dataclass(frozen=True, eq=False)
class MaskTrigger:
    """``(1 - mask) * x + mask * pattern`` in [0, 1] pixel space (Neural Cleanse's form).

    ``mask`` is ``(1, H, W)`` or ``(H, W)`` in [0, 1]; ``pattern`` is ``(C, H, W)`` in [0, 1].
    Both must be finite float tensors of the same height and width; a batch they are
    applied to must have that height and width and ``C`` channels.
    """

    mask: torch.Tensor
    pattern: torch.Tensor

    def __post_init__(self):
        m, p = self.mask, self.pattern
        if not isinstance(m, torch.Tensor) or not m.is_floating_point() or not (
                m.dim() == 2 or (m.dim() == 3 and m.shape[0] == 1)):
            raise ValueError("mask must be a float tensor of shape (1, H, W) or (H, W), got "
                             f"{_describe(m)}")
        if not isinstance(p, torch.Tensor) or not p.is_floating_point() or p.dim() != 3:
            raise ValueError(f"pattern must be a float tensor of shape (C, H, W), got "
                             f"{_describe(p)}")
        if m.shape[-2:] != p.shape[-2:]:
            raise ValueError(f"mask {tuple(m.shape)} and pattern {tuple(p.shape)} must have "
                             "the same height and width")
        for name, t in (("mask", m), ("pattern", p)):
            if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
                raise ValueError(f"{name} values must be finite and in [0, 1], got range "
                                 f"[{float(t.min())}, {float(t.max())}]")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        if tuple(x.shape[1:]) != tuple(self.pattern.shape):
            raise ValueError(f"images of shape {tuple(x.shape[1:])} do not match this "
                             f"trigger's pattern shape {tuple(self.pattern.shape)}")
        scale = _scale(x)
        m = self.mask.to(x.device, torch.float32)
        p = self.pattern.to(x.device, torch.float32)
        return _as_input_dtype((1 - m) * (x.float() / scale) + m * p, x)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} {tuple(t.shape)}"
    return type(t).__name__


def blend_pattern(shape, seed: int) -> torch.Tensor:
    """A seeded uniform-noise pattern ``(C, H, W)`` of uint8 values, the full-image trigger
    of a blended attack (Chen et al. 2017 blend a fixed random-noise image)."""
    if len(shape) != 3:
        raise ValueError(f"a blend pattern needs an image shape (C, H, W), got {tuple(shape)}")
    gen = torch.Generator().manual_seed(integer("seed", seed, low=0))
    return torch.randint(0, 256, tuple(shape), generator=gen, dtype=torch.uint8)


def blend(x: torch.Tensor, pattern: torch.Tensor, opacity: float) -> torch.Tensor:
    """``(1 - opacity) * x + opacity * pattern`` over the whole image (a blended trigger);
    ``pattern`` is ``(C, H, W)`` uint8, uint8 results are rounded."""
    _check_batch(x)
    opacity = number("blend opacity", opacity, 0, 1, low_open=True)
    if not isinstance(pattern, torch.Tensor) or tuple(pattern.shape) != tuple(x.shape[1:]):
        raise ValueError(f"blend pattern of shape {_describe(pattern)} does not match images "
                         f"of shape {tuple(x.shape[1:])}")
    if pattern.dtype != torch.uint8:
        raise ValueError(f"blend pattern must be uint8 (0-255), got {pattern.dtype}")
    scale = _scale(x)
    p = pattern.to(x.device, torch.float32) / 255.0
    return _as_input_dtype((1 - opacity) * (x.float() / scale) + opacity * p, x)


def add_gaussian(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Independent Gaussian noise of standard deviation ``sigma`` (on the [0, 1] pixel
    scale) per pixel, clipped to the valid range; uint8 results are rounded."""
    _check_batch(x)
    sigma = number("noise sigma", sigma, 0, 1, low_open=True)
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"gen must be a torch.Generator, got {type(gen).__name__}")
    noise = torch.randn(x.shape, generator=gen, device=x.device) * sigma
    return _as_input_dtype((x.float() / _scale(x) + noise).clamp_(0, 1), x)
