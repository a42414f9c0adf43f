"""Inference: z* = argmin_z E(x, z) with the parameters frozen.

FISTA (or ISTA) splits the energy into its smooth part in z, differentiated by
autograd, and its nonsmooth part (l1, group-l2, z ≥ 0), handled by the exact prox
of their sum.  All samples of a batch are solved at once, each with its own step
size and momentum; nothing runs in Python per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .compile import BoundTerm
from .errors import NumericalError
from .terms import GroupTerm, SeparableTerm

# Power iteration is exact for the top eigenvalue only in the limit; the step
# 1/(SAFETY·L) keeps FISTA stable when the estimate falls a little short.
POWER_ITERATIONS = 100
SAFETY = 1.05


@dataclass(frozen=True)
class Problem:
    """One batch of composite problems min_z smooth(z) + nonsmooth(z)."""

    smooth: Callable[[torch.Tensor], torch.Tensor]  # (B, m) -> (B,)
    # (v, step (B, 1), point the gradient was taken at) -> z
    prox: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    quadratic: bool  # smooth part at most quadratic: constant step, no line search
    curvature: float = 0.0  # added to the smooth part's L (majorise-minimise terms)


def make_prox(parts: Sequence[tuple[BoundTerm, tuple]], nonneg: bool):
    """The exact prox of Σ weightᵢ·termᵢ (+ the indicator of z ≥ 0), and its extra curvature.

    ``parts`` pairs each nonsmooth term with the values of its arguments after the
    first (e.g. the matrix S of an inhibition term).  Non-negativity is applied
    first (exact for these absolute norms); the separable terms (l1, inhibition)
    add up to one per-unit threshold; a group term then takes that threshold into
    its own exact prox.
    """
    separable = [(t, args) for t, args in parts if isinstance(t.term, SeparableTerm)]
    groups = [(t, args) for t, args in parts if isinstance(t.term, GroupTerm)]
    group = groups[0][0] if groups else None

    def prox(v: torch.Tensor, step: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        if nonneg:
            v = v.clamp(min=0)
        l1 = None
        for term, args in separable:
            threshold = step * term.weight * term.term.threshold(at, *args)
            l1 = threshold if l1 is None else l1 + threshold
        if group is not None:
            v = group.term.prox(v, step * group.weight, l1)
            return v.clamp(min=0) if nonneg else v  # removes the dual solver's rounding below 0
        if l1 is None:
            return v
        return torch.sign(v) * torch.clamp(v.abs() - l1, min=0)

    curvature = sum(t.weight * t.term.curvature(*args) for t, args in separable)
    return prox, float(curvature)


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


def fista(problem: Problem, z0: torch.Tensor, steps: int, tol: float, accelerate: bool = True) -> torch.Tensor:
    """FISTA with gradient-based adaptive restart (O'Donoghue & Candès 2015).

    Stops when every sample's step ‖z_{k+1} − z_k‖ is at most ``tol·‖z_{k+1}‖``.
    A quadratic smooth part with a shared Hessian uses its Gram matrix; another
    quadratic one a power-iteration step size; a non-quadratic one backtracks
    each sample's own L.
    """
    z = z0.detach()
    y = z
    t = z.new_ones(z.shape[0], 1)
    affine = affine_gradient(problem, z) if problem.quadratic else None
    if affine is not None:
        H, c = affine
        L = largest_eigenvalue(H).expand(z.shape[0], 1)
    else:
        L = lipschitz(problem, z) * SAFETY
    L = (L + problem.curvature).clamp_min(1e-12)
    if not bool(L.isfinite().all()):
        raise NumericalError("the smooth terms' curvature is not finite (a parameter has grown too large)")
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
