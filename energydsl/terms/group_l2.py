"""The energy term ``group_l2``: group sparsity Σⱼ ‖v_{Pⱼ}‖₂ over the pools of a family P (weighted: sqrt(Σ wᵢvᵢ²))."""

from __future__ import annotations

from energydsl.terms.base import GroupTerm


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
