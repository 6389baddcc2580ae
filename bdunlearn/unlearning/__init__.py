"""Unlearning services behind one interface (:class:`UnlearningService`).

:class:`SisaService` retrains (exact unlearning is SISA with one shard);
:class:`AmnesiacService` subtracts recorded updates and fine-tunes briefly.
"""

from .amnesiac import AmnesiacService
from .base import RequestCost, UnlearningService
from .sisa import SisaService

__all__ = ["AmnesiacService", "RequestCost", "SisaService", "UnlearningService"]
