"""The optimizer registry: the config's `recovery.optimizer` choices -> slot optimizers.

Kept apart from optim.py (the shared slot loop and stopping rules) so that the methods import the base
and the registry imports the methods, with no loop between them.
"""

from __future__ import annotations

from .first_order import SGD, Adam
from .lbfgs import LBFGS
from .optim import Evaluate, SlotOptimizer

OPTIMIZERS: dict[str, type[SlotOptimizer]] = {"lbfgs": LBFGS, "adam": Adam, "sgd": SGD}


def make_optimizer(method: str, evaluate: Evaluate, dim: int, **options) -> SlotOptimizer:
    """The slot optimizer registered under `method` (the config's recovery.optimizer)."""
    return OPTIMIZERS[method](evaluate, dim, **options)
