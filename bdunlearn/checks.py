"""Input checks shared by the user-facing functions.

Each check returns the value in its plain Python type or raises ``ValueError`` with one
sentence naming the argument, the offending value and what is allowed. Integers stay
integers: a float or a bool where an integer is meant is refused, never truncated.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f" between {low} and {high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (bounds optional, inclusive)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} {value!r} must be an integer{_range_text(low, high)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} {value!r} must be an integer{_range_text(low, high)}")
    return value


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` within the given bounds (closed unless ``*_open``)."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    if low is not None and high is not None:
        allowed = f"in {lo}{hi}"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low}"
    elif high is not None:
        allowed = f"a finite number {'<' if high_open else '<='} {high}"
    else:
        allowed = "a finite number"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} must be {allowed}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} {value!r} must be {allowed}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} {value!r} must be {allowed}")
    return value


def request_steps(name: str, value) -> int | tuple[int, ...]:
    """A number of equal request batches (an integer >= 1), or the cumulative request
    counts after each batch: a non-empty, strictly increasing list of integers >= 1."""
    if not isinstance(value, (list, tuple)):
        return integer(name, value, 1)
    counts = [integer(f"{name} count", c, 1) for c in value]
    if not counts or counts != sorted(set(counts)):
        raise ValueError(f"{name} {list(value)!r} must be a non-empty increasing list of "
                         "cumulative request counts")
    return tuple(counts)


def choice(name: str, value, options) -> str:
    """``value`` if it is one of ``options`` (strings)."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")
    return value


def flag(name: str, value) -> bool:
    """``value`` if it is a bool (``True``/``False``, not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} {value!r} must be True or False")
    return value


def images_and_labels(x_name: str, x, y_name: str, y) -> None:
    """``x`` must be uint8 images ``(N, C, H, W)`` and ``y`` a 1-d tensor with one label
    per image; raises ``ValueError`` naming the argument otherwise."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"{x_name} must be a uint8 tensor of images (N, C, H, W), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{y_name} must be a 1-d tensor with one label per image ({len(x)})")
