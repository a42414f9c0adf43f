"""One batch of inference problems, and what every solver reads off it.

A :class:`Problem` splits the energy into its smooth part in z, differentiated by
autograd, and the exact prox of its nonsmooth part (see :mod:`energydsl.solvers.prox`).
All samples of a batch are solved at once, each with its own step size; nothing runs
in Python per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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
    # where the Hessian of a quadratic smooth part is kept across batches (see GramCache); None: read every call
    gram: CachedGram | None = None


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
    a forward and backward pass per iteration.  c is the gradient at z = 0; H comes
    from the problem's :class:`CachedGram` when its parameters are unchanged, else it is
    read off the batch (:func:`read_hessian`).  Either way it is verified at a random
    point, on every call: a Hessian that depends on the samples (a batch of one passes
    the check whatever its H) or on a scheduled weight fails it on the next batch,
    which then reads H afresh.  If the samples' Hessians differ the caller falls back
    to autograd (None).
    """
    _, c = smooth_and_grad(problem, torch.zeros_like(z))
    gram = problem.gram
    kept = gram.hessian() if gram is not None else None
    if kept is not None and _verified(problem, kept, c):
        return kept, c
    H = read_hessian(problem, z, c)
    if not _verified(problem, H, c):
        return None
    if gram is not None:
        gram.keep(H)
    return H, c


def read_hessian(problem: Problem, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The Hessian H (m, m) of a quadratic smooth part, read off the batch: sample b evaluated at the
    unit vector e_(b mod m) gives column b mod m of H (the gradient there, less c), ⌈m / B⌉ passes."""
    batch, m = z.shape
    H = z.new_zeros(m, m)
    eye = torch.eye(m, dtype=z.dtype, device=z.device)
    for first in range(0, m, batch):
        columns = torch.arange(first, min(first + batch, m), device=z.device)
        rows = torch.arange(batch, device=z.device) % len(columns)
        _, g = smooth_and_grad(problem, eye[columns[rows]])
        H[:, columns[: min(batch, len(columns))]] = (g - c)[: len(columns)].T
    return (H + H.T) / 2


def _verified(problem: Problem, H: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether ∇smooth = c + zH at a random point (one gradient pass).  A curvature that is not finite
    passes: the solvers report it as such, not as Hessians that differ."""
    generator = torch.Generator(device="cpu").manual_seed(1)
    probe = torch.randn(c.shape, generator=generator).to(c)
    _, g = smooth_and_grad(problem, probe)
    predicted = torch.addmm(c, probe, H)
    return not bool((g - predicted).norm() > 1e-4 * (g.norm() + c.norm() + 1e-30))


def top_eigenvalue(problem: Problem, H: torch.Tensor) -> torch.Tensor:
    """:func:`largest_eigenvalue` of the H that :func:`affine_gradient` gave for ``problem``: computed
    once per parameter state where the problem keeps H across batches."""
    return problem.gram.largest_eigenvalue(H) if problem.gram is not None else largest_eigenvalue(H)


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


class Stamp:
    """What identifies the values of some tensors without reading them: each one's identity, address
    and version counter (with its dtype, device, shape and strides).

    PyTorch bumps a tensor's version counter on every in-place write, with or without autograd
    (optimizer steps, ``project_``, ``load_state_dict``'s copies, ``p.copy_(...)``), and a new value
    has a new identity or address (``model.params["W"] = ...``, ``.to()``, ``.double()``).  A stamp
    holds the tensors' storages, so no later tensor can be given a compared address while it lives.
    This catches every change made through PyTorch, where an explicit invalidation by the model
    would miss all those made outside its methods (a user's optimizer, an in-place edit of a
    parameter); only writes through ``.data`` or a NumPy view escape it, and the package makes none.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]):
        tensors = list(tensors)
        self.keys = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device, t.shape, t.stride()) for t in tensors)
        self._storages = [t.untyped_storage() for t in tensors]

    def __eq__(self, other) -> bool:
        return isinstance(other, Stamp) and self.keys == other.keys

    __hash__ = None


class GramCache:
    """The Hessian H of one quadratic smooth part (a set of terms) and its largest eigenvalue, with the
    :class:`Stamp` of the parameters it was read from: inference on many batches with fixed parameters
    reads H and computes λ_max once.  The model keeps one per set of smooth terms."""

    def __init__(self):
        self.stamp: Stamp | None = None
        self.H: torch.Tensor | None = None
        self.top: torch.Tensor | None = None

    def at(self, stamp: Stamp) -> CachedGram:
        """This cache as a problem built when the parameters had ``stamp`` sees it."""
        return CachedGram(self, stamp)


@dataclass(frozen=True)
class CachedGram:
    """A :class:`GramCache` seen from one problem: its H counts only when read from the same parameters."""

    cache: GramCache
    stamp: Stamp

    def hessian(self) -> torch.Tensor | None:
        return self.cache.H if self.cache.stamp == self.stamp else None

    def keep(self, H: torch.Tensor) -> None:
        self.cache.stamp, self.cache.H, self.cache.top = self.stamp, H, None

    def largest_eigenvalue(self, H: torch.Tensor) -> torch.Tensor:
        """λ_max(H), computed once for the kept H."""
        if H is not self.cache.H or self.cache.stamp != self.stamp:
            return largest_eigenvalue(H)
        if self.cache.top is None:
            self.cache.top = largest_eigenvalue(H)
        return self.cache.top
