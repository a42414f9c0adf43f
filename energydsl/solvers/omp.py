"""The best k-sparse codes of a least-squares energy, greedily: orthogonal matching pursuit."""

from __future__ import annotations

from energydsl.errors import NumericalError, SpecError
from energydsl.ops.pursuit import block_bytes, omp_gram
from energydsl.solvers.base import Batch, Solver
from energydsl.solvers.problem import CURVATURE_NOT_FINITE, FLOAT64, affine_gradient
from energydsl.solvers.stepsize import DENSE_GRAM_MAX_UNITS


class Omp(Solver):
    """omp minimises ½zHzᵀ + c·z (the active smooth terms, all quadratic, one H for the batch)
    over codes with at most k nonzeros (nonnegative ones when the latent is), by orthogonal
    matching pursuit on H and −c (:mod:`energydsl.ops.pursuit`).  For the reconstruction
    ½‖x − Dz‖², H = DᵀD and −c = Dᵀx: Batch-OMP's Gram matrix and correlations.  The
    k-sparse problem is NP-hard; OMP's codes are good ones, not certified optima."""

    name = "omp"
    description = ("Orthogonal matching pursuit: a k-sparse code of the smooth terms' least squares (quadratic, as a "
                   "reconstruction), one atom a step with the code refitted on its support (nonnegative when the "
                   "latent is); greedy, so not certified optimal; k (required) is the most nonzeros per sample")
    options = ("k",)
    gram = True
    summary = "orthogonal matching pursuit"

    def check_place(self, node, position, previous):
        if position > 0:
            raise SpecError("omp builds each code from z = 0, so nothing can start it", node.span,
                            hint="write 'by omp(k = ...)' alone")  # fmt: skip

    def check_options(self, options, spans, latent, span):
        if "k" not in options:
            raise SpecError("omp needs k, the most nonzeros per sample", span, hint="write 'by omp(k = ...)'")
        k, units = options["k"], latent.shape[0]
        if k != int(k) or k < 1:
            raise SpecError(f"omp's k must be a whole number >= 1, got {k:g}", spans["k"])
        if k > units:
            raise SpecError(f"omp's k is {k:g}, more than the {units:,} units of '{latent.name}'", spans["k"],
                            hint=f"at most k = {units}")  # fmt: skip

    def check(self, terms, latent, nonneg, span):
        if latent.shape[0] > DENSE_GRAM_MAX_UNITS:
            raise SpecError(f"omp needs the dense Gram matrix of the latent, but it has {latent.shape[0]:,} units "
                            f"(at most {DENSE_GRAM_MAX_UNITS:,})", span, hint="infer by fista(...)")  # fmt: skip
        for term in terms:
            if term.degree == 0:
                continue
            if not term.term.smooth:
                leave_out = f"'infer {latent.name} by omp(k = ...) terms ...'"
                raise SpecError(f"omp solves the k-sparse least squares of the smooth terms, so it takes no "
                                f"penalty on '{latent.name}' such as '{term.name}'", term.span,
                                hint=f"remove the term, or leave it out: {leave_out}")  # fmt: skip
            if not term.quadratic:
                raise SpecError(f"omp needs every smooth term to be quadratic in '{latent.name}', "
                                f"and '{term.name}' is not", term.span, hint="infer by fista(...)")  # fmt: skip

    def explain_term(self, term, latent):
        return f"smooth, quadratic in {latent}: its Gram matrix H and linear part enter the pursuit"

    def explain(self, latent, terms, nonneg, options):
        k = int(options["k"])
        pursuit = (f"Orthogonal matching pursuit (Batch-OMP on H and −c): from {latent} = 0 until the support "
                   f"holds {k} units, each step adding the unit whose column of H is most correlated with the "
                   "residual (normalised by its own curvature) and refitting the code on the support by least "
                   "squares through a Cholesky factor grown by one row; float64, all samples at once; a sample "
                   "stops early when no unit can lower its energy; greedy, so its codes are good k-sparse ones, "
                   "not certified optimal")  # fmt: skip
        smooth = ", ".join(t.name for t in terms if t.term.smooth)
        lines = [pursuit, f"½{latent}H{latent}ᵀ + c·{latent} from: {smooth} (H read off the energy once while the "
                 "parameters are unchanged, kept across batches and checked on each)"]  # fmt: skip
        if nonneg:
            lines.append(f"{latent} ≥ 0: units join with positive correlations only; a unit whose coefficient "
                         "would turn negative leaves the support (Lawson–Hanson)")  # fmt: skip
        return lines

    def solve(self, batch: Batch, z, steps, tol, k):
        problem = batch.problem()
        z = batch.start(None)
        affine = affine_gradient(problem, z)
        if affine is None:
            raise NumericalError("omp needs the smooth terms to share one Hessian across the samples of a batch, "
                                 "and here they do not: infer by fista(...)")  # fmt: skip
        H, c = affine
        if not bool(H.isfinite().all()):
            raise NumericalError(CURVATURE_NOT_FINITE)
        return omp_gram(H, -c, int(k), problem.prox.nonneg)

    def memory(self, units, size, k=1):
        m = units
        # H read off the energy (as the Gram path reads it) and its float64 copy; one block's
        # pursuit state (energydsl/ops/pursuit.py)
        return {"gram": 3 * m * m * size + m * m * FLOAT64, "pursuit": block_bytes(m, int(k))}
