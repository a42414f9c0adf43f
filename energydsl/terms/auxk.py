"""The energy term ``auxk``: the auxiliary-K loss of TopK sparse auto-encoders, which revives dead units."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energydsl.errors import SpecError
from energydsl.terms.base import Option, Term, _per_sample_sum


class auxk(Term):
    """The auxiliary-K loss of TopK sparse auto-encoders (Gao et al. 2024): the dead units are asked
    to reconstruct what the live ones miss.

    Written ``auxk(x - (D @ z + b_dec), D, pre, k = 512)``: of the units that are dead (``env["dead"]``,
    a boolean per unit, which the model's unit-activity tracker provides), take the k largest of
    relu(pre) per sample, z_aux, and penalise ‖stop_gradient(r) − D z_aux‖², r being the residual of
    the main reconstruction, scaled by min(#dead / k, 1) so that a few dead units do not pull as hard
    as many.  The gradient reaches the dead units' encoder rows and decoder columns only: it moves them
    toward the error of the model, where they have a chance to fire again.  Zero when no unit is dead,
    and where the evaluation has no activity tracker.
    """

    name = "auxk"
    formula = "min(#dead/k, 1)·‖{residual} − {D} topk_dead(relu({pre}))‖²"
    arguments = ("residual", "D", "pre")
    kinds = ("value", "value", "value")
    convex = False
    reads = ("dead",)
    options = {"k": Option(512, "whole", "how many dead units reconstruct each sample's residual")}

    def __init__(self, static):
        super().__init__(static)
        k = self.static["k"]
        self.formula = f"min(#dead/{k}, 1)·‖{{residual}} − {{D}} top{k}_dead(relu({{pre}}))‖²"

    def check(self, values, node):
        residual, D, pre = values
        if D.batched or len(D.shape) != 2:
            raise SpecError(f"auxk() needs a decoder matrix D [d, units], got {D.describe()}", node.span)
        d, width = D.shape
        if not residual.batched or residual.shape != (d,):
            raise SpecError(f"auxk() needs the per-sample residual [{d}] of the reconstruction by D {D.describe()}, "
                            f"got {residual.describe()}", node.span)  # fmt: skip
        if not pre.batched or pre.shape != (width,):
            raise SpecError(f"auxk() needs the per-sample pre-activations of the {width} units of D "
                            f"{D.describe()}, got {pre.describe()}", node.span)  # fmt: skip
        if self.static["k"] > width:
            raise SpecError(f"auxk() k = {self.static['k']} is more than the {width} units",
                            self.option_span(node, "k"))  # fmt: skip

    def energy(self, residual, D, pre, dead=None):
        if dead is None:  # no activity tracker in this evaluation: no unit is known to be dead
            return residual.new_zeros(residual.shape[0])
        k = self.static["k"]
        dead = dead.to(pre.device)
        candidates = torch.relu(pre) * dead  # live units drop to 0, below any dead unit that would fire
        values, units = candidates.topk(k, dim=1)
        estimate = sparse_decode(D, units, values)
        scale = (dead.sum() / k).clamp(max=1).to(pre.dtype)  # a tensor: no host sync on a GPU
        return scale * _per_sample_sum((residual.detach() - estimate) ** 2)


def sparse_decode(D: torch.Tensor, units: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σⱼ values[:, j]·D[:, units[:, j]] per sample, ``(B, d)``: D z for a code with k nonzeros, at the
    cost of k columns per sample rather than the whole dictionary (and without a (B, k, d) gather)."""
    return F.embedding_bag(units, D.T, per_sample_weights=values, mode="sum")
