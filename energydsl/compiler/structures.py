"""Structures: graphs built with networkx (grids, tori, chains, trees)."""

from __future__ import annotations



from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.expr.compiler import Symbol, Value
from energydsl.compiler.common import spec_dir
from energydsl.compiler.program import Variable

STRUCTURES = {
    "grid": ("rows", "cols"),
    "torus": ("rows", "cols"),
    "chain": ("length",),
    "tree": ("branching", "depth", "edges", "file", "root"),
}




class StructuresStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _structure(self, decl: S.GraphDecl, latent: Variable) -> st.Structure:
        node, name = decl.value, decl.name.name
        if not isinstance(node, S.Call) or node.func not in STRUCTURES:
            func = node.func if isinstance(node, S.Call) else None
            hint = (did_you_mean(func, STRUCTURES) if func else None) or one_of(STRUCTURES)
            span = node.func_span if isinstance(node, S.Call) else node.span
            raise SpecError(f"unknown structure '{func}'" if func else "expected a structure", span, hint=hint)
        slots = self.consts.arguments(node, len(STRUCTURES[node.func]), STRUCTURES[node.func])
        try:
            structure = self._build_structure(name, node, slots, latent)
        except st.StructureError as error:
            raise SpecError(str(error), decl.value.span) from None
        _check_structure_size(node, structure.size, latent)  # a tree from edges or a file
        self._declare(decl.name, Symbol("graph", Value(()), lambda env: None))
        return structure

    def _build_structure(self, name: str, node: S.Call, slots, latent: Variable) -> st.Structure:
        """The structure; when the arguments give its size, that is checked before it is built."""
        integer = self.consts.integer
        if node.func in ("grid", "torus"):
            self.consts.required(node, slots, 2)
            rows, cols = integer(slots[0], "the number of rows"), integer(slots[1], "the number of columns")
            _check_structure_size(node, rows * cols, latent)
            builder = st.grid if node.func == "grid" else st.torus
            return builder(name, rows, cols)
        if node.func == "chain":
            self.consts.required(node, slots, 1)
            length = integer(slots[0], "the length")
            _check_structure_size(node, length, latent)
            return st.chain(name, length)
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
            return st.tree_from_edges(name, self._edges(edges), root)
        if not isinstance(path, S.String):
            raise SpecError('file = expects a path in quotes, e.g. file = "tree.gml"', path.span)
        return st.tree_from_file(name, spec_dir(self.spec.path) / path.value, root)

    def _edges(self, node: S.Expr) -> list[tuple[int, int]]:
        if not isinstance(node, S.ListExpr):
            raise SpecError("edges = expects a list of [parent, child] pairs", node.span)
        edges = []
        for item in node.items:
            if not isinstance(item, S.ListExpr) or len(item.items) != 2:
                raise SpecError("each edge is a pair [parent, child]", item.span)
            edges.append(tuple(self.consts.integer(n, "a node", 0) for n in item.items))
        return edges

    def structure_argument(self, node: S.Expr | None, what: str, kinds=("grid", "torus", "chain", "tree")):
        """The structure named by ``node`` (a pool family or matrix argument)."""
        if not isinstance(node, S.Name) or node.id not in self.structures:
            label = node.id if isinstance(node, S.Name) else None
            hint = (did_you_mean(label, self.structures) if label else None) or (
                one_of(self.structures) if self.structures else "declare one with 'graph T = tree(2, 5)'")
            raise SpecError(f"{what} needs the name of a structure", node.span if node else None, hint=hint)
        structure = self.structures[node.id]
        if structure.kind not in kinds:
            raise SpecError(f"{what} needs a {' or '.join(kinds)}, '{node.id}' is a {structure.kind}", node.span)
        return structure



def _check_structure_size(node: S.Call, units: int, latent: Variable) -> None:
    if units != latent.shape[0]:
        count = f"{units}" if units <= st.MAX_UNITS else f"more than {st.MAX_UNITS:,}"
        raise SpecError(f"{node.func}(...) has {count} units, but the latent '{latent.name}' has {latent.shape[0]}",
                        node.span)  # fmt: skip
