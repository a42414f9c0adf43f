"""The energy terms: one registry, one small class per term.

Each class keeps its energy and, when it is nonsmooth, its proximal operator side
by side, with the closed form in the docstring.  The DSL word, the registry key
and ``Term.name`` are the same string.  Adding a term means adding one class here
with ``@register``.

Energies are per sample: every method takes batched tensors ``(B, ...)`` and
returns ``(B,)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import SpecError
from .expr import Value
from .pools import PoolFamily

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


class ProxTerm(Term):
    """A nonsmooth term with an exact prox when its argument is the latent itself.

    ``prox_order`` fixes the order of composition inside FISTA's prox step
    (non-negativity first, then l1, then group norms): composing in this order is
    the exact prox of the sum for disjoint groups.
    """

    smooth = False
    prox_order: ClassVar[int]

    @abstractmethod
    def prox(self, v: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        """argmin_u ½‖u − v‖² + τ·term(u), per sample (τ a scalar or ``(B, 1)``)."""


@register
class sqerr(Term):
    """Squared error ‖a − b‖², summed over each sample.

    Reconstruction is ``0.5 * sqerr(x, W @ z)``; code prediction (PSD) is
    ``alpha * sqerr(z, G * tanh(W @ x + d))``.
    """

    name = "sqerr"
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
class l1(ProxTerm):
    """The l1 norm ‖v‖₁ = Σᵢ |vᵢ|.

    prox_{τ‖·‖₁}(v) = sign(v) · max(|v| − τ, 0)  (soft-thresholding).
    """

    name = "l1"
    arguments = ("v",)
    kinds = ("value",)
    prox_order = 1

    def check(self, values, node):
        if not values[0].batched:
            raise SpecError("l1() needs a per-sample value such as the latent", node.span)

    def energy(self, v):
        return _per_sample_sum(v.abs())

    def prox(self, v, tau):
        return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


@register
class group_l2(ProxTerm):
    """Group sparsity Σⱼ ‖v_{Pⱼ}‖₂ over the pools of a family P.

    For disjoint pools the prox shrinks each pool as a block:
    prox(v)_{Pⱼ} = v_{Pⱼ} · max(0, 1 − τ / ‖v_{Pⱼ}‖₂); units in no pool are unchanged.
    """

    name = "group_l2"
    arguments = ("v", "pools")
    kinds = ("value", "pools")
    prox_order = 2

    def __init__(self, static):
        super().__init__(static)
        family: PoolFamily = static["pools"]
        index = family.group_index()
        self.groups = len(family.members)
        # units in no pool go to an extra, discarded group
        self.index = torch.where(index < 0, torch.tensor(self.groups), index)

    def check(self, values, node):
        family: PoolFamily = self.static["pools"]
        if not values[0].batched or values[0].shape != (family.size,):
            raise SpecError(f"group_l2() pools index {family.size} units, "
                            f"but the value is {values[0].describe()}", node.span)  # fmt: skip

    def _norms(self, v):
        index = self.index.to(v.device)
        squares = v.new_zeros(v.shape[0], self.groups + 1).index_add_(1, index, v * v)
        return squares[:, : self.groups].sqrt(), index

    def energy(self, v):
        norms, _ = self._norms(v)
        return norms.sum(dim=1)

    def prox(self, v, tau):
        norms, index = self._norms(v)
        scale = torch.clamp(1 - tau / norms.clamp_min(1e-30), min=0)
        scale = torch.cat([scale, scale.new_ones(v.shape[0], 1)], dim=1)  # units in no pool
        return v * scale[:, index]


@register
class xent(Term):
    """Cross-entropy of a classifier: −log softmax(logits)_y.

    Used as ``xent(C @ normalize(z), y)``; at inference with no label it is left out.
    """

    name = "xent"
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
