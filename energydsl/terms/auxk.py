"""The energy term ``auxk``: the auxiliary-K loss of TopK sparse auto-encoders, which revives dead units."""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.ops.sparse_codes import Affine
from energydsl.terms.base import Option, Term, _per_sample_sum, decoder_matrix


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
    kinds = ("value", "value", "affine")
    convex = False
    reads = ("dead",)
    options = {"k": Option(512, "whole", "how many dead units reconstruct each sample's residual")}

    def __init__(self, static):
        super().__init__(static)
        k = self.static["k"]
        self.formula = f"min(#dead/{k}, 1)·‖{{residual}} − {{D}} top{k}_dead(relu({{pre}}))‖²"

    def check(self, values, node):
        residual, D, pre = values
        d, width = decoder_matrix("auxk", D, node)
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
        dead = dead.to(residual.device)
        count = int(dead.sum())  # one sync a step, which saves the whole term while every unit lives
        if count == 0:
            return residual.new_zeros(residual.shape[0])
        k = min(self.static["k"], count)
        # Only the dead units' columns: the term costs what the dead units cost, not the whole width
        # (when pre is E @ u + c it is not even computed for the others).
        units = dead.nonzero().squeeze(1)
        dead_pre = pre.columns(units) if isinstance(pre, Affine) else pre[:, units]
        values, chosen = torch.relu(dead_pre).topk(k, dim=1)
        # Decoded dense: on the CPU, scatter-then-product beats embedding_bag or a gather of the k columns
        # (B 512, d 64..512, up to 16,384 units: 2-5x faster, forward and backward).
        code = torch.zeros(residual.shape[0], count, dtype=residual.dtype, device=residual.device).scatter(
            1, chosen, values)  # fmt: skip
        estimate = code @ D[:, units].T
        scale = min(count / self.static["k"], 1.0)
        return scale * _per_sample_sum((residual.detach() - estimate) ** 2)
