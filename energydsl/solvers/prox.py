"""The exact prox of the nonsmooth terms of an energy, as a solver calls it.

Terms say how they are proxed (``Term.prox_kind``): "separable" terms add up to one
per-unit soft-threshold, a "group" term takes that threshold into its own exact prox,
and a "prox" term (for example one from a plugin) brings its own ``prox(v, tau)``.
Solvers never test a term's class or name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from energydsl.errors import SpecError
from energydsl.ops.pools import GroupNorms, soft_threshold
from energydsl.terms import BoundTerm


def make_prox(parts: Sequence[tuple[BoundTerm, tuple]], nonneg: bool):
    """The exact prox of Σ weightᵢ·termᵢ (+ the indicator of z ≥ 0), and its extra curvature.

    ``parts`` pairs each nonsmooth term with the values of its arguments after the
    first (e.g. the matrix S of an inhibition term).  Non-negativity is applied
    first (exact for these absolute norms); the separable terms (l1, inhibition)
    add up to one per-unit threshold; a group term then takes that threshold into
    its own exact prox; a term with a prox of its own ("prox") stands alone (the compiler
    checked: no other nonsmooth term, no z ≥ 0).
    """
    separable = [(t, args) for t, args in parts if t.term.prox_kind == "separable"]
    groups = [(t, args) for t, args in parts if t.term.prox_kind in ("group", "prox")]
    curvature = sum(t.weight * t.term.curvature(*args) for t, args in separable)
    group, group_args = groups[0] if groups else (None, ())
    return ExactProx(separable, group, nonneg, group_args), float(curvature)


class ExactProx:
    """prox(v, step, at): the exact prox of step·(the nonsmooth terms), see :func:`make_prox`."""

    def __init__(self, separable: list[tuple[BoundTerm, tuple]], group: BoundTerm | None, nonneg: bool,
                 group_args: tuple = ()):
        self.separable, self.group, self.nonneg = separable, group, nonneg
        self.group_args = group_args  # a term with its own prox: the values of its other arguments

    def __call__(self, v: torch.Tensor, step: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        if self.nonneg:
            v = v.clamp(min=0)
        thresholds = None
        for term, args in self.separable:
            threshold = step * term.weight * term.term.threshold(at, *args)
            thresholds = threshold if thresholds is None else thresholds + threshold
        if self.group is not None:
            tau = step * self.group.weight
            if self.group.term.prox_kind == "prox":  # the only nonsmooth term, as the compiler checked
                return self.group.term.prox(v, tau, *self.group_args)
            v = self.group.term.prox(v, tau, thresholds)
            return v.clamp(min=0) if self.nonneg else v  # removes the dual solver's rounding below 0
        if thresholds is None:
            return v
        return soft_threshold(v, thresholds)

    def l1_weight(self) -> float | None:
        """λ when the nonsmooth part is λ‖z‖₁ (the l1 terms' weights summed), else None."""
        if not all(term.term.lasso and not args for term, args in self.separable):
            return None
        return float(sum(term.weight for term, _ in self.separable))

    def unit_thresholds(self) -> torch.Tensor | float | None:
        """λᵢ per unit when the nonsmooth part is Σᵢ λᵢ|zᵢ| (l1 terms, ``l1(z * w)`` among them), else None."""
        if not all(term.term.lasso for term, _ in self.separable):
            return None
        return sum((term.weight * term.term.threshold(None, *args) for term, args in self.separable), 0.0)

    def at_fixed_step(self, step: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """v ↦ prox(v) for one step size, when no threshold depends on the point (l1 terms,
        a group term); None otherwise (inhibition).  For l1 alone (+ z ≥ 0) the
        soft-threshold takes two passes over memory: v − clamp(v, −θ, θ), or max(v − θ, 0)
        (θ per unit for ``l1(z * w)``)."""
        lam = self.unit_thresholds()
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
        if self.group is None or self.group.term.prox_kind != "group" or not self.group.term.needs_dual():
            return None
        if self.l1_weight() is None:
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


def uncertified(smooth: list[BoundTerm], nonsmooth: list[BoundTerm], latent: str) -> str | None:
    """Why the energy of these terms has no duality gap (see :mod:`energydsl.solvers.certificate`), or None:
    the smooth terms must be sums of squares with positive weights, the nonsmooth ones norms with a dual."""
    for term in smooth:
        if not (term.term.squares and term.quadratic and term.weight > 0):
            return f"the smooth term '{term.name}' is not a positively weighted sum of squares affine in the latent"
    for term in nonsmooth:
        if term.weight <= 0:
            return f"the term '{term.name}' has weight {term.weight:g}, not above 0"
        if term.first_arg != latent:
            return f"the term '{term.name}' is not applied to '{latent}' itself"
        if term.unit_weights is not None and any(t.term.prox_kind == "group" for t in nonsmooth):
            return f"the term '{term.name}' weighs its units beside a group term"
        if not (term.term.lasso or term.term.prox_kind == "group"):
            return f"the term '{term.name}' is not a norm whose dual norm energydsl computes (l1, group_l2, tree_group)"
    return None


def check_proximable(terms: list[BoundTerm], latent, nonneg: bool, accelerated: bool) -> None:
    """FISTA (and ISTA) need the exact prox of the sum of the nonsmooth terms in z."""
    groups, nonsmooth = [], []
    for term in terms:
        if term.term.smooth or term.degree == 0:
            continue
        if term.first_arg != latent.name:
            raise SpecError(f"term '{term.name}' is nonsmooth in '{latent.name}' and FISTA has no prox for it",
                            term.span, hint=f"apply it to '{latent.name}' itself, or infer by encoder")  # fmt: skip
        nonsmooth.append(term)
        if term.term.prox_kind in ("group", "prox"):
            groups.append(term)
        if not term.term.convex and accelerated:
            raise SpecError(f"{term.term.name} makes the energy nonconvex, where FISTA's momentum can climb",
                            term.span, hint="infer by ista(...), whose steps always decrease the energy")  # fmt: skip
    if len(groups) > 1:
        raise SpecError("FISTA composes the prox of one group term only", groups[1].span)
    own = [t for t in groups if t.term.prox_kind == "prox"]
    if own and (len(nonsmooth) > 1 or nonneg):
        beside = "z >= 0" if nonneg and len(nonsmooth) == 1 else "another nonsmooth term"
        raise SpecError(f"term '{own[0].name}' brings its own prox, which FISTA cannot combine with {beside}",
                        own[0].span, hint="make it the only nonsmooth term of the energy")  # fmt: skip
