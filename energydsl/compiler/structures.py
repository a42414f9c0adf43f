"""Structures: graphs built with networkx (grids, tori, chains, trees, forests), one registry entry each.

``graph T = tree(2, 5)`` looks ``tree`` up in :data:`STRUCTURES`; the entry reads the
arguments, checks them and builds the :class:`~energydsl.ops.structures.Structure` with
the networkx builders of :mod:`energydsl.ops.structures`.  A new structure is a
:class:`StructureKind` subclass and one ``STRUCTURES.register`` line (or an entry point
in the ``energydsl.structures`` group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from energydsl.compiler.common import spec_dir
from energydsl.compiler.program import Variable
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.expr.compiler import Symbol, Value
from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.registry import Registry


class StructureKind:
    """One structure a ``graph`` declaration may build."""

    name: ClassVar[str]
    arguments: ClassVar[tuple[str, ...]]  # by position; also the keywords a spec may write
    # the ways a spec writes it, each with the builder whose docstring documents that form
    forms: ClassVar[tuple[tuple[str, Callable], ...]]

    @classmethod
    def build(cls, stage, name: str, node: S.Call, slots, latent: Variable) -> st.Structure:
        """The structure (``stage``: the compiler, for constants and the spec's directory); when the
        arguments give its size, that is checked before it is built."""
        raise NotImplementedError


STRUCTURES: Registry[type[StructureKind]] = Registry("structure", "energydsl.structures")


class Grid(StructureKind):
    name = "grid"
    arguments = ("rows", "cols")
    forms = (("grid(rows, cols)", st.grid),)
    builder: ClassVar[Callable] = st.grid

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        integer = stage.consts.integer
        stage.consts.required(node, slots, 2)
        rows, cols = integer(slots[0], "the number of rows"), integer(slots[1], "the number of columns")
        _check_structure_size(node, rows * cols, latent)
        return cls.builder(name, rows, cols)


class Torus(Grid):
    name = "torus"
    forms = (("torus(rows, cols)", st.torus),)
    builder = st.torus


class Chain(StructureKind):
    name = "chain"
    arguments = ("length",)
    forms = (("chain(length)", st.chain),)

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        stage.consts.required(node, slots, 1)
        length = stage.consts.integer(slots[0], "the length")
        _check_structure_size(node, length, latent)
        return st.chain(name, length)


class Tree(StructureKind):
    name = "tree"
    arguments = ("branching", "depth", "edges", "file", "root")
    forms = (
        ("tree(branching, depth)", st.balanced_tree),
        ("tree(edges = [[parent, child], ...], root = 0)", st.tree_from_edges),
        ('tree(file = "tree.gml", root = 0)', st.tree_from_file),
    )

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        integer = stage.consts.integer
        branching, depth, edges, path, root = slots
        root = 0 if root is None else integer(root, "the root", 0)
        given = [n for n in (branching, edges, path) if n is not None]
        if len(given) != 1 or (branching is None) != (depth is None):
            raise SpecError("tree() takes either branching and depth, or edges = [[parent, child], ...], "
                            "or file = \"tree.gml\"", node.span)  # fmt: skip
        if branching is not None:
            branching, depth = integer(branching, "the branching"), integer(depth, "the depth", 0)
            _check_structure_size(node, st.tree_units(branching, depth), latent)
            return st.balanced_tree(name, branching, depth)
        if edges is not None:
            return st.tree_from_edges(name, cls._edges(stage, edges), root)
        if not isinstance(path, S.String):
            raise SpecError('file = expects a path in quotes, e.g. file = "tree.gml"', path.span)
        return st.tree_from_file(name, spec_dir(stage.spec.path) / path.value, root)

    @staticmethod
    def _edges(stage, node: S.Expr) -> list[tuple[int, int]]:
        if not isinstance(node, S.ListExpr):
            raise SpecError("edges = expects a list of [parent, child] pairs", node.span)
        edges = []
        for item in node.items:
            if not isinstance(item, S.ListExpr) or len(item.items) != 2:
                raise SpecError("each edge is a pair [parent, child]", item.span)
            edges.append(tuple(stage.consts.integer(n, "a node", 0) for n in item.items))
        return edges


class Forest(StructureKind):
    name = "forest"
    arguments = ("trees", "branching", "depth")
    forms = (("forest(trees, branching, depth)", st.forest),)

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        integer = stage.consts.integer
        stage.consts.required(node, slots, 3)
        trees, branching = integer(slots[0], "the number of trees", 1), integer(slots[1], "the branching", 1)
        depth = integer(slots[2], "the depth", 0)
        _check_structure_size(node, trees * st.tree_units(branching, depth), latent)
        return st.forest(name, trees, branching, depth)


STRUCTURES.register(Grid)
STRUCTURES.register(Torus)
STRUCTURES.register(Chain)
STRUCTURES.register(Tree)
STRUCTURES.register(Forest)


class StructuresStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _structure(self, decl: S.GraphDecl, latent: Variable) -> st.Structure:
        node, name = decl.value, decl.name.name
        if not isinstance(node, S.Call) or node.func not in STRUCTURES:
            func = node.func if isinstance(node, S.Call) else None
            hint = (did_you_mean(func, STRUCTURES) if func else None) or one_of(STRUCTURES)
            span = node.func_span if isinstance(node, S.Call) else node.span
            raise SpecError(f"unknown structure '{func}'" if func else "expected a structure", span, hint=hint)
        entry = STRUCTURES[node.func]
        slots = self.consts.arguments(node, len(entry.arguments), entry.arguments)
        try:
            structure = entry.build(self, name, node, slots, latent)
        except st.StructureError as error:
            raise SpecError(str(error), decl.value.span) from None
        _check_structure_size(node, structure.size, latent)  # a tree from edges or a file
        self._declare(decl.name, Symbol("graph", Value(()), lambda env: None))
        return structure

    def structure_argument(self, node: S.Expr | None, what: str, kinds: tuple[str, ...] | None = None):
        """The structure named by ``node`` (a pool family or matrix argument), of one of ``kinds``
        (default: any)."""
        if not isinstance(node, S.Name) or node.id not in self.structures:
            label = node.id if isinstance(node, S.Name) else None
            hint = (did_you_mean(label, self.structures) if label else None) or (
                one_of(self.structures) if self.structures else "declare one with 'graph T = tree(2, 5)'")
            raise SpecError(f"{what} needs the name of a structure", node.span if node else None, hint=hint)
        structure = self.structures[node.id]
        if kinds is not None and structure.kind not in kinds:
            raise SpecError(f"{what} needs a {' or '.join(kinds)}, '{node.id}' is a {structure.kind}", node.span)
        return structure


def _check_structure_size(node: S.Call, units: int, latent: Variable) -> None:
    if units != latent.shape[0]:
        count = f"{units}" if units <= st.MAX_UNITS else f"more than {st.MAX_UNITS:,}"
        raise SpecError(f"{node.func}(...) has {count} units, but the latent '{latent.name}' has {latent.shape[0]}",
                        node.span)  # fmt: skip
