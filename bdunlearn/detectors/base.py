"""The detector registry and what a detector sees.

A detector is a function registered under a name with :func:`register`, which declares
what it needs to see:

* ``sees="own model"``: the constituent model that trained each sample (a
  :class:`ModelView`); the engine calls it once per model with that model's samples;
* ``sees="every model"``: every constituent model (a :class:`ServiceView`);
  ``min_models`` says how many it needs (2 for a comparison across models);
* ``features=True``: the models' penultimate features (a view refuses them otherwise);
* ``unit="sample"``: ``fn(view, ids) -> one score per id``; ``unit="batch"``:
  ``fn(view, batches) -> one score per batch`` (every batch holds two ids or more).

High scores are suspicious. ``version`` is part of the key its benchmark rows are
stored under (:mod:`bdunlearn.studies.benchmark`): raise it when a change moves its
scores, and only its rows are computed again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import choice, integer
from ..train import features, predict_logits, predict_proba

REFERENCE_SIZE = 2000  # the most training samples a feature detector compares against
SEES = ("own model", "every model")
UNITS = ("sample", "batch")

_MEMO: dict | None = None


@contextmanager
def memo():
    """Within this block, each model's probabilities and features of each training sample
    are computed once (a benchmark scores the same samples under several detectors and
    populations). Only for models that do not change inside the block."""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def outputs(service, model: int, ids: np.ndarray, what: str) -> torch.Tensor:
    """``"proba"``, ``"logits"`` or ``"features"`` of the training samples ``ids`` under
    constituent model ``model`` (memoised inside :func:`memo`)."""
    net = service.models[model]
    fn = {"proba": predict_proba, "logits": predict_logits, "features": features}[what]
    if _MEMO is None:
        return fn(net, service.x[torch.from_numpy(ids)], device=service.device)
    have, rows = _MEMO.setdefault((net, what), (np.zeros(len(service.y), dtype=bool), {}))
    new = np.unique(ids[~have[ids]])
    if new.size:
        out = fn(net, service.x[torch.from_numpy(new)], device=service.device)
        rows.update(zip(new.tolist(), out))
        have[new] = True
    return torch.stack([rows[i] for i in ids.tolist()]) if len(ids) else torch.empty(0)


def reference(service, model: int) -> np.ndarray:
    """A fixed sample of up to :data:`REFERENCE_SIZE` ids model ``model`` trained on
    (``-1``: any retained id): a function of the service's state alone, so every score
    (calibration, test, deployed filter) is taken against the same reference."""
    pool = (np.flatnonzero(~service.removed) if model < 0
            else np.asarray(service.training_ids(model), dtype=np.int64))
    rng = np.random.default_rng([31, model + 1])
    return np.sort(rng.choice(pool, min(REFERENCE_SIZE, pool.size), replace=False))


class ModelView:
    """What a detector that sees one model holds: constituent model ``model`` of a fitted
    service, its outputs on training samples (by id), their claimed labels and a fixed
    reference sample of the model's own training data."""

    def __init__(self, service, model: int, detector: Detector):
        self._service, self.model, self._detector = service, int(model), detector

    @property
    def num_classes(self) -> int:
        return self._service.num_classes

    def labels(self, ids: np.ndarray) -> torch.Tensor:
        """The claimed (training) labels of ``ids``."""
        return self._service.y[torch.from_numpy(np.asarray(ids, dtype=np.int64))]

    def proba(self, ids: np.ndarray) -> torch.Tensor:
        return outputs(self._service, self.model, ids, "proba")

    def logits(self, ids: np.ndarray) -> torch.Tensor:
        return outputs(self._service, self.model, ids, "logits")

    def features(self, ids: np.ndarray) -> torch.Tensor:
        """Penultimate features; only for a detector registered with ``features=True``."""
        if not self._detector.features:
            raise ValueError(f"detector {self._detector.name!r} reads features but was "
                             "registered without features=True")
        return outputs(self._service, self.model, ids, "features")

    def reference(self) -> np.ndarray:
        """The fixed sample of this model's training ids (:func:`reference`)."""
        return reference(self._service, self.model)


class ServiceView:
    """What a detector that sees every constituent model holds: a :class:`ModelView` per
    model, the claimed labels and a fixed reference sample of any retained ids."""

    def __init__(self, service, detector: Detector):
        self._service, self._detector = service, detector

    @property
    def num_models(self) -> int:
        return self._service.num_models

    @property
    def num_classes(self) -> int:
        return self._service.num_classes

    def model(self, m: int) -> ModelView:
        return ModelView(self._service, m, self._detector)

    def labels(self, ids: np.ndarray) -> torch.Tensor:
        return self._service.y[torch.from_numpy(np.asarray(ids, dtype=np.int64))]

    def reference(self) -> np.ndarray:
        return reference(self._service, -1)


@dataclass(frozen=True)
class Detector:
    """A registered detector (see the module docstring for each field's meaning)."""

    name: str
    fn: Callable
    sees: str
    unit: str
    features: bool
    version: int
    min_models: int
    title: str
    needs: str
    benchmark: bool


REGISTRY: dict[str, Detector] = {}


def same_function(old, new) -> bool:
    """Whether ``new`` is ``old`` defined again (its module re-imported, a notebook cell run
    again): then registering it replaces the entry instead of failing as a duplicate."""
    return (getattr(old, "__module__", None) == getattr(new, "__module__", None)
            and getattr(old, "__qualname__", None) == getattr(new, "__qualname__", None))


def _needs(sees: str, features: bool, min_models: int) -> str:
    what = {("own model", False): "the model that trained the sample",
            ("own model", True): "the sample's model's features and a sample of its "
                                 "training data",
            ("every model", False): "every constituent model",
            ("every model", True): "every constituent model's features and a sample of "
                                   "training data"}[sees, features]
    return what + (f" (S >= {min_models})" if min_models > 1 else "")


def register(name: str, *, sees: str = "own model", unit: str = "sample",  # noqa: C901
             features: bool = False, version: int = 1, min_models: int = 1,
             title: str | None = None, needs: str | None = None, benchmark: bool = True):
    """Decorator adding a detector function to :data:`REGISTRY` under ``name``, with what
    it needs to see (module docstring); a name already taken by another function fails
    (the same function defined again replaces its entry). ``title`` names it in messages
    (default: the name); ``needs`` describes what it sees (default: from ``sees`` and
    ``features``); ``benchmark`` False keeps it out of notebook 07. Call it from any
    module (``docs/extending.md``)::

        from bdunlearn.detectors import register

        @register("entropy", sees="own model", version=1)
        def entropy(view, ids):
            p = view.proba(ids).double()
            return -(p * p.clamp_min(1e-12).log()).sum(1).numpy()
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a detector's name must be a word of letters, digits and "
                         f"underscores, got {name!r}")
    choice("sees", sees, SEES)
    choice("unit", unit, UNITS)
    for flag_name, value in (("features", features), ("benchmark", benchmark)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag_name} must be True or False, got {value!r}")
    version = integer("detector version", version, low=1)
    min_models = integer("min_models", min_models, low=1)
    if unit == "batch" and sees != "every model":
        raise ValueError(f"batch detector {name!r} must see every model (sees='every model'): "
                         "a batch's requests belong to several models")
    if sees == "own model" and min_models > 1:
        raise ValueError(f"detector {name!r} sees one model, so min_models must be 1, got "
                         f"{min_models}")
    for text_name, text in (("title", title), ("needs", needs)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{text_name} must be a string, got {type(text).__name__}")

    def wrap(fn):
        if not callable(fn):
            raise ValueError(f"register({name!r}) decorates a function, got "
                             f"{type(fn).__name__}")
        if name in REGISTRY and not same_function(REGISTRY[name].fn, fn):
            raise ValueError(f"a detector named {name!r} is already registered "
                             f"(version {REGISTRY[name].version}); choose another name")
        REGISTRY[name] = Detector(name, fn, sees, unit, features, version, min_models,
                                  title or name, needs or _needs(sees, features, min_models),
                                  benchmark)
        return fn
    return wrap


def names(unit: str | None = None, *, benchmark: bool | None = None) -> tuple[str, ...]:
    """The registered detectors' names in registration order, those of ``unit``
    (``"sample"`` or ``"batch"``) alone when given, and those in (or out of) the
    benchmark when ``benchmark`` is given."""
    return tuple(d.name for d in REGISTRY.values()
                 if (unit is None or d.unit == unit)
                 and (benchmark is None or d.benchmark == benchmark))


def get(name, unit: str | None = None) -> Detector:
    """The registered detector ``name`` (of ``unit`` when given); an unknown name fails
    naming the known ones."""
    allowed = names(unit)
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(allowed)}")
    return REGISTRY[name]
