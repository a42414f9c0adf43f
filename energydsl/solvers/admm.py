"""ADMM for a group term over overlapping or weighted pools beside a quadratic smooth part.

Overlapping pools (topographic windows) are solved differently.  Their group
prox has no closed form: FISTA would solve its dual by an inner iteration at
every step (:class:`~energydsl.ops.pools.GroupNorms`), hundreds of inner iterations
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
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from energydsl.ops.pools import GroupNorms, soft_threshold
from energydsl.solvers.problem import Problem, affine_gradient
from energydsl.solvers.prox import ExactProx, Splitting

# The penalty ρ relative to the mean diagonal of the Hessian and the over-relaxation (both
# tuned on the topographic spec: fewest iterations), and the finest relative residual each
# float type resolves.
ADMM_RHO = 2.0
ADMM_RELAX = 1.6
ADMM_FINEST_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _admm_if_overlapping(problem: Problem, z: torch.Tensor, steps: int, tol: float, accelerate: bool):
    """The problem solved by :func:`admm` where the module docstring says so (as :func:`admm_report`
    gives it, and the tolerance it ran to), else None."""
    split = problem.prox.splitting() if isinstance(problem.prox, ExactProx) else None
    if split is None or not problem.quadratic or not accelerate or problem.lipschitz is not None:
        return None
    with _one_cpu_thread(z.device):
        affine = affine_gradient(problem, z)
        if affine is None or not bool(affine[0].isfinite().all()):
            return None  # FISTA takes it (and reports a curvature that is not finite)
        finest = max(tol, ADMM_FINEST_TOL.get(z.dtype, 1e-5))
        z, capped, residual = admm_report(*affine, split, z, steps, finest)
        if tol <= 0:  # exactly ``steps`` iterations asked for: none is capped
            capped = torch.zeros_like(capped)
        return z, capped, residual, finest


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
    :func:`admm_report` also says which samples stopped at ``steps`` before ``tol``.
    """
    return admm_report(H, c, split, z0, steps, tol)[0]


def admm_report(H: torch.Tensor, c: torch.Tensor, split: Splitting, z0: torch.Tensor, steps: int, tol: float):
    """:func:`admm`'s code, which samples stopped at ``steps`` before ``tol`` (B,), and each
    sample's last measured relative residual, the larger of the primal and the dual (B,)."""
    norms = split.norms
    rho = ADMM_RHO * float(H.diagonal().mean().clamp_min(1e-12))  # the scale of the curvature
    system = (H + rho * torch.diag(norms.unit_weight.to(H) + 1)).double()
    K = torch.cholesky_inverse(torch.linalg.cholesky(system)).to(H)
    s = z0.clamp(min=0) if split.nonneg else z0
    y = norms.slots(s)
    u, w = torch.zeros_like(y), torch.zeros_like(s)
    rows = torch.arange(s.shape[0], device=s.device)  # the samples still iterating
    result_s, result_y = torch.empty_like(s), torch.empty_like(y)
    capped, last = torch.zeros(s.shape[0], dtype=torch.bool, device=s.device), s.new_zeros(s.shape[0])
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
            primal_scale, dual_scale = primal_scale.clamp_min(floors[0]), dual_scale.clamp_min(floors[1])
            done = (primal <= tol * primal_scale) & (dual <= tol * dual_scale)
            if k == steps - 1:
                capped[rows[~done]] = True
                done[:] = True
            leaving = rows[done]
            result_s[leaving], result_y[leaving] = s_next[done], y_next[done]
            last[leaving] = torch.maximum(_relative(primal[done], primal_scale[done]),
                                          _relative(dual[done], dual_scale[done]))  # fmt: skip
            keep = ~done
            rows, c, s_next, y_next, u, w = rows[keep], c[keep], s_next[keep], y_next[keep], u[keep], w[keep]
            if rows.numel() == 0:
                break
        y, s = y_next, s_next
    return _zero_outside_active_pools(norms, result_s, result_y), capped, last


def _relative(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A residual relative to its scale (0 where it is 0)."""
    return torch.where(residual > 0, residual / scale, 0.0)


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
