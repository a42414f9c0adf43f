"""The energy terms: one module per term, registered here (one line each).

A new term is a :class:`Term` subclass in a module of its own and one line below; a term
from another package registers through the ``energydsl.terms`` entry point group instead
(see the README's "Extending energydsl").
"""

from energydsl.terms import auxk, group_l2, inhibition, l0, l1, matryoshka, soft_l0, sqerr, tree_group, xent
from energydsl.terms.base import TERMS, BoundTerm, GroupTerm, Option, ProxTerm, SeparableTerm, Term, VaryingWeight

TERMS.register(sqerr.sqerr)
TERMS.register(l1.l1)
TERMS.register(group_l2.group_l2)
TERMS.register(tree_group.tree_group)
TERMS.register(inhibition.inhibition)
TERMS.register(xent.xent)
TERMS.register(l0.l0)
TERMS.register(soft_l0.soft_l0)
TERMS.register(matryoshka.matryoshka)
TERMS.register(auxk.auxk)

__all__ = ["TERMS", "BoundTerm", "GroupTerm", "Option", "ProxTerm", "SeparableTerm", "Term", "VaryingWeight"]
