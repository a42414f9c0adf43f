"""ISTA: proximal gradient without momentum, so every step lowers the energy."""

from __future__ import annotations

from energydsl.solvers.base import Batch, Solver
from energydsl.solvers.fista import fista_report
from energydsl.solvers.prox import check_proximable


class Ista(Solver):
    name = "ista"
    description = "Proximal gradient without momentum: every step lowers the energy, as inhibition terms need"
    uses_prox = True
    options = ("steps", "tol", "gap")
    summary = "ISTA: proximal gradient steps, no momentum (each step lowers the energy)"

    def check(self, terms, latent, nonneg, span):
        check_proximable(terms, latent, nonneg, accelerated=False)

    def solve(self, batch: Batch, z, steps, tol):
        z, convergence = fista_report(batch.problem(), batch.start(z), steps, tol, accelerate=False, gap=batch.gap)
        batch.report(convergence)
        return z
