"""Walks over the syntax of expressions: the names they read, and the subexpressions a recurrence computes once."""

from __future__ import annotations

from energydsl.lang import spec as S


def children(node: S.Expr) -> list[S.Expr]:
    """The subexpressions directly under ``node``."""
    children = [getattr(node, f) for f in ("left", "right", "operand", "steps", "body") if hasattr(node, f)]
    children += list(getattr(node, "args", ())) + [kw.value for kw in getattr(node, "kwargs", ())]
    return children + list(getattr(node, "items", ()))


def names_read(node: S.Expr) -> set[str]:
    """Every name an expression reads (not the names of the functions it calls)."""
    if isinstance(node, S.Name):
        return {node.id}
    return set().union(*map(names_read, children(node)))


def functions_called(node: S.Expr) -> set[str]:
    """The names of every function an expression calls."""
    called = {node.func} if isinstance(node, S.Call) else set()
    return called.union(*map(functions_called, children(node)))


def _reads(node: S.Expr, name: str) -> bool:
    if isinstance(node, S.Name):
        return node.id == name
    return any(_reads(child, name) for child in children(node))


def hoist(node: S.Expr, state: str) -> S.Expr:
    """Mark state-free subtrees of a recurrent body so they are computed once.

    The marking is a ``Call`` to the internal function ``__once__``, which
    :class:`ExprCompiler` caches per evaluation.
    """
    if not _reads(node, state):
        if isinstance(node, (S.Number, S.Name)):
            return node
        return S.Call(span=node.span, func="__once__", func_span=node.span, args=(node,))
    updates = {}
    for attr in ("left", "right", "operand"):
        if hasattr(node, attr):
            updates[attr] = hoist(getattr(node, attr), state)
    if isinstance(node, S.Call):
        updates["args"] = tuple(hoist(a, state) for a in node.args)
        updates["kwargs"] = tuple(kw.model_copy(update={"value": hoist(kw.value, state)}) for kw in node.kwargs)
    return node.model_copy(update=updates)
