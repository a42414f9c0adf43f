"""What every energy term is: the :class:`Term` interface, its two nonsmooth kinds, and the registry.

Energies are per sample: every method takes batched tensors ``(B, ...)`` and returns ``(B,)``.
A term keeps its energy and, when it is nonsmooth, its proximal operator side by side,
with the closed form in the docstring.  The DSL word, the registry key and ``Term.name``
are the same string.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from energydsl.errors import Span, SpecError
from energydsl.expr.compiler import Closure, Env, Value
from energydsl.ops.pools import GroupNorms, PoolFamily, memberships_text, nesting_text
from energydsl.registry import Registry

TERMS: Registry[type[Term]] = Registry("energy term", "energydsl.terms")


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


@dataclass(frozen=True)
class Option:
    """A compile-time keyword option of a term, written by name after its arguments:
    ``l0(v, theta, bandwidth = 0.01)``.

    The compiler evaluates it with the constant compiler (numbers and ``const`` names only),
    checks its kind, and hands it to the term in ``static`` under its own name.  Checks that
    depend on the arguments (a size within the latent's width) are the term's, in ``check``,
    reported at :meth:`Term.option_span`.
    """

    default: float | int | tuple[int, ...] | None  # None: unset unless written
    # "number", "whole" (a whole number) or "wholes" (a list of whole numbers, such as sizes)
    kind: Literal["number", "whole", "wholes"] = "number"
    text: str = ""  # what it means, in a few words, for the reference
    positive: bool = True  # the value (each entry of a list) must be > 0
    required: bool = False  # the spec must write it (no sensible default)


class Term(ABC):
    """One energy term.  Subclasses set the class attributes and ``energy``."""

    name: ClassVar[str]
    arguments: ClassVar[tuple[str, ...]]  # argument names, as shown in messages
    # per argument: "value", "label", "pools", "structure" or "affine" (a value that, when it is a per-sample
    # W @ u + c, is passed as an unevaluated ops.sparse_codes.Affine: the term computes only the units it needs)
    kinds: ClassVar[tuple[str, ...]]
    smooth: ClassVar[bool] = True
    needs_label: ClassVar[bool] = False
    # the energy per sample in plain math; {argument} stands for that argument as written
    formula: ClassVar[str] = ""
    # How inference treats the term: "smooth" (gradient steps), "separable" (a per-unit threshold
    # inside the prox) or "group" (pool norms with their own exact prox).  Solvers ask this,
    # never a term's class or name.
    prox_kind: ClassVar[str] = "smooth"
    convex: ClassVar[bool] = True  # FISTA's momentum needs it; ISTA also takes nonconvex terms
    lasso: ClassVar[bool] = False  # exactly ‖v‖₁: the homotopy (lars) and the two-pass soft-threshold take it
    # a sum of squares, so when quadratic in the latent it is ½‖Az − b‖² + κ, κ ≥ 0: a duality gap bounds it
    squares: ClassVar[bool] = False
    # what analysis and pictures look for: "reconstruction" (its decoder), "classifier" (its logits)
    role: ClassVar[str | None] = None
    pictured: ClassVar[tuple[str, ...]] = ()  # arguments drawn as a matrix when they are parameters
    # the argument that is the decoder matrix itself (matryoshka's D), for a reconstruction that
    # does not write it as D @ z; roles look for D @ z in the arguments otherwise
    decoder_argument: ClassVar[str | None] = None
    # keyword options, compile-time constants: name → Option (see Option)
    options: ClassVar[dict[str, Option]] = {}
    # entries of the evaluation's environment the term reads beside its arguments (auxk reads "dead",
    # the units that have not fired lately): each is passed to ``energy`` as a keyword argument, None
    # where the evaluation has no such entry, so a term must work without it
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, static: dict):
        """``static`` maps "units" to the latent's width, "pools" to a :class:`PoolFamily`,
        "classes" to a count, and each option's name to its value (its default where absent)."""
        self.static = {**{name: option.default for name, option in self.options.items()}, **static}

    @staticmethod
    def option_span(node, name: str, item: int | None = None) -> Span:
        """Where option ``name`` is written in the call ``node`` (the call itself when defaulted);
        with ``item``, that entry of a list option."""
        value = next((kw.value for kw in node.kwargs if kw.name == name), None)
        if value is None:
            return node.span
        items = getattr(value, "items", ())
        return items[item].span if item is not None and item < len(items) else value.span

    def check(self, values: list[Value], node) -> None:
        """Raise :class:`SpecError` when the arguments do not fit together."""

    def is_quadratic(self, values: list[Value]) -> bool:
        """Whether the term is at most quadratic in the latent (so FISTA's step is constant)."""
        return all(v.degree == 0 for v in values)

    @abstractmethod
    def energy(self, *args: torch.Tensor) -> torch.Tensor:
        """The term's value for each sample, ``(B,)``."""

    def reconstruction(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a term of role "reconstruction": (target, estimate), what its 'reconstruction error'
        compares (``evaluate`` reports ‖target − estimate‖² / ‖target‖²)."""
        raise NotImplementedError(f"{self.name} is not a reconstruction term")

    def prox_text(self, tau: str, inside: str) -> str:
        """How the prox treats a nonsmooth term, for ``energydsl explain`` (τ·weight is ``tau``;
        ``inside`` names the group prox the threshold is added to, or is empty)."""
        return f"the prox of {self.name}"

    def memory(self, batch: int, size: int, prox: bool) -> dict[str, int]:
        """Bytes the term adds to a step, by part of the memory estimate (``size``: bytes per value;
        ``prox``: whether inference runs proximal steps)."""
        return {}


class SeparableTerm(Term):
    """A nonsmooth term that acts as a per-unit l1 threshold inside FISTA's prox.

    The prox step soft-thresholds unit i by τ·weight·threshold(z)ᵢ, where z is the
    point the gradient was taken at.  For l1 the threshold is 1 everywhere; for
    lateral inhibition it depends on z, and ``curvature`` is what the step size
    must add so that each step still decreases the energy (a majorise-minimise
    step).
    """

    smooth = False
    prox_kind = "separable"

    @abstractmethod
    def threshold(self, z: torch.Tensor, *args: torch.Tensor) -> torch.Tensor | float:
        """Per-unit l1 weight at the current point, a scalar or ``(B, m)``."""

    def curvature(self, *args: torch.Tensor) -> float:
        return 0.0


class ProxTerm(Term):
    """A nonsmooth term with a prox of its own: ``prox(v, tau, *others)`` = argmin_u ½‖u − v‖² + τ·term(u),
    per sample, for ``v`` (B, m), ``tau`` (B, 1) and the values of the term's other arguments (constants
    or parameters: inference holds them fixed).  FISTA and ISTA call it as the whole prox, so it must be
    the energy's only nonsmooth term, on the latent itself, with no ``z >= 0`` (the compiler checks)."""

    smooth = False
    prox_kind = "prox"

    @abstractmethod
    def prox(self, v: torch.Tensor, tau: torch.Tensor, *others) -> torch.Tensor:
        """argmin_u ½‖u − v‖² + τ·term(u, *others), sample by sample."""

    def prox_text(self, tau, inside):
        return f"the term's own prox, argmin_u ½‖u − v‖² + {tau}·{self.name}(u)"


class GroupTerm(Term):
    """A sum of pool norms, with an exact prox through :class:`GroupNorms`."""

    smooth = False
    prox_kind = "group"

    def __init__(self, static):
        super().__init__(static)
        self.norms = GroupNorms(self.family())

    def family(self) -> PoolFamily:
        return self.static["pools"]

    def check(self, values, node):
        family = self.family()
        if not values[0].batched or math.prod(values[0].shape) != family.size:
            raise SpecError(f"{self.name}() pools index {family.size} units, "
                            f"but the value is {values[0].describe()}", node.span)  # fmt: skip

    def energy(self, v):
        return self.norms.norms(v.flatten(1)).sum(dim=1)  # code maps: their units in storage order

    def prox(self, v, tau, l1=None):
        """argmin_u ½‖u − v‖² + τ·term(u) + Σᵢ l1ᵢ|uᵢ|."""
        return self.norms.prox(v, tau, l1)

    def needs_dual(self) -> bool:
        """Whether the prox has no closed form (overlapping or weighted pools): FISTA solves its
        dual, or ADMM the whole problem."""
        return self.norms.levels is None

    def prox_text(self, tau, inside):
        family = self.family()
        layout = family.layout()
        if family.weights or family.laminar_levels() is None:
            return (f"{layout} pools, {memberships_text(family)}: with a quadratic smooth part (a reconstruction) FISTA "
                    "hands the whole problem to ADMM (split y = Az, one product with a precomputed inverse and block "
                    f"soft-thresholds per iteration); otherwise the dual prox min ‖v − Aᵀξ‖² over ‖ξⱼ‖ ≤ {tau}, "
                    "by accelerated projected gradient in float64, warm-started, until the duality gap is small")  # fmt: skip
        shrink = f"z_P ← z_P·max(0, 1 − {tau}/‖z_P‖)"
        if layout == "disjoint":
            return f"group soft-threshold (disjoint pools): {shrink}"
        return (f"nested composition (laminar pools{nesting_text(family)}): group soft-thresholds {shrink}, "
                "level by level, innermost pools first")  # fmt: skip

    def memory(self, batch, size, prox):
        norms = self.norms
        tables = 0  # the prox's tables as built at compile time, plus their copies in the model's dtype
        for table in [norms.unit_of, norms.scale, *(norms.levels or [])]:
            tables += table.numel() * table.element_size()
            if table.is_floating_point():  # GroupNorms._on caches a copy in the model's dtype
                tables += table.numel() * size
        parts = {"pool tables": tables}
        if prox and self.needs_dual():  # float64 copies of the dual variables, and (B, m) vectors
            parts["dual variables"] = batch * (DUAL_COPIES * norms.count * norms.width + DUAL_VECTORS * self.family().size) * 8
        return parts


def decoder_matrix(term: str, D: Value, node) -> tuple[int, int]:
    """(d, units) of a term's decoder argument, which must be a parameter matrix."""
    if D.batched or len(D.shape) != 2:
        raise SpecError(f"{term}() needs a decoder matrix D [d, units], got {D.describe()}", node.span)
    return D.shape


DUAL_COPIES = 8  # float64 copies of the dual variables in the dual prox
DUAL_VECTORS = 4  # float64 (B, m) vectors in the dual prox


@dataclass(frozen=True)
class VaryingWeight:
    """The factors of a term's weight that change during training: ``lam`` in ``0.5 * lam * l1(z)``
    when a ramp moves ``lam``.  ``value()`` is their product now; ``text`` is how they were written;
    ``names`` are the changing constants they read."""

    text: str
    value: Callable[[], float]
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoundTerm:
    """A term of the energy with its weight and compiled arguments.

    The weight is ``fixed_weight`` times, when part of it changes during training, the current value
    of ``varying``; read it as :attr:`weight`, which is always the value now."""

    name: str
    term: Term
    fixed_weight: float
    args: tuple[Closure, ...]
    degree: float  # in the latent: 0 means constant in z
    quadratic: bool
    first_arg: str | None  # the first argument's name, when it is a plain name
    span: Span
    varying: VaryingWeight | None = None
    # l1(z * w): the per-unit weights w (free of the latent), so that the term is Σᵢ |wᵢ||zᵢ| of z itself
    unit_weights: Closure | None = None

    @property
    def weight(self) -> float:
        """The term's weight at this point of training (the final one outside training)."""
        return self.fixed_weight if self.varying is None else self.fixed_weight * self.varying.value()

    def weight_text(self) -> str:
        """The weight for people: ``0.5``, or ``0.5 * lam`` when ``lam`` changes during training."""
        if self.varying is None:
            return f"{self.fixed_weight:g}"
        return self.varying.text if self.fixed_weight == 1 else f"{self.fixed_weight:g} * {self.varying.text}"

    def unweighted_energy(self, env: Env) -> torch.Tensor:
        """The term's function alone, without its weight, per sample (with the env entries it reads)."""
        entries = {name: env.get(name) for name in self.term.reads}
        return self.term.energy(*(arg(env) for arg in self.args), **entries)

    def energy(self, env: Env) -> torch.Tensor:
        return self.weight * self.unweighted_energy(env)

    def reconstruction(self, env: Env) -> tuple[torch.Tensor, torch.Tensor]:
        """(target, estimate) of a reconstruction term, unweighted (see :meth:`Term.reconstruction`)."""
        return self.term.reconstruction(*(arg(env) for arg in self.args))
