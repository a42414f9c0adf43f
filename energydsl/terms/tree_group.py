"""The energy term ``tree_group``: tree-structured sparsity: Σ over the nodes of T of ‖v_{subtree(node)}‖₂."""

from __future__ import annotations

from energydsl.ops.pools import PoolFamily
from energydsl.ops.structures import subtrees
from energydsl.terms.base import GroupTerm


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
