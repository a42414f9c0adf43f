"""One batch of inference problems, and what every solver reads off it.

A :class:`Problem` splits the energy into its smooth part in z, differentiated by
autograd, and the exact prox of its nonsmooth part (see :mod:`energydsl.solvers.prox`).
All samples of a batch are solved at once, each with its own step size; nothing runs
in Python per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Power iteration is exact for the top eigenvalue only in the limit; the step
# 1/(SAFETY·L) keeps FISTA stable when the estimate falls a little short.
POWER_ITERATIONS = 100
SAFETY = 1.05
FLOAT64 = 8  # bytes
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
    nonsmooth: Callable[[torch.Tensor], torch.Tensor] | None = None  # (B, m) -> (B,): the nonsmooth part's energy
    # why no duality gap bounds a code's distance to the optimum (solvers/certificate.py); None: one does
    uncertified: str | None = "the problem was built without its nonsmooth energy"


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
