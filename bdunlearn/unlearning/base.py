"""What every unlearning service offers, and the request handling they share.

A service trains one or more models on ``x`` (uint8 images) and ``y`` with sample ids
``0..N-1`` and serves unlearning requests for some of those ids. :meth:`unlearn` is
transactional: a subclass computes the new state aside (:meth:`_prepare`) and the base
class commits it at the end, so a request either completes (removed flags, served
models, request log, refused list all updated) or raises and leaves the service exactly
as it was, also on ``KeyboardInterrupt`` and on a cache that cannot be written.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import checks

AGGREGATIONS = ("vote", "mean")


@dataclass
class RequestCost:
    """What serving one request cost.

    ``slices_retrained``, ``sample_epochs`` and ``seconds`` count the training the request
    needs, including work an earlier run already did and left in the cache (its recorded
    training time is counted), so the figures do not depend on the cache.
    ``cache_hits`` says how many of the needed results were found in the cache;
    ``wall_seconds`` is what this call took.
    """

    requested: int
    refused: int
    shards_retrained: int
    slices_retrained: int
    sample_epochs: int
    seconds: float
    cache_hits: int = 0
    wall_seconds: float = 0.0


def sample_ids(ids, n: int, *, what: str = "sample id") -> np.ndarray:
    """``ids`` as an int64 array of distinct ids in ``0..n-1``; one sentence otherwise.

    Refused: booleans, floats and other non-integer values, negative or too large ids,
    and an id named twice.
    """
    arr = np.atleast_1d(np.asarray(ids))
    if arr.dtype == bool or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what}s {ids!r} must be integers (not {arr.dtype}) "
                         f"between 0 and {n - 1}")
    if arr.ndim != 1:
        raise ValueError(f"{what}s must be a flat list of integers, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise ValueError(f"unknown {what} {int(bad[0])}: ids run from 0 to {n - 1}")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"a request names the same {what} twice")
    return arr


class UnlearningService(ABC):
    """The interface of an unlearning service and the request handling it shares.

    Attributes every service has: ``x``, ``y``, ``num_classes``, ``device``, ``shards``
    (number of constituent models; 1 for a single-model service), ``removed`` (bool per
    id), ``log`` (one :class:`RequestCost` per request), ``refused`` (ids the ``screen``
    refused), ``requestable`` (bool per id, or ``None`` for every id) and ``screen`` (a
    request filter ``screen(service, ids) -> bool mask`` of ids to refuse, or ``None``).
    """

    #: why an id outside ``requestable`` cannot be unlearned (completes "sample id N ...")
    not_requestable = "is not one of the requester's own samples, so it cannot be unlearned"

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    device: torch.device
    shards: int
    aggregation: str = "vote"

    def _setup(self, x, y, num_classes, requestable, screen) -> None:
        """Check and store what every service holds; called by the subclasses' ``__init__``."""
        checks.images_and_labels("x", x, "y", y)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 2:
            raise ValueError(f"num_classes {num_classes!r} must be an integer >= 2")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels run from {int(y.min())} to {int(y.max())}, outside "
                             f"0..{num_classes - 1} for num_classes {num_classes}")
        if screen is not None and not callable(screen):
            raise ValueError(f"screen must be callable or None, got {type(screen).__name__}")
        self.x, self.y, self.num_classes = x, y, int(num_classes)
        self.screen = screen
        self.removed = np.zeros(len(y), dtype=bool)
        self.requestable = None
        if requestable is not None:
            self.requestable = np.zeros(len(y), dtype=bool)
            self.requestable[sample_ids(requestable, len(y))] = True
        self.log: list[RequestCost] = []
        self.refused: list[int] = []

    # ------------------------------------------------------------------ the interface
    @property
    @abstractmethod
    def models(self) -> list:
        """The served models (``None`` entries before :meth:`fit`)."""

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def fitted(self) -> bool:
        return all(m is not None for m in self.models)

    @abstractmethod
    def fit(self) -> UnlearningService:
        """Train (or load from the cache) every model; sets ``fit_cost``."""

    @abstractmethod
    def model_of(self, ids) -> np.ndarray:
        """Index of the model that trained each id (int array)."""

    @abstractmethod
    def training_ids(self, model_index: int) -> np.ndarray:
        """The ids the current model ``model_index`` was trained on."""

    @abstractmethod
    def _prepare(self, accepted: np.ndarray, cost: RequestCost) -> Callable[[], None]:
        """Compute the service's state once ``accepted`` ids are removed, without changing
        the service; fill ``cost``; return a function that installs the new models."""

    # ------------------------------------------------------------------ requests
    def _as_ids(self, ids, check_state: bool = True) -> np.ndarray:
        arr = sample_ids(ids, len(self.y))
        if check_state:
            if arr.size == 0:
                raise ValueError("an unlearning request must name at least one sample id")
            gone = arr[self.removed[arr]]
            if gone.size:
                raise ValueError(f"sample id {int(gone[0])} was already unlearned")
            if self.requestable is not None:
                foreign = arr[~self.requestable[arr]]
                if foreign.size:
                    raise ValueError(f"sample id {int(foreign[0])} {self.not_requestable}")
        return arr

    def unlearn(self, ids) -> RequestCost:
        """Remove ``ids`` from every model; all or nothing.

        Invalid ids change nothing. Ids the ``screen`` flags are refused: they stay in the
        training set and are recorded in :attr:`refused`. If anything fails while the new
        models are computed (training error, cache error, ``KeyboardInterrupt``), the
        error propagates and the service is exactly as before the call.
        """
        if not self.fitted:
            raise RuntimeError("call fit() before serving unlearning requests")
        arr = self._as_ids(ids)
        start = time.perf_counter()
        refused = np.zeros(len(arr), dtype=bool)
        if self.screen is not None:
            flags = np.asarray(self.screen(self, arr))
            if flags.shape != arr.shape:
                raise ValueError(f"the screen returned {flags.size} flags for a request of "
                                 f"{arr.size} ids; it must return one bool per id")
            refused = flags.astype(bool)
        accepted = arr[~refused]
        cost = RequestCost(len(arr), int(refused.sum()), 0, 0, 0, 0.0)
        install = self._prepare(accepted, cost) if accepted.size else (lambda: None)
        cost.wall_seconds = time.perf_counter() - start
        install()  # the commit: plain assignments that cannot fail
        self.removed[accepted] = True
        self.refused.extend(int(i) for i in arr[refused])
        self.log.append(cost)
        return cost

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of every served model, ``(models, N, classes)``."""

    def _aggregation(self, aggregation) -> str:
        agg = self.aggregation if aggregation is None else aggregation
        if agg not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {agg!r}; use 'vote' or 'mean'")
        return agg

    def predict_proba(self, x: torch.Tensor, aggregation: str | None = None) -> torch.Tensor:
        """Aggregated scores: vote shares (``"vote"``) or mean softmax (``"mean"``)."""
        agg = self._aggregation(aggregation)
        probs = self.member_proba(x)
        if agg == "mean":
            return probs.mean(0)
        return torch.nn.functional.one_hot(probs.argmax(2), self.num_classes).float().mean(0)

    def predict(self, x: torch.Tensor, aggregation: str | None = None) -> torch.Tensor:
        """Labels; votes are tied by mean softmax, then by the lower label."""
        agg = self._aggregation(aggregation)
        probs = self.member_proba(x)
        if agg == "mean" or len(probs) == 1:
            return probs.mean(0).argmax(1)
        votes = torch.nn.functional.one_hot(probs.argmax(2), self.num_classes).float().sum(0)
        return (votes + 0.5 * probs.mean(0)).argmax(1)
