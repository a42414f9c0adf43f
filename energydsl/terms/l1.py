"""The energy term ``l1``: the l1 norm ‖v‖₁ = Σᵢ |vᵢ|."""

from __future__ import annotations

from energydsl.errors import SpecError
from energydsl.terms.base import SeparableTerm, _per_sample_sum


class l1(SeparableTerm):
    """The l1 norm ‖v‖₁ = Σᵢ |vᵢ|.

    prox_{τ‖·‖₁}(v) = sign(v) · max(|v| − τ, 0)  (soft-thresholding).
    """

    name = "l1"
    formula = "‖{v}‖₁"
    arguments = ("v",)
    kinds = ("value",)
    lasso = True

    def check(self, values, node):
        if not values[0].batched:
            raise SpecError("l1() needs a per-sample value such as the latent", node.span)

    def energy(self, v):
        return _per_sample_sum(v.abs())

    def threshold(self, z, weights=1.0):
        """1 per unit; for ``l1(z * w)`` the prox is given |w| (:attr:`BoundTerm.unit_weights`)."""
        return weights

    def prox_text(self, tau, inside):
        return f"soft-threshold sign(v)·max(|v| − {tau}, 0) per unit{inside}"
