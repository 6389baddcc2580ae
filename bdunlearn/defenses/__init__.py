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
import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from bdunlearn import cache, checks
from bdunlearn.train import device_key, make_generator, resolve_device, synchronize
from bdunlearn.triggers import MaskTrigger


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
        checks.images_and_labels("x_clean", x, "y_clean", y)
        object.__setattr__(self, "num_classes",
                           checks.integer("num_classes", self.num_classes, low=2))
        if len(y) == 0:
            raise ValueError("x_clean holds no image; a defender needs at least one clean "
                             "image")
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
    wall time of the whole defense (a scan it reused, :func:`run_shared`, counted at the
    time it took when it ran). ``steps``: the optimiser steps it took (every
    ``step()`` of any torch optimiser during the call: trigger reversal, generator and
    statistics networks, unlearning and fine-tuning), a count of its work that does not
    depend on the processor. ``flagged``: labels flagged as backdoor targets, or
    ``None`` when the method does not detect. ``target``: the label the defense acted on
    (or ``None``). ``info``: extras such as the reversed trigger, rounds, mask norms,
    anomaly indices and the accuracies its stopping rules saw.
    """

    model: nn.Module | None
    seconds: float = 0.0
    steps: int = 0
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


def run_defense(name: str, view: DefenderView, *, seed: int = 0, cache_dir=None,
                **knobs) -> DefenseResult:
    """Run the defense ``name`` on ``view`` with ``knobs``; time it into ``seconds``.

    With a ``cache_dir`` (``"auto"``: :func:`bdunlearn.cache.default_cache_dir`) the result
    is stored under a hash of everything the defense sees (weights, clean set, trigger,
    knobs, seed, device type) in ``<cache_dir>/defenses/``, so a second call loads it
    instead of running the defense again. A loaded result keeps the seconds measured when
    it was computed and says so in ``info["from_cache"]``. Entries hold tensors and plain
    values only and are verified on load; a damaged or planted file is recomputed.
    """
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
    if cache_dir is None:
        return _remember(name, view, seed, knobs, _timed(fn, view, seed, knobs))
    root = cache.folder(cache_dir)
    path = root / "defenses" / f"{defense_key(view, name, seed, knobs)}.pt"
    with cache.lock(path):
        entry = cache.load(path)
        if entry is not None:
            try:
                return _remember(name, view, seed, knobs, _decode_result(view, *entry))
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                cache.discard(path, f"{type(err).__name__}: {err}")
        result = _timed(fn, view, seed, knobs)
        cache.keep(path, *_encode_result(result))  # a read-only cache: not stored
    return _remember(name, view, seed, knobs, result)


# Detection runs of this process by content (the latest few): notebook 03 runs Neural
# Cleanse, BAERASER and Grad-Prune on each model, and the latter two find their target
# and trigger with the very scan Neural Cleanse runs alone (:func:`run_shared`).
_SHARED: dict[str, DefenseResult] = {}
_CHARGES: list[list] = []  # per defense running now: [steps, seconds] it reused


def run_shared(name: str, view: DefenderView, *, seed: int, **knobs) -> DefenseResult:
    """The detection-only defense ``name`` run inside another defense (BAERASER's and
    Grad-Prune's Neural Cleanse scan). A run of the same content earlier in this process,
    alone (:func:`run_defense`) or inside another defense, is reused, and its recorded
    steps and seconds are charged to every defense running now, so each still reports
    the whole work it needs; the result is the one the run would give."""
    key = _shared_key(name, view, seed, knobs)
    hit = _SHARED.get(key)
    if hit is None:
        return _remember(name, view, seed, knobs, _timed(DEFENSES[name], view, seed, knobs))
    for charge in _CHARGES:
        charge[0] += hit.steps
        charge[1] += hit.seconds
    return replace(hit, info=dict(hit.info))


def _shared_key(name: str, view: DefenderView, seed: int, knobs: dict) -> str:
    """:func:`defense_key` with every knob spelled out (a default given or left out alike)."""
    params = inspect.signature(DEFENSES[name]).parameters
    full = {p: v.default for p, v in params.items() if p not in ("view", "seed")}
    return defense_key(view, name, seed, {**full, **knobs})


def _remember(name: str, view: DefenderView, seed: int, knobs: dict,
              result: DefenseResult) -> DefenseResult:
    """Keep a detection-only result (no model a caller could change) for :func:`run_shared`."""
    if result.model is None:
        if len(_SHARED) >= 8:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[_shared_key(name, view, seed, knobs)] = replace(result, info=dict(result.info))
    return result


def _timed(fn, view: DefenderView, seed: int, knobs: dict) -> DefenseResult:
    """Call the defense; record its wall time and count its optimiser steps (with the
    steps and seconds of any shared run it reused, :func:`run_shared`)."""
    steps, charge = [0], [0, 0.0]

    def count(_optimizer, _args, _kwargs):
        steps[0] += 1

    handle = register_optimizer_step_post_hook(count)
    _CHARGES.append(charge)
    start = time.perf_counter()
    try:
        result = fn(view, seed=seed, **knobs)
        synchronize(view.device)  # CUDA runs ahead of the clock
    finally:
        handle.remove()
        _CHARGES.pop()  # its own frame: calls nest (remove() could take an outer, equal one)
    result.seconds = time.perf_counter() - start + charge[1]
    result.steps = steps[0] + charge[0]
    return result


def defense_key(view: DefenderView, name: str, seed: int, knobs: dict) -> str:
    """Content hash of a defense call: what the defender holds and how the defense runs."""
    h = hashlib.sha256(json.dumps([name, seed, view.num_classes, device_key(view.device), knobs],
                                  sort_keys=True, default=repr).encode())
    for k, v in view.model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(cache.data_fingerprint(view.x_clean, view.y_clean).encode())
    if view.trigger is not None:  # a trigger is known by what it does to images
        stamped = view.trigger(view.x_clean[:8])
        h.update(type(view.trigger).__name__.encode())
        h.update(stamped.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:40]


def _encode(value, name: str, tensors: dict):
    """``value`` as JSON-able plain values; tensors (and Neural Cleanse's reversed
    trigger) go into ``tensors`` and are referred to by name."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, MaskTrigger):
        tensors[name + "/mask"], tensors[name + "/pattern"] = value.mask, value.pattern
        return {"__mask_trigger__": name}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{name}/{k}", tensors) for k, v in value.items()}
    raise ValueError(f"defense result entry {name} holds a {type(value).__name__}; a cached "
                     "result may hold numbers, strings, lists, dicts and tensors only")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__mask_trigger__" in value:
            name = value["__mask_trigger__"]
            return MaskTrigger(tensors[name + "/mask"], tensors[name + "/pattern"])
        if "__float__" in value:
            return float(value["__float__"])
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def _encode_result(result: DefenseResult) -> tuple[dict, dict]:
    tensors: dict = {}
    if result.model is not None:
        tensors.update({f"model/{k}": v for k, v in result.model.state_dict().items()})
    meta = {"has_model": result.model is not None, "seconds": result.seconds,
            "steps": result.steps,
            "flagged": _encode(result.flagged, "flagged", tensors),
            "target": _encode(result.target, "target", tensors),
            "info": _encode(result.info, "info", tensors)}
    return tensors, meta


def _decode_result(view: DefenderView, tensors: dict, meta: dict) -> DefenseResult:
    model = None
    if meta["has_model"]:
        model = view.fresh_model()
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    info = {k: _move(v, view.device) for k, v in _decode(meta["info"], tensors).items()}
    return DefenseResult(model, meta["seconds"], int(meta["steps"]),
                         _decode(meta["flagged"], tensors), _decode(meta["target"], tensors),
                         {**info, "from_cache": True})


def _move(value, device):
    """Tensors (also inside a reversed trigger) onto ``device``, as the defense made them."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, MaskTrigger):
        return MaskTrigger(value.mask.to(device), value.pattern.to(device))
    return value


from bdunlearn.defenses import baeraser, fine_pruning, finetune, grad_prune, neural_cleanse  # noqa: E402

__all__ = ["DEFENSES", "DefenderView", "DefenseResult", "register", "run_defense",
           "stratified_split", "baeraser", "fine_pruning", "finetune", "grad_prune",
           "neural_cleanse"]
