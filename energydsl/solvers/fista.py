"""FISTA and its building blocks: proximal gradient with momentum and adaptive restart."""

from __future__ import annotations

import math

import torch

from energydsl.errors import NumericalError
from energydsl.solvers.admm import _admm_if_overlapping
from energydsl.solvers.base import Batch, Convergence, Solver
from energydsl.solvers.certificate import GAP_EVERY, AffineGap, certify
from energydsl.solvers.problem import (
    CURVATURE_NOT_FINITE,
    SAFETY,
    Problem,
    affine_gradient,
    lipschitz,
    smooth_and_grad,
    top_eigenvalue,
)
from energydsl.solvers.prox import ExactProx, check_proximable


def fista(problem: Problem, z0: torch.Tensor, steps: int, tol: float, accelerate: bool = True,
          gap: float = 0.0) -> torch.Tensor:  # fmt: skip
    """FISTA with gradient-based adaptive restart (O'Donoghue & Candès 2015).

    Stops when every sample's step ‖z_{k+1} − z_k‖ is at most ``tol·‖z_{k+1}‖``; or, with ``gap`` > 0,
    when every sample's duality gap is at most ``gap`` times its energy, a certified distance to the
    optimum (:mod:`energydsl.solvers.certificate`, measured every :data:`GAP_EVERY` iterations).
    A quadratic smooth part with a shared Hessian uses its Gram matrix; another
    quadratic one a power-iteration step size; a non-quadratic one backtracks
    each sample's own L.  A group term over overlapping pools hands the whole
    problem to :func:`admm` instead (see the module docstring).  :func:`fista_report`
    also says which samples stopped at ``steps`` before ``tol``.
    """
    return fista_report(problem, z0, steps, tol, accelerate, gap)[0]


def fista_report(problem: Problem, z0: torch.Tensor, steps: int, tol: float,
                 accelerate: bool = True, gap: float = 0.0) -> tuple[torch.Tensor, Convergence]:  # fmt: skip
    """:func:`fista`'s code, and how it ended on each sample (:class:`Convergence`)."""
    method = "fista" if accelerate else "ista"
    z = z0.detach()
    if gap > 0 and problem.uncertified is not None:
        raise ValueError(f"no duality gap to stop on: {problem.uncertified}")
    solved = _admm_if_overlapping(problem, z, steps, 0.0 if gap > 0 else tol, accelerate)
    if solved is not None:
        z, capped, residual, admm_tol = solved
        if gap > 0:  # ADMM ran to its finest residual: the certificate says how close that came
            relative = certify(problem, z).relative
            return z, Convergence(f"{method} (by ADMM)", relative > gap, relative, steps, gap, "gap")
        return z, Convergence(f"{method} (by ADMM)", capped, residual, steps, admm_tol)
    y = z
    t = z.new_ones(z.shape[0], 1)
    # a caller that gives L (code maps, energydsl/stepsize.py) has too many units for a dense Gram matrix
    affine = affine_gradient(problem, z) if problem.quadratic and problem.lipschitz is None else None
    if affine is not None:
        H, c = affine
        L = top_eigenvalue(problem, H).expand(z.shape[0], 1)
    else:
        L = problem.lipschitz if problem.lipschitz is not None else lipschitz(problem, z) * SAFETY
    L = (L + problem.curvature).clamp_min(1e-12)
    if not bool(L.isfinite().all()):
        raise NumericalError(CURVATURE_NOT_FINITE)
    if affine is not None and isinstance(problem.prox, ExactProx):
        prox = problem.prox.at_fixed_step(1 / float(L[0, 0]))
        if prox is not None:
            if gap > 0:
                z, capped, relative = _fista_affine_to_gap(H, c, float(L[0, 0]), prox, z, steps,
                                                           AffineGap(problem, H, c), gap, accelerate)  # fmt: skip
                return z, Convergence(method, capped, relative, steps, gap, "gap")
            z, capped, step = _fista_affine(H, c, float(L[0, 0]), prox, z, steps, tol, accelerate)
            return z, Convergence(method, capped, step, steps, tol)
    previous = z
    for k in range(steps):
        if affine is not None:
            grad = torch.addmm(c, y, H)
        else:
            f_y, grad = smooth_and_grad(problem, y)
        z_next = problem.prox(y - grad / L, 1 / L, y)
        if not problem.quadratic:
            z_next, L = _backtrack(problem, y, f_y, grad, z_next, L)
        if accelerate:
            restart = ((y - z_next) * (z_next - z)).sum(dim=1, keepdim=True) > 0
            t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
            t = torch.where(restart, torch.ones_like(t), t_next)
            y = z_next + momentum * (z_next - z)
        else:
            y = z_next
        if gap > 0:
            converged = k % GAP_EVERY == GAP_EVERY - 1 and bool((certify(problem, z_next).relative <= gap).all())
        else:
            converged = tol > 0 and k % 5 == 4 and bool(((z_next - z).norm(dim=1) <= tol * z_next.norm(dim=1)).all())
        previous, z = z, z_next
        if converged:
            break
    if gap > 0:
        relative = certify(problem, z).relative
        return z, Convergence(method, relative > gap, relative, steps, gap, "gap")
    moved, norm = (z - previous).flatten(1).norm(dim=1), z.flatten(1).norm(dim=1)  # the last step, once
    return z, Convergence(method, _capped(moved, norm, tol), _relative(moved, norm), steps, tol)


def _relative(moved: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Each sample's step relative to its code (0 where it did not move)."""
    return torch.where(moved > 0, moved / norm, 0.0)


def _capped(moved: torch.Tensor, norm: torch.Tensor, tol: float) -> torch.Tensor:
    """The samples whose last step was above ``tol`` relative to their code: capped, unless
    ``tol`` is 0 (exactly ``steps`` iterations asked for)."""
    return moved > tol * norm if tol > 0 else torch.zeros_like(moved, dtype=torch.bool)


def _fista_affine(H, c, L: float, prox, z, steps: int, tol: float, accelerate: bool):
    """:func:`fista` for ½zHzᵀ + c·z + a nonsmooth part whose prox at step 1/L is ``prox``
    (the lasso, the group lasso), faster in two ways.

    - Each iteration is one matrix product, the prox and four elementwise passes over
      the (B, m) arrays, not a dozen: the gradient step is folded into the product,
      v = y(I − H/L) − c/L, and the lasso's soft-threshold is two passes (see
      :meth:`ExactProx.at_fixed_step`).  On small problems the elementwise passes, not
      the product, are what an iteration costs (``benchmarks/inference.py``).
    - Each sample leaves the batch as soon as its own step is at most ``tol`` relative
      to its code, so the cost follows the typical sample, not the slowest.

    Returns the codes, which samples stopped at ``steps`` before ``tol`` (B,) and each
    sample's last measured relative step (B,).
    """
    step = 1 / L
    M = torch.eye(H.shape[0], dtype=z.dtype, device=z.device).sub_(H, alpha=step)
    rows, result = torch.arange(z.shape[0], device=z.device), torch.empty_like(z)
    last = z.new_zeros(z.shape[0])  # each sample's last measured relative step
    measured = (z.new_zeros(z.shape[0]), z.new_ones(z.shape[0]))  # the last step's (‖step‖, ‖z‖): none yet
    shift = c * -step
    y, t = z.clone(), z.new_ones(z.shape[0], 1)  # y is updated in place below; z is the caller's
    for k in range(steps):
        z_next = prox(torch.addmm(shift, y, M))
        difference = z_next - z
        y, t = _momentum(y, z_next, difference, t) if accelerate else (z_next, t)
        z = z_next
        measured = None
        if tol > 0 and k % 5 == 4:
            moved, norm = difference.norm(dim=1), z.norm(dim=1)
            done = moved <= tol * norm
            leaving = rows[done]
            result[leaving] = z[done]
            last[leaving] = _relative(moved[done], norm[done])
            keep = ~done
            rows, z, y, t, shift = rows[keep], z[keep], y[keep], t[keep], shift[keep]
            if rows.numel() == 0:
                return result, torch.zeros_like(last, dtype=torch.bool), last
            measured = moved[keep], norm[keep]
    moved, norm = measured if measured is not None else (difference.norm(dim=1), z.norm(dim=1))
    result[rows] = z
    last[rows] = _relative(moved, norm)
    capped = torch.zeros_like(last, dtype=torch.bool)
    capped[rows] = _capped(moved, norm, tol)
    return result, capped, last


def _momentum(y, z_next, difference, t):
    """FISTA's next point and t, with the adaptive restart (O'Donoghue & Candès) per sample; y, the
    previous point, is overwritten (it is not needed again)."""
    restart = torch.linalg.vecdot(y.sub_(z_next), difference).unsqueeze(1) > 0
    t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
    momentum = torch.where(restart, 0.0, (t - 1) / t_next)
    return torch.addcmul(z_next, momentum, difference), torch.where(restart, 1.0, t_next)


def _fista_affine_to_gap(H, c, L: float, prox, z, steps: int, certificate: AffineGap, target: float,
                         accelerate: bool):  # fmt: skip
    """:func:`_fista_affine` with a certified stopping rule: each sample leaves once its relative duality gap
    is at most ``target``.  The iteration is the same; only the test differs (see :func:`_fista_affine`)."""
    step = 1 / L
    M = torch.eye(H.shape[0], dtype=z.dtype, device=z.device).sub_(H, alpha=step)
    rows, result = torch.arange(z.shape[0], device=z.device), torch.empty_like(z)
    last = z.new_full((z.shape[0],), math.inf)
    shift = c * -step
    y, t = z.clone(), z.new_ones(z.shape[0], 1)
    for k in range(steps):
        z_next = prox(torch.addmm(shift, y, M))
        y, t = _momentum(y, z_next, z_next - z, t) if accelerate else (z_next, t)
        z = z_next
        if k % GAP_EVERY == GAP_EVERY - 1 or k == steps - 1:
            relative = certificate.relative(z, rows)
            done = relative <= target
            last[rows] = relative.to(last.dtype)
            result[rows[done]] = z[done]
            keep = ~done
            rows, z, y, t, shift = rows[keep], z[keep], y[keep], t[keep], shift[keep]
            if rows.numel() == 0:
                break
    result[rows] = z
    return result, last > target, last


def _backtrack(problem, y, f_y, grad, z_next, L):
    """Double L where the quadratic upper bound fails, until it holds everywhere."""
    for _ in range(60):
        d = z_next - y
        bound = f_y + (grad * d).sum(dim=1) + 0.5 * L.squeeze(1) * (d * d).sum(dim=1)
        with torch.no_grad():
            f_next = problem.smooth(z_next)
        ok = f_next <= bound + 8 * torch.finfo(f_y.dtype).eps * f_y.abs().clamp_min(1)  # rounding slack
        if bool(ok.all()):
            break
        L = torch.where(ok.unsqueeze(1), L, 2 * L)
        z_next = problem.prox(y - grad / L, 1 / L, y)
    return z_next, L


class Fista(Solver):
    name = "fista"
    description = ("Proximal gradient with momentum and adaptive restart, through the exact prox of the nonsmooth "
                   "terms; stops when every sample's step is at most tol times its code's norm, or, with gap, when "
                   "its duality gap (a certified bound on its distance to the optimal energy) is at most gap times "
                   "its energy")
    uses_prox = True
    options = ("steps", "tol", "gap")
    summary = "FISTA: proximal gradient steps with momentum and adaptive restart"

    def check(self, terms, latent, nonneg, span):
        check_proximable(terms, latent, nonneg, accelerated=True)

    def solve(self, batch: Batch, z, steps, tol):
        z, convergence = fista_report(batch.problem(), batch.start(z), steps, tol, accelerate=True, gap=batch.gap)
        batch.report(convergence)
        return z
