"""Backdoor defenses behind one boundary and one registry.

A defense sees only a :class:`DefenderView`: a private copy of the model, a small clean
set, the number of classes, the trigger where the method's own paper assumes it is
known, and the device. Nothing else can be reached from it (no attack manifest, no
evaluation trigger), so no stopping rule can leak test-set information.

Every defense is a function ``defense(view, *, seed, **knobs) -> DefenseResult``
registered under a name; call it through :func:`run_defense`, which checks the name and
the knobs and times the call::

    view = DefenderView(model, x_clean, y_clean, num_classes=10, device="cpu")
    result = run_defense("neural_cleanse", view, seed=0)
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from bdunlearn.train import make_generator, resolve_device


@dataclass(frozen=True, slots=True)
class DefenderView:
    """What a defender holds, and nothing more.

    ``model``: deep-copied at construction (and put in eval mode on ``device``), so a
    defense can never change the caller's model. ``x_clean``: uint8 images
    ``(N, C, H, W)``; ``y_clean``: their int64 labels. ``num_classes``: number of labels.
    ``trigger``: a callable on image batches, only for methods whose paper assumes the
    trigger is known (Grad-Prune's paper setting), else ``None``. ``device``: where the
    defense runs (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    """

    model: nn.Module
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    num_classes: int
    trigger: Callable | None = None
    device: torch.device | str = "cpu"

    def __post_init__(self):
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        x, y = self.x_clean, self.y_clean
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError("x_clean must be a uint8 tensor of shape (N, C, H, W), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"y_clean must be a 1-d tensor with one label per image ({len(x)})")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes {self.num_classes!r} must be an integer >= 2")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"y_clean holds labels outside 0..{self.num_classes - 1}")
        if self.trigger is not None and not callable(self.trigger):
            raise ValueError(f"trigger must be callable or None, got {type(self.trigger).__name__}")
        dev = resolve_device(self.device)
        object.__setattr__(self, "device", dev)
        object.__setattr__(self, "model", copy.deepcopy(self.model).to(dev).eval())
        object.__setattr__(self, "x_clean", x.to(dev))
        object.__setattr__(self, "y_clean", y.to(dev, torch.int64))

    def fresh_model(self) -> nn.Module:
        """A deep copy of the view's model for a defense to change (the view stays intact,
        so several defenses can run on one view)."""
        return copy.deepcopy(self.model)

    def split(self, fraction: float, seed: int):
        """Split the clean set class-stratified into ``(x_a, y_a), (x_b, y_b)``.

        ``fraction`` of every class (rounded, at least one sample when the class has two
        or more) goes to the second part, which defenses use as validation data.
        """
        return stratified_split(self.x_clean, self.y_clean, fraction, seed)


def stratified_split(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """``(x_a, y_a), (x_b, y_b)`` with ``fraction`` of each class in part ``b``."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction {fraction} must be strictly between 0 and 1")
    gen = make_generator(seed)
    first, second = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y.cpu() == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) > 1 else 0
        second.append(idx[:k])
        first.append(idx[k:])
    a = torch.cat(first).sort().values.to(x.device)
    b = torch.cat(second).sort().values.to(x.device)
    return (x[a], y[a]), (x[b], y[b])


@dataclass
class DefenseResult:
    """What a defense hands back.

    ``model``: the mitigated model, or ``None`` for a detection-only run. ``seconds``:
    wall time of the whole defense. ``flagged``: labels flagged as backdoor targets, or
    ``None`` when the method does not detect. ``target``: the label the defense acted on
    (or ``None``). ``info``: extras such as the reversed trigger, rounds, mask norms,
    anomaly indices and the accuracies its stopping rules saw.
    """

    model: nn.Module | None
    seconds: float = 0.0
    flagged: list[int] | None = None
    target: int | None = None
    info: dict = field(default_factory=dict)


DEFENSES: dict[str, Callable[..., DefenseResult]] = {}


def register(name: str):
    """Decorator adding a defense function to :data:`DEFENSES` under ``name``."""
    def wrap(fn):
        if name in DEFENSES:
            raise ValueError(f"a defense named {name!r} is already registered")
        DEFENSES[name] = fn
        return fn
    return wrap


def run_defense(name: str, view: DefenderView, *, seed: int = 0, **knobs) -> DefenseResult:
    """Run the defense ``name`` on ``view`` with ``knobs``; time it into ``seconds``."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {', '.join(sorted(DEFENSES))}")
    if not isinstance(view, DefenderView):
        raise ValueError(f"a defense needs a DefenderView, got {type(view).__name__}")
    fn = DEFENSES[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("view", "seed")]
    bad = sorted(set(knobs) - set(allowed))
    if bad:
        raise ValueError(f"unknown knob(s) {', '.join(bad)} for defense {name!r}; "
                         f"allowed: {', '.join(allowed)}")
    start = time.perf_counter()
    result = fn(view, seed=seed, **knobs)
    result.seconds = time.perf_counter() - start
    return result


from bdunlearn.defenses import (baeraser, fine_pruning, finetune, grad_prune,  # noqa: E402
                                neural_cleanse)

__all__ = ["DEFENSES", "DefenderView", "DefenseResult", "register", "run_defense",
           "stratified_split", "baeraser", "fine_pruning", "finetune", "grad_prune",
           "neural_cleanse"]
