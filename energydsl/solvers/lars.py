"""The exact lasso codes by homotopy (LARS-lasso)."""

from __future__ import annotations

import torch

from energydsl.errors import NumericalError, SpecError
from energydsl.solvers.admm import ADMM_FINEST_TOL
from energydsl.solvers.base import Batch, Convergence, Solver
from energydsl.solvers.fista import _fista_affine
from energydsl.solvers.problem import (
    CURVATURE_NOT_FINITE,
    FLOAT64,
    SAFETY,
    Problem,
    affine_gradient,
    top_eigenvalue,
)
from energydsl.solvers.stepsize import DENSE_GRAM_MAX_UNITS


def lars(problem: Problem, z: torch.Tensor) -> torch.Tensor:
    """The exact lasso codes (:func:`lars_report` without the report)."""
    return lars_report(problem, z)[0]


def lars_report(problem: Problem, z: torch.Tensor) -> tuple[torch.Tensor, Convergence | None]:
    """The exact lasso codes by homotopy (:mod:`energydsl.ops.homotopy`), for a quadratic smooth
    part with one Hessian for the batch and l1 terms (+ z ≥ 0), as the compiler checked.

    A sample whose path cycles (degenerate dictionaries; not seen in practice) is
    finished by FISTA from the path's last point, to the finest float tolerance; the
    :class:`Convergence` says how that ended (None when no sample needed it).
    """
    affine = affine_gradient(problem, z)
    if affine is None:
        raise NumericalError("lars needs the smooth terms to share one Hessian across the samples of a batch, "
                             "and here they do not: infer by fista(...)")  # fmt: skip
    H, c = affine
    if not bool(H.isfinite().all()):
        raise NumericalError(CURVATURE_NOT_FINITE)
    from energydsl.ops.homotopy import lasso_homotopy  # numba's import takes 0.2 s, and only lars needs it

    lam = problem.prox.l1_weight()
    z, finished = lasso_homotopy(H, c, lam, problem.prox.nonneg)
    if bool(finished.all()):
        return z, None
    L = float(top_eigenvalue(problem, H)) * SAFETY
    rest, steps, tol = ~finished, 20_000, ADMM_FINEST_TOL.get(z.dtype, 1e-5)
    capped, last = torch.zeros_like(finished, dtype=torch.bool), z.new_zeros(z.shape[0])
    z[rest], capped[rest], last[rest] = _fista_affine(H, c[rest], L, problem.prox.at_fixed_step(1 / L), z[rest],
                                                      steps, tol, accelerate=True)  # fmt: skip
    return z, Convergence("lars (its FISTA fallback)", capped, last, steps, tol)


class Lars(Solver):
    """lars solves ½zHzᵀ + c·z + λ‖z‖₁ (+ z ≥ 0): quadratic smooth terms, l1 terms of the latent."""

    name = "lars"
    description = ("The exact lasso solution by homotopy (LARS-lasso), one Cholesky update per atom that joins or "
                   "leaves the active set; for l1 terms (and z >= 0) beside a reconstruction, no options")
    options = ()
    exact = True
    gram = True
    summary = "LARS-lasso homotopy"

    def check_place(self, node, position, previous):
        if position > 0:
            raise SpecError("lars follows the lasso path from z = 0, so nothing can start it", node.span,
                            hint="write 'by lars' alone, or 'by encoder then fista(...)'")  # fmt: skip
        if node.args or node.kwargs:
            raise SpecError("lars is exact, so it takes no options (no steps, no tol)",
                            (node.args or node.kwargs)[0].span, hint="write 'by lars'")  # fmt: skip

    def check(self, terms, latent, nonneg, span):
        if latent.shape[0] > DENSE_GRAM_MAX_UNITS:
            raise SpecError(f"lars needs the dense Gram matrix of the latent, but it has {latent.shape[0]:,} units "
                            f"(at most {DENSE_GRAM_MAX_UNITS:,})", span, hint="infer by fista(...)")  # fmt: skip
        l1_terms = 0
        for term in terms:
            if term.degree == 0:
                continue
            if term.term.smooth and not term.quadratic:
                raise SpecError(f"lars needs every smooth term to be quadratic in '{latent.name}', "
                                f"and '{term.name}' is not", term.span, hint="infer by fista(...)")  # fmt: skip
            if not term.term.smooth:
                if not term.term.lasso or term.first_arg != latent.name:
                    raise SpecError(f"lars solves l1 penalties of '{latent.name}' only, not '{term.name}'",
                                    term.span, hint="infer by fista(...)")  # fmt: skip
                if term.unit_weights is not None:
                    raise SpecError(f"lars follows one l1 weight for every unit, and '{term.name}' weighs each "
                                    "unit on its own", term.span, hint="infer by fista(...)")  # fmt: skip
                l1_terms += 1
        if l1_terms == 0:
            raise SpecError(f"lars follows the lasso path down to the l1 weight, but no term is l1({latent.name})",
                            span, hint="infer by fista(...)")  # fmt: skip

    def explain_term(self, term, latent):
        if term.term.smooth:
            return f"smooth, quadratic in {latent}: its Gram matrix H and linear part enter the homotopy"
        return "nonsmooth: the l1 penalty whose solution path the homotopy follows exactly"

    def explain(self, latent, terms, nonneg, options):
        lam = " + ".join(t.weight_text() for t in terms if not t.term.smooth)
        if not any(t.varying for t in terms):
            lam = f"{sum(t.weight for t in terms if not t.term.smooth):g}"
        path = (f"LARS-lasso homotopy: the exact solution path from {latent} = 0 (where the penalty is max|c|) down "
                f"to λ = {lam}, one step per unit that joins or leaves the active set, each a solve with the "
                "active block of H through a Cholesky factor updated in place; float64, in numba kernels on "
                "the CPU, samples shared among threads; exact, so it has no steps or tol")  # fmt: skip
        smooth = ", ".join(t.name for t in terms if t.term.smooth)
        lines = [path, f"½{latent}H{latent}ᵀ + c·{latent} from: {smooth} (H read off the energy once while the "
                 "parameters are unchanged, kept across batches and checked on each)"]  # fmt: skip
        if nonneg:
            lines.append(f"{latent} ≥ 0: units join the path only with positive coefficients")
        return lines

    def solve(self, batch: Batch, z, steps, tol):
        z, convergence = lars_report(batch.problem(), batch.start(z))
        if convergence is not None:
            batch.report(convergence)
        return z

    def memory(self, units, size):
        m = units
        # H read off the energy (as the Gram path reads it); the homotopy's copy of H, and one
        # m × m Cholesky workspace per thread (energydsl/ops/homotopy.py)
        return {"gram": 3 * m * m * size + m * m * size + torch.get_num_threads() * m * m * FLOAT64}
