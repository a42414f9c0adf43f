"""The optimizers: one module per optimizer, registered here (one line each).

A new optimizer is an :class:`Optimizer` subclass in a module of its own and one line
below; an optimizer from another package registers an instance through the
``energydsl.optimizers`` entry point group instead.
"""

from energydsl.optim import adam, bcd, sgd
from energydsl.optim.base import OPTIMIZERS, Optimizer

OPTIMIZERS.register(sgd.sgd)
OPTIMIZERS.register(adam.adam)
OPTIMIZERS.register(bcd.bcd)

__all__ = ["OPTIMIZERS", "Optimizer"]
