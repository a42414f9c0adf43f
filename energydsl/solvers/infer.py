"""Inference: z* = argmin_z E(x, z) with the parameters frozen.

FISTA (or ISTA) splits the energy into its smooth part in z, differentiated by
autograd, and its nonsmooth part (l1, group-l2, z ≥ 0), handled by the exact prox
of their sum.  All samples of a batch are solved at once, each with its own step
size and momentum; nothing runs in Python per sample.

Overlapping pools (topographic windows) are solved differently.  Their group
prox has no closed form: FISTA would solve its dual by an inner iteration at
every step (:class:`~energydsl.pools.GroupNorms`), hundreds of inner iterations
per step when each unit lies in many pools.  So when the nonsmooth part is one
group term over overlapping or weighted pools (with l1 terms and z ≥ 0 beside
it) and the smooth part is quadratic with one Hessian H for the whole batch (a
reconstruction), ``fista(steps, tol)`` solves the whole problem by ADMM instead
(:func:`admm`, a primal–dual method): with the split y = Az, s = z each iteration
is one product with the precomputed (H + ρ(AᵀA + I))⁻¹ (AᵀA is diagonal) and
closed-form block soft-thresholds, no inner loop.  ADMM converges to the
optimum of the same convex energy (Boyd et al. 2011, §3.2); each sample stops
when its primal and dual residuals are at most ``tol`` relative to their
scales, after at most ``steps`` iterations, and its code takes its exact zeros
from the pools the split sets to zero.  On the topographic spec (256 units, each
in 25 Gaussian windows) ADMM solves a batch about 150 times faster than FISTA
with the dual prox at the same tol, and 90 times faster at a tenth of it, where
its mean energy is within 1e-5 of the optimum (``benchmarks/topographic.py``).
ISTA (inhibition terms) and laminar pools (blocks, subtrees: a closed-form prox)
keep proximal gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from energydsl.errors import NumericalError
from energydsl.ops.pools import GroupNorms, soft_threshold
from energydsl.terms import BoundTerm

# Power iteration is exact for the top eigenvalue only in the limit; the step
# 1/(SAFETY·L) keeps FISTA stable when the estimate falls a little short.
POWER_ITERATIONS = 100
SAFETY = 1.05
# ADMM for overlapping group terms (see :func:`admm`): the penalty ρ relative to the
# mean diagonal of the Hessian and the over-relaxation (both tuned on the topographic
# spec: fewest iterations), and the finest relative residual each float type resolves.
ADMM_RHO = 2.0
ADMM_RELAX = 1.6
ADMM_FINEST_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CURVATURE_NOT_FINITE = "the smooth terms' curvature is not finite (a parameter has grown too large)"


@dataclass(frozen=True)
class Problem:
    """One batch of composite problems min_z smooth(z) + nonsmooth(z)."""

    smooth: Callable[[torch.Tensor], torch.Tensor]  # (B, m) -> (B,)
    # (v, step (B, 1), point the gradient was taken at) -> z
    prox: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    quadratic: bool  # smooth part at most quadratic: constant step, no line search
    curvature: float = 0.0  # added to the smooth part's L (majorise-minimise terms)
    # the smooth part's L per sample (B, 1), when the caller has estimated it (large latents:
    # see energydsl/stepsize.py); None: FISTA finds it itself
    lipschitz: torch.Tensor | None = None


def make_prox(parts: Sequence[tuple[BoundTerm, tuple]], nonneg: bool):
    """The exact prox of Σ weightᵢ·termᵢ (+ the indicator of z ≥ 0), and its extra curvature.

    ``parts`` pairs each nonsmooth term with the values of its arguments after the
    first (e.g. the matrix S of an inhibition term).  Non-negativity is applied
    first (exact for these absolute norms); the separable terms (l1, inhibition)
    add up to one per-unit threshold; a group term then takes that threshold into
    its own exact prox.
    """
    separable = [(t, args) for t, args in parts if t.term.prox_kind == "separable"]
    groups = [t for t, _ in parts if t.term.prox_kind == "group"]
    curvature = sum(t.weight * t.term.curvature(*args) for t, args in separable)
    return ExactProx(separable, groups[0] if groups else None, nonneg), float(curvature)


class ExactProx:
    """prox(v, step, at): the exact prox of step·(the nonsmooth terms), see :func:`make_prox`."""

    def __init__(self, separable: list[tuple[BoundTerm, tuple]], group: BoundTerm | None, nonneg: bool):
        self.separable, self.group, self.nonneg = separable, group, nonneg

    def __call__(self, v: torch.Tensor, step: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        if self.nonneg:
            v = v.clamp(min=0)
        thresholds = None
        for term, args in self.separable:
            threshold = step * term.weight * term.term.threshold(at, *args)
            thresholds = threshold if thresholds is None else thresholds + threshold
        if self.group is not None:
            v = self.group.term.prox(v, step * self.group.weight, thresholds)
            return v.clamp(min=0) if self.nonneg else v  # removes the dual solver's rounding below 0
        if thresholds is None:
            return v
        return soft_threshold(v, thresholds)

    def l1_weight(self) -> float | None:
        """λ when the nonsmooth part is λ‖z‖₁ (the l1 terms' weights summed), else None."""
        if not all(term.term.lasso for term, _ in self.separable):
            return None
        return float(sum(term.weight for term, _ in self.separable))

    def at_fixed_step(self, step: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """v ↦ prox(v) for one step size, when no threshold depends on the point (l1 terms,
        a group term); None otherwise (inhibition).  For l1 alone (+ z ≥ 0) the
        soft-threshold takes two passes over memory: v − clamp(v, −θ, θ), or max(v − θ, 0)."""
        lam = self.l1_weight()
        if lam is None:
            return None
        theta = step * lam
        if self.group is None and self.nonneg:
            return lambda v: v.sub_(theta).clamp_(min=0)
        if self.group is None:
            return lambda v: soft_threshold(v, theta, inplace=True)
        return lambda v: self(v, torch.full((v.shape[0], 1), step, dtype=v.dtype, device=v.device), v)

    def splitting(self) -> Splitting | None:
        """The nonsmooth part as :func:`admm` takes it: one group term whose prox needs
        the dual solve (overlapping or weighted pools), beside l1 terms only."""
        if self.group is None or self.group.term.norms.levels is not None:
            return None
        if not all(term.term.lasso for term, _ in self.separable):
            return None
        return Splitting(self.group.term.norms, self.group.weight,
                         sum(term.weight for term, _ in self.separable), self.nonneg)  # fmt: skip


@dataclass(frozen=True)
class Splitting:
    """λ Σⱼ‖Aⱼz‖ + μ‖z‖₁ (+ the indicator of z ≥ 0), Aⱼ picking pool j's weighted units."""

    norms: GroupNorms
    group_weight: float  # λ
    l1_weight: float  # μ
    nonneg: bool


def smooth_and_grad(problem: Problem, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        energy = problem.smooth(z)
        if not energy.requires_grad:  # the smooth part does not depend on z
            return energy.detach(), torch.zeros_like(z)
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad


def lipschitz(problem: Problem, z: torch.Tensor, iterations: int = POWER_ITERATIONS) -> torch.Tensor:
    """Per-sample largest eigenvalue of the Hessian of the smooth part at z, ``(B, 1)``.

    Power iteration on Hessian-vector products (double backward), all samples at
    once: the samples' problems are independent, so the batch Hessian is block
    diagonal and each block is iterated with its own vector.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(z.shape, generator=generator).to(z)
    v = v / v.norm(dim=1, keepdim=True)
    norm = z.new_zeros(z.shape[0], 1)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        energy = problem.smooth(z)
        if not energy.requires_grad:
            return norm
        (grad,) = torch.autograd.grad(energy.sum(), z, create_graph=True)
        if not grad.requires_grad:  # linear in z: the Hessian is zero
            return norm
        for _ in range(iterations):
            (hv,) = torch.autograd.grad(grad, z, grad_outputs=v, retain_graph=True)
            norm = hv.norm(dim=1, keepdim=True)
            v = hv / norm.clamp_min(1e-30)
    return norm.detach()


def affine_gradient(problem: Problem, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(H, c) with ∇smooth(z) = c + z H for every sample, when the Hessian H is shared.

    A quadratic smooth part such as ½‖x − Wz‖² has gradient c_b + H z_b with
    H = WᵀW the same for all samples.  Then one (B, m) @ (m, m) product replaces
    a forward and backward pass per iteration.  H is read off the batch itself —
    sample b evaluated at the unit vector e_(b mod m) gives column b mod m — and
    the result is verified at a random point; if the samples' Hessians differ
    (the check fails) the caller falls back to autograd.
    """
    batch, m = z.shape
    _, c = smooth_and_grad(problem, torch.zeros_like(z))
    H = z.new_zeros(m, m)
    eye = torch.eye(m, dtype=z.dtype, device=z.device)
    for first in range(0, m, batch):
        columns = torch.arange(first, min(first + batch, m), device=z.device)
        rows = torch.arange(batch, device=z.device) % len(columns)
        _, g = smooth_and_grad(problem, eye[columns[rows]])
        H[:, columns[: min(batch, len(columns))]] = (g - c)[: len(columns)].T
    H = (H + H.T) / 2
    generator = torch.Generator(device="cpu").manual_seed(1)
    probe = torch.randn(z.shape, generator=generator).to(z)
    _, g = smooth_and_grad(problem, probe)
    predicted = torch.addmm(c, probe, H)
    if (g - predicted).norm() > 1e-4 * (g.norm() + c.norm() + 1e-30):
        return None
    return H, c


def largest_eigenvalue(H: torch.Tensor) -> torch.Tensor:
    """λ_max of a symmetric matrix: exact below a few thousand units, else power iteration."""
    if not bool(H.isfinite().all()):
        return H.new_tensor(math.inf)
    if H.shape[0] <= 2048:
        return torch.linalg.eigvalsh(H.double())[-1].to(H.dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)  # deterministic: resumed runs match
    v = torch.randn(H.shape[0], generator=generator, dtype=H.dtype).to(H.device)
    for _ in range(100):
        v = H @ v
        v = v / v.norm().clamp_min(1e-30)
    return (v @ H @ v) * SAFETY


def _admm_if_overlapping(problem: Problem, z: torch.Tensor, steps: int, tol: float, accelerate: bool):
    """The problem solved by :func:`admm` where the module docstring says so, else None."""
    split = problem.prox.splitting() if isinstance(problem.prox, ExactProx) else None
    if split is None or not problem.quadratic or not accelerate or problem.lipschitz is not None:
        return None
    with _one_cpu_thread(z.device):
        affine = affine_gradient(problem, z)
        if affine is None or not bool(affine[0].isfinite().all()):
            return None  # FISTA takes it (and reports a curvature that is not finite)
        return admm(*affine, split, z, steps, max(tol, ADMM_FINEST_TOL.get(z.dtype, 1e-5)))


def admm(H: torch.Tensor, c: torch.Tensor, split: Splitting, z0: torch.Tensor, steps: int, tol: float) -> torch.Tensor:
    """min_z ½zHzᵀ + c·z + λΣⱼ‖Aⱼz‖ + μ‖z‖₁ (+ z ≥ 0) for every sample (row) at once.

    ADMM on the split y = Az, s = z (Boyd et al. 2011, §3, with over-relaxation):
    the z-step solves (H + ρ(AᵀA + I)) z = ρ(Aᵀ(y − u) + s − w) − c with one
    matrix product (AᵀA is diagonal: each slot of A holds one unit), the y-step
    is a block soft-threshold per pool (the copies yⱼ do not overlap) and the
    s-step a soft-threshold.  A sample leaves the batch once its primal and dual
    residuals are at most ``tol`` relative to their scales (Boyd's test, §3.3.1),
    so the cost follows the typical sample, not the slowest; none runs more than
    ``steps`` iterations.  The result is s with the support that the pool copies
    give: a unit is 0 where one of its pools is, as at the optimum (‖Aⱼz‖ = 0
    forces every unit of pool j to 0), so the code is exactly sparse.
    """
    norms = split.norms
    rho = ADMM_RHO * float(H.diagonal().mean().clamp_min(1e-12))  # the scale of the curvature
    system = (H + rho * torch.diag(norms.unit_weight.to(H) + 1)).double()
    K = torch.cholesky_inverse(torch.linalg.cholesky(system)).to(H)
    s = z0.clamp(min=0) if split.nonneg else z0
    y = norms.slots(s)
    u, w = torch.zeros_like(y), torch.zeros_like(s)
    rows = torch.arange(s.shape[0], device=s.device)  # the samples still iterating
    result_s, result_y = torch.empty_like(s), torch.empty_like(y)
    floors = None
    for k in range(steps):
        z = (rho * (norms.units(y - u) + s - w) - c) @ K
        Az = norms.slots(z)
        Az_relaxed = ADMM_RELAX * Az + (1 - ADMM_RELAX) * y
        z_relaxed = ADMM_RELAX * z + (1 - ADMM_RELAX) * s
        y_next = norms.shrink_slots(Az_relaxed + u, split.group_weight / rho)
        s_next = z_relaxed + w
        if split.l1_weight:
            s_next = soft_threshold(s_next, split.l1_weight / rho)
        if split.nonneg:
            s_next = s_next.clamp(min=0)
        u = u + Az_relaxed - y_next
        w = w + z_relaxed - s_next
        if k % 10 == 9 or k == steps - 1:
            primal, dual, primal_scale, dual_scale = _admm_residuals(norms, rho, (z, Az), (s, y), (s_next, y_next),
                                                                     (w, u))  # fmt: skip
            # a sample whose optimum is 0 has scales that go to 0 with its residuals: it is
            # measured against the batch's scales instead (taken once, as samples leave)
            floors = floors or (0.1 * float(primal_scale.mean()), 0.1 * float(dual_scale.mean()))
            done = (primal <= tol * primal_scale.clamp_min(floors[0])) & (dual <= tol * dual_scale.clamp_min(floors[1]))
            if k == steps - 1:
                done[:] = True
            result_s[rows[done]], result_y[rows[done]] = s_next[done], y_next[done]
            keep = ~done
            rows, c, s_next, y_next, u, w = rows[keep], c[keep], s_next[keep], y_next[keep], u[keep], w[keep]
            if rows.numel() == 0:
                break
        y, s = y_next, s_next
    return _zero_outside_active_pools(norms, result_s, result_y)


def _zero_outside_active_pools(norms: GroupNorms, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """s, with 0 for every unit in a pool whose copy yⱼ is 0."""
    zero_pools = (norms.pool_norms(y) == 0).to(y.dtype)
    in_zero_pool = norms.units(zero_pools.repeat_interleave(norms.width, dim=1)) > 0
    return torch.where(in_zero_pool, torch.zeros_like(s), s)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run ADMM's many small operations on one CPU thread.  On a CPU shared with
    other work, every parallel region waits for a descheduled thread, a whole time
    slice (4–16 ms measured on 2 shared cores, against 0.1–0.7 ms for the operation
    itself): an epoch that takes 20 s alone took 20 times longer.  One thread is
    at most 2× slower on an idle CPU and never stalls."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _admm_residuals(norms: GroupNorms, rho: float, primal, previous, split, multipliers):
    """Per sample: ‖r‖, ‖d‖ and their scales max(‖(Az, z)‖, ‖(y, s)‖) and ‖ρ(Aᵀu + w)‖,
    with r = (Az − y, z − s) and d = ρ(Aᵀ(y − y_prev) + s − s_prev) (Boyd et al., §3.3)."""
    (z, Az), (s_prev, y_prev), (s, y), (w, u) = primal, previous, split, multipliers

    def norm(*parts):
        return torch.sqrt(sum((p * p).sum(1) for p in parts))

    return (norm(Az - y, z - s), rho * norm(norms.units(y - y_prev) + s - s_prev),
            torch.maximum(norm(Az, z), norm(y, s)), rho * norm(norms.units(u) + w))  # fmt: skip


def fista(problem: Problem, z0: torch.Tensor, steps: int, tol: float, accelerate: bool = True) -> torch.Tensor:
    """FISTA with gradient-based adaptive restart (O'Donoghue & Candès 2015).

    Stops when every sample's step ‖z_{k+1} − z_k‖ is at most ``tol·‖z_{k+1}‖``.
    A quadratic smooth part with a shared Hessian uses its Gram matrix; another
    quadratic one a power-iteration step size; a non-quadratic one backtracks
    each sample's own L.  A group term over overlapping pools hands the whole
    problem to :func:`admm` instead (see the module docstring).
    """
    z = z0.detach()
    solved = _admm_if_overlapping(problem, z, steps, tol, accelerate)
    if solved is not None:
        return solved
    y = z
    t = z.new_ones(z.shape[0], 1)
    # a caller that gives L (code maps, energydsl/stepsize.py) has too many units for a dense Gram matrix
    affine = affine_gradient(problem, z) if problem.quadratic and problem.lipschitz is None else None
    if affine is not None:
        H, c = affine
        L = largest_eigenvalue(H).expand(z.shape[0], 1)
    else:
        L = problem.lipschitz if problem.lipschitz is not None else lipschitz(problem, z) * SAFETY
    L = (L + problem.curvature).clamp_min(1e-12)
    if not bool(L.isfinite().all()):
        raise NumericalError(CURVATURE_NOT_FINITE)
    if affine is not None and isinstance(problem.prox, ExactProx):
        prox = problem.prox.at_fixed_step(1 / float(L[0, 0]))
        if prox is not None:
            return _fista_affine(H, c, float(L[0, 0]), prox, z, steps, tol, accelerate)
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
        converged = tol > 0 and k % 5 == 4 and bool(((z_next - z).norm(dim=1) <= tol * z_next.norm(dim=1)).all())
        z = z_next
        if converged:
            break
    return z


def lars(problem: Problem, z: torch.Tensor) -> torch.Tensor:
    """The exact lasso codes by homotopy (:mod:`energydsl.homotopy`), for a quadratic smooth
    part with one Hessian for the batch and l1 terms (+ z ≥ 0), as the compiler checked.

    A sample whose path cycles (degenerate dictionaries; not seen in practice) is
    finished by FISTA from the path's last point, to the finest float tolerance.
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
    if not bool(finished.all()):
        L = float(largest_eigenvalue(H)) * SAFETY
        rest = ~finished
        z[rest] = _fista_affine(H, c[rest], L, problem.prox.at_fixed_step(1 / L), z[rest], 20_000,
                                ADMM_FINEST_TOL.get(z.dtype, 1e-5), accelerate=True)  # fmt: skip
    return z


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
    """
    step = 1 / L
    M = torch.eye(H.shape[0], dtype=z.dtype, device=z.device).sub_(H, alpha=step)
    rows, result = torch.arange(z.shape[0], device=z.device), torch.empty_like(z)
    shift = c * -step
    y, t = z.clone(), z.new_ones(z.shape[0], 1)  # y is updated in place below; z is the caller's
    for k in range(steps):
        z_next = prox(torch.addmm(shift, y, M))
        difference = z_next - z
        if accelerate:
            restart = torch.linalg.vecdot(y.sub_(z_next), difference).unsqueeze(1) > 0  # y is not needed again
            t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            momentum = torch.where(restart, 0.0, (t - 1) / t_next)
            t = torch.where(restart, 1.0, t_next)
            y = torch.addcmul(z_next, momentum, difference)
        else:
            y = z_next
        z = z_next
        if tol > 0 and k % 5 == 4:
            done = difference.norm(dim=1) <= tol * z.norm(dim=1)
            result[rows[done]] = z[done]
            keep = ~done
            rows, z, y, t, shift = rows[keep], z[keep], y[keep], t[keep], shift[keep]
            if rows.numel() == 0:
                return result
    result[rows] = z
    return result


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
