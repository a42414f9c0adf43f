"""The energy term ``soft_l0``: a smooth count of active units, Σᵢ tanh(c·|vᵢ|)."""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.terms.base import Option, Term, _per_sample_sum


class soft_l0(Term):
    """A smooth count of the active units, Σᵢ tanh(c·|vᵢ|) per sample (c: ``scale``): the tanh
    sparsity penalty of Anthropic's sparse auto-encoders.  Each unit costs about c·|vᵢ| while small,
    like l1, and at most 1 when large, like l0, so large activations are not shrunk.

    With ``v = z * col_norm(D)`` each unit is weighed by its decoder column's norm, so that the
    penalty cannot be dodged by shrinking codes and growing the decoder.  Not convex; its
    gradient at vᵢ = 0 is taken as 0.
    """

    name = "soft_l0"
    formula = "Σᵢ tanh(c·|{v}ᵢ|)"
    arguments = ("v",)
    kinds = ("value",)
    convex = False
    options = {"scale": Option(4.0, text="c, how fast a unit's cost saturates at 1")}

    def __init__(self, static):
        super().__init__(static)
        self.formula = f"Σᵢ tanh({self.static['scale']:g}·|{{v}}ᵢ|)"

    def check(self, values, node):
        if not values[0].batched:
            raise SpecError("soft_l0() needs a per-sample value such as the latent", node.span)

    def energy(self, v):
        return _per_sample_sum(torch.tanh(self.static["scale"] * v.abs()))
