"""FISTA's step size for latents too large for a dense Gram matrix (code maps).

For a quadratic smooth part f, the step is 1/L with L = λ_max of its Hessian H, the
squared operator norm of the decoder (for ½‖x − conv_t(D, z)‖², ‖conv_t(D, ·)‖²).
Small latents read H off the energy (:func:`energydsl.solvers.problem.affine_gradient`); code
maps have tens of thousands of units, so L is estimated by power iteration instead.
Three things make that cheap:

- the gradient of a quadratic is affine, so Hv = ∇f(v) − ∇f(0) exactly: one gradient
  per iteration, no double backward (five times slower on convolutions);
- when every sample has the same Hessian (a reconstruction through a decoder: H = DᵀD),
  the iteration runs on a few samples only; that the Hessians agree is checked on the
  whole batch with a random probe (two gradients), as ``affine_gradient`` checks its
  matrix, and where they differ every sample gets its own iteration;
- H changes little from one training step to the next, so the iteration starts from
  the top eigenvector found for the previous batch (:class:`PowerIteration` keeps it)
  and a few iterations refine it; a cold start runs more.

Power iteration approaches λ_max from below, so the estimate is scaled by
:data:`energydsl.solvers.problem.SAFETY`, as FISTA does with its own estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from energydsl.solvers.problem import SAFETY, Problem, smooth_and_grad

# Code maps with more units than this (16×28×28 = 12,544) never build the dense m×m Gram
# matrix: FISTA's step comes from here and its gradient from autograd.  Vector latents keep
# the Gram path whatever their size (resources.py refuses one that cannot fit).
DENSE_GRAM_MAX_UNITS = 4096
COLD_ITERATIONS = 100
WARM_ITERATIONS = 20
FEW_SAMPLES = 4  # the sub-batch that iterates when the Hessian is shared
SHARED_TOL = 1e-4  # relative spread of H·probe across samples taken as "the same Hessian"

Smooth = Callable[[torch.Tensor], torch.Tensor]


def uses_power_iteration(latent) -> bool:
    """Whether FISTA's step for this latent (a :class:`~energydsl.compiler.program.Variable`) comes from
    :class:`PowerIteration` rather than a dense Gram matrix: code maps of many units."""
    return latent.layout is not None and latent.shape[0] > DENSE_GRAM_MAX_UNITS


class PowerIteration:
    """Per-sample λ_max of a quadratic smooth part, warm-started from the previous call."""

    def __init__(self):
        self.vector: torch.Tensor | None = None  # (1, m): the last top eigenvector

    def __call__(self, smooth: Smooth, few: Smooth, z: torch.Tensor) -> torch.Tensor:
        """L per sample, ``(B, 1)``, for the quadratic ``smooth`` of the batch; ``few`` is the
        same energy on its first :data:`FEW_SAMPLES` samples."""
        batch, units = z.shape
        if batch > FEW_SAMPLES and self._shared(smooth, z):
            L = self._iterate(few, z.new_zeros(min(batch, FEW_SAMPLES), units))
            return L.max().expand(batch, 1).clone()
        return self._iterate(smooth, z)

    def _iterate(self, smooth: Smooth, z: torch.Tensor) -> torch.Tensor:
        batch, units = z.shape
        problem = Problem(smooth, None, True)
        warm = self.vector is not None and self.vector.shape[1] == units and self.vector.dtype == z.dtype
        if warm:
            v = self.vector.to(z.device).expand(batch, units)
        else:
            generator = torch.Generator(device="cpu").manual_seed(0)  # deterministic: resumed runs match
            v = torch.randn((1, units), generator=generator, dtype=z.dtype).to(z.device).expand(batch, units)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        _, offset = smooth_and_grad(problem, torch.zeros_like(z))  # ∇f(0)
        norm = z.new_zeros(batch, 1)
        for _ in range(WARM_ITERATIONS if warm else COLD_ITERATIONS):
            _, grad = smooth_and_grad(problem, v)
            hv = grad - offset
            norm = hv.norm(dim=1, keepdim=True)
            v = hv / norm.clamp_min(1e-30)
        if bool(norm[0] > 0) and bool(v[:1].isfinite().all()):
            self.vector = v[:1].detach().clone()
        return norm * SAFETY

    @staticmethod
    def _shared(smooth: Smooth, z: torch.Tensor) -> bool:
        """Whether H·probe is the same for every sample, for one random probe."""
        problem = Problem(smooth, None, True)
        generator = torch.Generator(device="cpu").manual_seed(1)
        probe = torch.randn((1, z.shape[1]), generator=generator, dtype=z.dtype).to(z.device).expand_as(z)
        _, at_zero = smooth_and_grad(problem, torch.zeros_like(z))
        _, at_probe = smooth_and_grad(problem, probe)
        hv = at_probe - at_zero
        spread = (hv - hv[:1]).norm(dim=1).max()
        return bool(spread <= SHARED_TOL * hv[:1].norm().clamp_min(1e-30))
