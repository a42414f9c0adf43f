"""The energy terms: one registry, one small class per term.

Each class keeps its energy and, when it is nonsmooth, its proximal operator side
by side, with the closed form in the docstring.  The DSL word, the registry key
and ``Term.name`` are the same string.  Adding a term means adding one class here
with ``@register``.

Energies are per sample: every method takes batched tensors ``(B, ...)`` and
returns ``(B,)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import SpecError
from .expr import Value
from .pools import GroupNorms, PoolFamily
from .structures import subtrees

TERMS: dict[str, type[Term]] = {}


def register(cls: type[Term]) -> type[Term]:
    TERMS[cls.name] = cls
    return cls


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


class Term(ABC):
    """One energy term.  Subclasses set the class attributes and ``energy``."""

    name: ClassVar[str]
    arguments: ClassVar[tuple[str, ...]]  # argument names, as shown in messages
    kinds: ClassVar[tuple[str, ...]]  # per argument: "value", "label" or "pools"
    smooth: ClassVar[bool] = True
    needs_label: ClassVar[bool] = False
    # the energy per sample in plain math; {argument} stands for that argument as written
    formula: ClassVar[str] = ""

    def __init__(self, static: dict):
        """``static`` maps "pools" to a :class:`PoolFamily` and "classes" to a count."""
        self.static = static

    def check(self, values: list[Value], node) -> None:
        """Raise :class:`SpecError` when the arguments do not fit together."""

    def is_quadratic(self, values: list[Value]) -> bool:
        """Whether the term is at most quadratic in the latent (so FISTA's step is constant)."""
        return all(v.degree == 0 for v in values)

    @abstractmethod
    def energy(self, *args: torch.Tensor) -> torch.Tensor:
        """The term's value for each sample, ``(B,)``."""


class SeparableTerm(Term):
    """A nonsmooth term that acts as a per-unit l1 threshold inside FISTA's prox.

    The prox step soft-thresholds unit i by τ·weight·threshold(z)ᵢ, where z is the
    point the gradient was taken at.  For l1 the threshold is 1 everywhere; for
    lateral inhibition it depends on z, and ``curvature`` is what the step size
    must add so that each step still decreases the energy (a majorise-minimise
    step).
    """

    smooth = False

    @abstractmethod
    def threshold(self, z: torch.Tensor, *args: torch.Tensor) -> torch.Tensor | float:
        """Per-unit l1 weight at the current point, a scalar or ``(B, m)``."""

    def curvature(self, *args: torch.Tensor) -> float:
        return 0.0


class GroupTerm(Term):
    """A sum of pool norms, with an exact prox through :class:`GroupNorms`."""

    smooth = False

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


@register
class sqerr(Term):
    """Squared error ‖a − b‖², summed over each sample.

    Reconstruction is ``0.5 * sqerr(x, W @ z)``; code prediction (PSD) is
    ``alpha * sqerr(z, G * tanh(W @ x + d))``.
    """

    name = "sqerr"
    formula = "‖{a} − {b}‖²"
    arguments = ("a", "b")
    kinds = ("value", "value")

    def check(self, values, node):
        a, b = values
        if a.shape != b.shape:
            raise SpecError(f"sqerr() compares {a.describe()} with {b.describe()}: the shapes differ", node.span)
        if not (a.batched or b.batched):
            raise SpecError("sqerr() needs a per-sample value (an input, the latent, or an expression of them)",
                            node.span)  # fmt: skip

    def is_quadratic(self, values):
        return all(v.degree <= 1 for v in values)

    def energy(self, a, b):
        return _per_sample_sum((a - b) ** 2)


@register
class l1(SeparableTerm):
    """The l1 norm ‖v‖₁ = Σᵢ |vᵢ|.

    prox_{τ‖·‖₁}(v) = sign(v) · max(|v| − τ, 0)  (soft-thresholding).
    """

    name = "l1"
    formula = "‖{v}‖₁"
    arguments = ("v",)
    kinds = ("value",)

    def check(self, values, node):
        if not values[0].batched:
            raise SpecError("l1() needs a per-sample value such as the latent", node.span)

    def energy(self, v):
        return _per_sample_sum(v.abs())

    def threshold(self, z):
        return 1.0


@register
class group_l2(GroupTerm):
    """Group sparsity Σⱼ ‖v_{Pⱼ}‖₂ over the pools of a family P (weighted: sqrt(Σ wᵢvᵢ²)).

    Disjoint or nested pools: prox by block soft-thresholds, innermost pools first,
    v_{Pⱼ} ← v_{Pⱼ}·max(0, 1 − τ/‖v_{Pⱼ}‖₂) — exact (Jenatton et al. 2011).
    Overlapping or weighted pools: the exact prox by its dual (see GroupNorms).
    """

    name = "group_l2"
    formula = "Σⱼ ‖{v}[{pools}ⱼ]‖₂"
    arguments = ("v", "pools")
    kinds = ("value", "pools")


@register
class tree_group(GroupTerm):
    """Tree-structured sparsity: Σ over the nodes of T of ‖v_{subtree(node)}‖₂.

    A unit can be active only if its ancestors are; the prox composes the group
    soft-thresholds from the leaves to the root (Jenatton et al. 2011).
    """

    name = "tree_group"
    formula = "Σ_n∈{tree} ‖{v}[subtree(n)]‖₂"
    arguments = ("v", "tree")
    kinds = ("value", "structure")

    def family(self) -> PoolFamily:
        tree = self.static["structure"]
        members = tuple(subtrees(tree))
        return PoolFamily(tree.name, tree.size, tuple(f"{tree.name}[{i}]" for i in range(tree.size)), members)


@register
class inhibition(SeparableTerm):
    """Lateral inhibition |v|ᵀ S |v| = Σᵢⱼ Sᵢⱼ|vᵢ||vⱼ| (Gregor, Szlam & LeCun 2011).

    With the other units fixed, unit i sees an l1 penalty of weight ((S + Sᵀ)|v|)ᵢ,
    so the exact coordinate step is a soft-threshold at λ + 2β(S|v|)ᵢ for a
    symmetric S.  ISTA takes this step for all units at once, with the step size
    reduced by 2β·λ_max(S) so that the energy still decreases.
    """

    name = "inhibition"
    formula = "|{v}|ᵀ {S} |{v}|"
    arguments = ("v", "S")
    kinds = ("value", "value")

    def check(self, values, node):
        v, S = values
        m = v.shape[0] if len(v.shape) == 1 else None
        if not v.batched or m is None:
            raise SpecError(f"inhibition() needs a per-sample vector, got {v.describe()}", node.span)
        if S.batched or S.shape != (m, m) or S.degree != 0:
            raise SpecError(f"inhibition() needs a fixed or learned [{m}, {m}] matrix, got {S.describe()}", node.span)

    def energy(self, v, S):
        a = v.abs()
        return ((a @ S) * a).sum(dim=1)

    def threshold(self, z, S):
        return z.abs() @ (S + S.T)

    def curvature(self, S):
        symmetric = (S + S.T) / 2
        return 2 * max(torch.linalg.eigvalsh(symmetric.double())[-1].item(), 0.0)


@register
class xent(Term):
    """Cross-entropy of a classifier: −log softmax(logits)_y.

    Used as ``xent(C @ normalize(z), y)``; at inference with no label it is left out.
    """

    name = "xent"
    formula = "−log softmax({logits})[{label}]"
    arguments = ("logits", "label")
    kinds = ("value", "label")
    needs_label = True

    def check(self, values, node):
        (logits,) = values
        classes = self.static["classes"]
        if not logits.batched or logits.shape != (classes,):
            raise SpecError(f"xent() needs {classes} logits per sample (one per class), "
                            f"got {logits.describe()}", node.span)  # fmt: skip

    def energy(self, logits, label):
        return F.cross_entropy(logits, label, reduction="none")
