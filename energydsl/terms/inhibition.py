"""The energy term ``inhibition``: lateral inhibition |v|ᵀ S |v| = Σᵢⱼ Sᵢⱼ|vᵢ||vⱼ| (Gregor, Szlam & LeCun 2011)."""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.terms.base import SeparableTerm


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
    convex = False
    pictured = ("S",)

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

    def prox_text(self, tau, inside):
        return (f"per-unit soft-threshold at {tau}·((S + Sᵀ)|z|)ᵢ (inhibition's exact coordinate step), "
                f"added to the l1 threshold{inside}; the step size is lowered by 2·{tau[2:]}·λ_max(S)")

    def memory(self, batch, size, prox):
        units = self.static.get("units", 0)
        return {"gram": 2 * units * units * 8} if prox else {}  # λ_max(S) by eigvalsh in float64

    def curvature(self, S):
        symmetric = (S + S.T) / 2
        return 2 * max(torch.linalg.eigvalsh(symmetric.double())[-1].item(), 0.0)
