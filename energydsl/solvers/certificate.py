"""Certified inference: for any code, an upper bound on how far its energy is above the optimum.

The problems of this module are min_z f(z) + Ω(z) where

- f is the smooth part, a convex quadratic that is a weighted sum of squares (``sqerr`` terms
  with positive weights): f(z) = ½‖Az − b‖² + κ for some A, b and κ ≥ 0;
- Ω is positively homogeneous and convex: l1 terms (``l1(z * w)``, with a weight per unit, too),
  one group term (disjoint, nested, overlapping or tree-structured pools) and the indicator of
  z ≥ 0, in any combination (weights per unit beside a group term excepted).

Fenchel duality gives, for any code z and the dual point θ = s·(b − Az) scaled into the dual
feasible set, the duality gap P(z) − D(θ) ≥ P(z) − P*.  Written with f's value and gradient
at z alone (so neither A nor b is ever formed; κ only loosens the bound by (1 − s)²κ)::

    gap(z) = (1 − s)²·f(z) + s·⟨∇f(z), z⟩ + Ω(z),     s = min(1, 1 / γ(−∇f(z))),

with γ the gauge of Ω's dual ball (the dual norm of Ω; of its positive part under z ≥ 0).  At
the optimum −∇f(z) ∈ ∂Ω(z), so s = 1 and ⟨−∇f(z), z⟩ = Ω(z): the gap is 0, and it goes to 0 as
z converges.  γ is computed so that it is never below the true value (the bound stays an upper
bound): in closed form for l1 alone, else as the least t at which the exact prox of t·Ω sends
−∇f(z) to 0, by bisection; for overlapping pools, whose prox is itself an iterative dual solve,
from an exact decomposition of −∇f(z) over the pools (:func:`_decomposed`).

Stopping on the gap: FISTA and ISTA measure it every :data:`GAP_EVERY` iterations and let each
sample leave once it is small enough.  ADMM (overlapping pools) stops on its residuals, run to the
finest its float type resolves; its codes are then certified once, and the samples still above the
target are reported as capped: the certificate of overlapping pools costs a dual solve, too much to
take every few iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from energydsl.solvers.problem import Problem, affine_gradient, smooth_and_grad
from energydsl.solvers.prox import ExactProx

BISECTION_STEPS = 48  # on log t over [−LOG_RANGE, LOG_RANGE]: 2·LOG_RANGE / 2^48 ≈ 2e-13 relative
LOG_RANGE = 30.0
GAP_EVERY = 10  # iterations between two measurements of the gap, when it is the stopping rule
# the dual prox of overlapping pools, run once for a certificate: to a finer gap than inference needs
DUAL_GAP = 1e-24
DUAL_ITERATIONS = 3000


@dataclass(frozen=True)
class Certificate:
    """Codes with a bound on their distance to the optimum of the energy inference minimises.

    ``energy`` is each sample's energy E(z) of those terms; ``gap`` an upper bound on E(z) − E*,
    the duality gap (``inf`` where z breaks a constraint such as z ≥ 0).  ``lower`` = E(z) − gap is
    a lower bound on the optimal energy E*."""

    codes: torch.Tensor  # (B, m) or the latent's shape
    energy: torch.Tensor  # (B,)
    gap: torch.Tensor  # (B,)

    @property
    def lower(self) -> torch.Tensor:
        """A lower bound on each sample's optimal energy."""
        return self.energy - self.gap

    @property
    def relative(self) -> torch.Tensor:
        """The gap relative to the energy (0 where both are 0)."""
        return torch.where(self.gap > 0, self.gap / self.energy.abs().clamp_min(1e-30), 0.0)


def certify(problem: Problem, z: torch.Tensor) -> Certificate:
    """The certificate of the codes ``z`` (``(B, m)``) for ``problem``.  Raises ``ValueError``
    with the reason where the problem has no certificate (:attr:`Problem.uncertified`).

    Where the smooth part's gradient is c + zH with one H for the batch (read off it as FISTA
    does), everything is computed from H and c in float64, so that float32 codes are certified
    to below float32's own rounding; else from the energy's value and gradient, in its dtype."""
    if problem.uncertified is not None:
        raise ValueError(f"no duality gap for this energy: {problem.uncertified}")
    z = z.detach()
    affine = affine_gradient(problem, z) if problem.quadratic and problem.lipschitz is None else None
    if affine is not None:
        return AffineGap(problem, *affine).certificate(z)
    f, grad = smooth_and_grad(problem, z)
    nonsmooth = problem.nonsmooth(z)
    gap = duality_gap(problem.prox, z.flatten(1), f, grad.flatten(1), nonsmooth)
    return Certificate(z, (f + nonsmooth).detach(), gap.to(f.dtype))


class AffineGap:
    """Certificates of codes of some rows of a batch, for a problem whose smooth part has the gradient
    c + zH: f(z) = ½⟨∇f(z) + c, z⟩ + f(0) costs one product.  In float64 whatever the codes' dtype."""

    def __init__(self, problem: Problem, H: torch.Tensor, c: torch.Tensor):
        self.H, self.c, self.problem = H.double(), c.double(), problem
        with torch.no_grad():
            self.at_zero = problem.smooth(torch.zeros_like(c)).double()

    def certificate(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> Certificate:
        """The certificate of codes ``z`` (B', m): those of the batch's rows ``rows`` (default: all)."""
        c, at_zero = (self.c, self.at_zero) if rows is None else (self.c[rows], self.at_zero[rows])
        flat = z.flatten(1).double()
        grad = torch.addmm(c, flat, self.H)
        f = 0.5 * torch.linalg.vecdot(grad + c, flat) + at_zero
        nonsmooth = self.problem.nonsmooth(z).double()
        return Certificate(z, f + nonsmooth, duality_gap(self.problem.prox, flat, f, grad, nonsmooth))

    def relative(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The gap relative to the energy (B',) of codes ``z`` of the batch's rows ``rows``."""
        return self.certificate(z, rows).relative


def duality_gap(prox: ExactProx, z: torch.Tensor, f: torch.Tensor, grad: torch.Tensor,
                nonsmooth: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The duality gap (B,) at codes ``z`` (B, m), from the smooth part's value ``f`` (B,) and gradient
    (B, m) there and the nonsmooth part's value (B,): the formula of the module docstring, in float64."""
    z, f, grad, nonsmooth = z.double(), f.double(), grad.double(), nonsmooth.double()
    radius = gauge(prox, -grad, z)
    s = torch.where(radius > 1, 1 / radius, torch.ones_like(radius))
    gap = (1 - s) ** 2 * f + s * torch.linalg.vecdot(grad, z) + nonsmooth
    gap = gap.clamp_min(0)  # rounding below 0 at the optimum
    if prox.nonneg:
        gap = torch.where((z < 0).any(dim=1), math.inf, gap)
    return gap


def gauge(prox: ExactProx, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """γ(u) (B,) for each row of ``u``: the least t ≥ 0 with u in t·∂Ω(0) (under z ≥ 0, its positive part),
    or a value above it (by at most a relative 1e-12 for the lasso and laminar pools).  ``inf`` where no t
    will do (a unit Ω leaves free).  ``z``, the codes ``u`` was taken at, guides overlapping pools."""
    u = u.double()
    if prox.nonneg:
        u = u.clamp(min=0)
    if prox.group is None:  # Σᵢ λᵢ|zᵢ|: maxᵢ |uᵢ| / λᵢ
        thresholds = torch.as_tensor(prox.unit_thresholds(), dtype=u.dtype, device=u.device).expand(u.shape[1:])
        ratios = torch.where(thresholds > 0, u.abs() / thresholds.clamp_min(1e-300), torch.where(u != 0, math.inf, 0))
        return ratios.amax(dim=1)
    if prox.group.term.needs_dual():
        return _decomposed(prox, u, z.double())
    return _bisect(prox, u)


def _bisect(prox: ExactProx, u: torch.Tensor) -> torch.Tensor:
    """The least t with prox_{tΩ}(u) = 0 (exactly: these proxes give exact zeros), by bisection on log t."""
    lo = u.new_full((u.shape[0], 1), -LOG_RANGE)
    hi = u.new_full((u.shape[0], 1), LOG_RANGE)
    for _ in range(BISECTION_STEPS):
        middle = (lo + hi) / 2
        zero = (prox(u, middle.exp(), u) == 0).all(1, keepdim=True)
        hi, lo = torch.where(zero, middle, hi), torch.where(zero, lo, middle)
    radius = torch.where(hi.squeeze(1) >= LOG_RANGE, math.inf, hi.squeeze(1).exp())  # never 0: Ω leaves a unit free
    return torch.where((u == 0).all(1), 0.0, radius)


def _decomposed(prox: ExactProx, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """An upper bound on γ(u) for overlapping or weighted pools, λ Σⱼ‖Aⱼz‖ + μ‖z‖₁: the ratio
    max(maxⱼ ‖ξⱼ‖ / λ, maxᵢ |ηᵢ| / μ) of an exact decomposition u = Aᵀξ + η, the smaller of two.

    The first follows the codes: the subgradient at z puts ξⱼ = λAⱼz/‖Aⱼz‖ on every pool z uses, η takes
    what it can of the rest and the pools z leaves at 0 share the remainder.  The second starts the
    dual prox at t = 1 (``min ‖u − Aᵀξ − η‖`` over ‖ξⱼ‖ ≤ λ, |η| ≤ μ) from the first and completes what it
    finds.  Near the optimum both give γ ≈ 1, so the gap vanishes with the codes' distance to it."""
    norms = prox.group.term.norms
    group_weight, l1_weight = prox.group.weight, prox.l1_weight() or 0.0
    slots = norms.slots(z)
    pool_norms = norms.pool_norms(slots)
    active = (pool_norms > 0).repeat_interleave(norms.width, dim=1)
    xi = torch.where(active, group_weight * slots / pool_norms.clamp_min(1e-300).repeat_interleave(norms.width, 1), 0)
    rest = u - norms.units(xi)
    eta = rest.clamp(-l1_weight, l1_weight)
    xi = xi + _shared(norms, rest - eta, ~active)
    first = _completed_ratio(norms, u, xi, eta, group_weight, l1_weight)
    saved, tolerance, iterations = norms.warm_start, norms.gap_tol, norms.max_iter
    norms.warm_start, norms.gap_tol, norms.max_iter = (xi, eta), DUAL_GAP, DUAL_ITERATIONS
    try:
        prox(u, u.new_ones(u.shape[0], 1), u)
        xi, eta = norms.warm_start
    finally:
        norms.warm_start, norms.gap_tol, norms.max_iter = saved, tolerance, iterations
    return torch.minimum(first, _completed_ratio(norms, u, xi.double(), eta.double(), group_weight, l1_weight))


def _shared(norms, rest: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Slot values ξ with Aᵀξ = ``rest`` on the units that have a ``free`` slot, each unit's value split
    over its free slots in proportion to their weights (the least-norm split)."""
    scale = norms._on(rest, "scale")
    weights = torch.where(free, scale, 0)
    totals = weights.new_zeros(rest.shape[0], norms.size + 1).index_add_(1, norms._on(rest, "unit_of"), weights * scale)
    share = norms.slots(rest / totals[:, : norms.size].clamp_min(1e-300))  # slot s of unit i: restᵢ·aₛ / Σ a² (free)
    return torch.where(free, share, 0)


def _completed_ratio(norms, u, xi, eta, group_weight: float, l1_weight: float) -> torch.Tensor:
    """max(maxⱼ ‖ξⱼ‖ / λ, maxᵢ |ηᵢ| / μ) after the rest r = u − Aᵀξ − η is added to one pool slot of each
    unit (the largest weight's) or, for a unit in no pool, to η: an exact decomposition, so a bound on γ(u)."""
    xi, eta = xi.clone(), eta.clone()
    rest = u - norms.units(xi) - eta
    slot, scale = (table.to(u.device) for table in _home_slots(norms))
    housed = slot >= 0
    xi.index_add_(1, slot[housed], rest[:, housed] / scale[housed].to(u))
    if l1_weight > 0:
        eta[:, ~housed] += rest[:, ~housed]
    elif bool((rest[:, ~housed] != 0).any()):
        return u.new_full((u.shape[0],), math.inf)
    ratio = xi.view(xi.shape[0], norms.count, norms.width).norm(dim=-1).amax(dim=1) / group_weight
    if l1_weight > 0:
        ratio = torch.maximum(ratio, eta.abs().amax(dim=1) / l1_weight)
    return ratio


def _home_slots(norms) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit, the pool slot of largest weight that holds it (−1: in no pool), and that weight."""
    m, unit_of, scale = norms.size, norms.unit_of, norms.scale  # padding slots hold the dummy unit m
    best = torch.zeros(m + 1, dtype=torch.float64).scatter_reduce(0, unit_of, scale, "amax")
    index = torch.arange(unit_of.numel())
    chosen = (scale == best[unit_of]) & (scale > 0)
    slot = torch.full((m + 1,), unit_of.numel()).scatter_reduce(0, unit_of[chosen], index[chosen], "amin")
    slot = torch.where(slot == unit_of.numel(), -1, slot)
    return slot[:m], best[:m]
