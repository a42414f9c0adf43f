"""Parameter constraints and their projections.

After every learning step each parameter is projected onto its constraints, in a
fixed order: structural mask, symmetry, non-negativity, zero diagonal, then the
norm bounds.  Symmetrising first and clipping after is the exact projection onto
symmetric non-negative matrices (clipping keeps symmetry); the mask (when
symmetric) and the zero diagonal commute with both, and rescaling by a norm bound
keeps all of them, so for ``S ≥ 0, symmetric, zero_diag, mask M, norm ≤ c`` the
composition is the exact projection.  Column
and row bounds on the same matrix are applied one after the other (columns, then
rows) and are then only approximately both satisfied.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch

ORDER = ("mask", "symmetric", "nonneg", "zero_diag", "col_norm", "row_norm", "filter_norm", "norm")
NORM_KINDS = ("col_norm", "row_norm", "filter_norm", "norm")
KERNEL_KINDS = ("filter_norm",)  # parameters of rank 4 or more: convolution and locally connected kernels
SQUARE_KINDS = ("symmetric", "zero_diag")
MATRIX_KINDS = ("col_norm", "row_norm", "symmetric", "zero_diag")
DESCRIPTIONS = {
    "mask": "mask M: entries where M is 0 stay 0, the others are free (M has the parameter's shape)",
    "nonneg": "every entry ≥ 0",
    "symmetric": "P = Pᵀ (square matrices)",
    "zero_diag": "zero diagonal (square matrices)",
    "col_norm": "col_norm <= c or == c: the l2 norm of every column",
    "row_norm": "row_norm <= c or == c: the l2 norm of every row",
    "filter_norm": (
        "filter_norm <= c or == c: the l2 norm of every filter of a kernel (its last three axes: channels, "
        "kh, kw), e.g. each of the 16 filters of K[16, 1, 7, 7]"
    ),
    "norm": "norm <= c or == c: the Frobenius norm of the whole parameter",
}


@dataclass(frozen=True)
class Constraint:
    kind: str
    compare: str | None = None  # "<=" or "==" for norm kinds
    bound: float | None = None
    mask: Callable[[], torch.Tensor] | None = None  # evaluated once, at build

    def project(self, p: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Project ``p`` in place."""
        if self.kind == "mask":
            p.mul_(mask)
        elif self.kind == "nonneg":
            p.clamp_(min=0)
        elif self.kind == "symmetric":
            p.copy_((p + p.T) / 2)
        elif self.kind == "zero_diag":
            p.fill_diagonal_(0)
        else:
            self._rescale(p)

    def _rescale(self, p: torch.Tensor) -> None:
        if self.kind == "col_norm":
            norms = p.norm(dim=0, keepdim=True)
        elif self.kind == "row_norm":
            norms = p.norm(dim=1, keepdim=True)
        elif self.kind == "filter_norm":
            norms = p.flatten(-3).norm(dim=-1)[..., None, None, None]
        else:
            norms = p.norm()
        if self.compare == "<=":
            scale = torch.clamp(self.bound / norms.clamp_min(1e-30), max=1)
        else:
            # a zero column has no direction to rescale; it is left at zero
            scale = torch.where(norms > 0, self.bound / norms.clamp_min(1e-30), torch.zeros_like(norms))
        p.mul_(scale)


def sort_constraints(constraints: list[Constraint]) -> list[Constraint]:
    return sorted(constraints, key=lambda c: ORDER.index(c.kind))
