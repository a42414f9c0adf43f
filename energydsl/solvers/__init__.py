"""Inference: z* = argmin_z E(x, z) with the parameters frozen, or the spec's encoder.

One module per method, registered here (one line each); a method from another package
registers through the ``energydsl.solvers`` entry point group.
"""

from energydsl.solvers.base import SOLVERS, Batch, Convergence, Solver
from energydsl.solvers.encoder import Encoder
from energydsl.solvers.fista import Fista
from energydsl.solvers.ista import Ista
from energydsl.solvers.lars import Lars
from energydsl.solvers.omp import Omp
from energydsl.solvers.problem import Problem

SOLVERS.register(Fista())
SOLVERS.register(Ista())
SOLVERS.register(Lars())
SOLVERS.register(Omp())
SOLVERS.register(Encoder())

__all__ = ["SOLVERS", "Batch", "Convergence", "Problem", "Solver"]
