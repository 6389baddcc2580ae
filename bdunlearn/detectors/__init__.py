"""Request detectors, one module each, found through one registry (:mod:`.base`).

Built in: model uncertainty (:mod:`.mu`) and sub-model similarity (:mod:`.sms`), BAU's
two; the loss of the claimed label (:mod:`.loss`); feature-space neighbours (:mod:`.knn`);
one batch-level test (:mod:`.batch`). :mod:`bdunlearn.detect` is the engine that scores
requests with any of them, sets thresholds and builds filters. A detector of one's own
is registered from any module (``docs/extending.md``)::

    from bdunlearn.detectors import register

    @register("entropy", sees="own model")
    def entropy(view, ids):
        p = view.proba(ids).double()
        return -(p * p.clamp_min(1e-12).log()).sum(1).numpy()
"""

# isort: off
from .base import (REGISTRY, SEES, UNITS, Detector, ModelView, ServiceView, get, memo, names,
                   register)
from . import mu, sms, loss, knn, batch  # noqa: F401  (the built-ins, registered in this order)
# isort: on

__all__ = ["REGISTRY", "SEES", "UNITS", "Detector", "ModelView", "ServiceView", "get", "memo",
           "names", "register", "mu", "sms", "loss", "knn", "batch"]
