"""Structures over latent units, built with networkx: grids, tori, chains, trees, forests.

Unit ``i`` of the latent is node ``i`` of the structure.  Grids and tori number
their nodes row by row (unit ``r * w + c`` sits at row r, column c); trees number
theirs from 0 at the root, and a given tree must use the nodes 0..n-1; a forest
numbers its roots first, then their children, level by level.

From a structure come pool families (``windows``, ``neighborhoods``,
``subtrees``) and matrices (``tree_inhibition``, ``grid_inhibition``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np

from energydsl.errors import UserError

# The most units a structure may have: a structure is built, and its pools and matrices
# computed, when the spec is checked, so its size is checked before it is built.
MAX_UNITS = 1_000_000
TREE_KINDS = ("tree", "forest")  # the structures with parents, subtrees and branches


class StructureError(UserError):
    """A structure that is not what it claims; the compiler adds the location."""


def _check_units(what: str, units: int) -> None:
    if units > MAX_UNITS:
        raise StructureError(f"{what} is too large: more than {MAX_UNITS:,} units")


def tree_units(branching: int, depth: int) -> int:
    """The nodes of a complete tree, counted up to just past MAX_UNITS (depth may be huge)."""
    if branching == 1:
        return depth + 1
    units, level = 0, 1
    for _ in range(depth + 1):
        units, level = units + level, level * branching
        if units > MAX_UNITS:
            break
    return units


@dataclass(frozen=True, eq=False)
class Structure:
    name: str
    kind: str  # grid | torus | chain | tree | forest
    graph: nx.Graph  # undirected; for trees and forests, every edge joins a parent and a child
    shape: tuple[int, ...] | None = None  # (h, w) for grids and tori
    root: int | None = None  # trees
    forest_roots: tuple[int, ...] = ()  # forests: the root of each tree

    @property
    def size(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def roots(self) -> tuple[int, ...]:
        """The root of every tree: one for a tree, one per tree for a forest."""
        return self.forest_roots or (self.root,)

    @cached_property
    def directed(self) -> nx.DiGraph:
        """The edges pointing from each parent to its children."""
        directed = nx.DiGraph()
        directed.add_nodes_from(range(self.size))
        for root in self.roots:
            directed.add_edges_from(nx.bfs_edges(self.graph, root))
        return directed

    @cached_property
    def distances(self) -> np.ndarray:
        """Shortest-path distance between every two units, ``(n, n)``."""
        n = self.size
        out = np.full((n, n), np.inf)
        for source, lengths in nx.all_pairs_shortest_path_length(self.graph):
            for target, length in lengths.items():
                out[source, target] = length
        return out

    @cached_property
    def parents(self) -> np.ndarray:
        """Each node's parent (-1 at a root); trees and forests only."""
        parents = np.full(self.size, -1)
        for parent, child in self.directed.edges:
            parents[child] = parent
        return parents

    @cached_property
    def depths(self) -> np.ndarray:
        """Each node's distance from the root of its tree."""
        depths = np.zeros(self.size, dtype=np.int64)
        for parent, child in nx.edge_bfs(self.directed, self.roots):  # parents before their children
            depths[child] = depths[parent] + 1
        return depths

    @cached_property
    def descendants(self) -> tuple[tuple[int, ...], ...]:
        """Each node's subtree: the node and all its descendants, sorted."""
        return tuple(tuple(sorted({i} | nx.descendants(self.directed, i))) for i in range(self.size))

    @cached_property
    def related(self) -> np.ndarray:
        """``related[i, j]``: j is i, an ancestor or a descendant of i (same branch)."""
        out = np.zeros((self.size, self.size), dtype=bool)
        for i, subtree in enumerate(self.descendants):
            out[i, list(subtree)] = True
        return out | out.T

    def positions(self) -> dict[int, tuple[float, float]]:
        """Where to draw each unit: grid coordinates, or a layered tree layout."""
        if self.shape is not None:
            h, w = self.shape
            return {i: (i % w, -(i // w)) for i in range(self.size)}
        if self.kind == "chain":
            return {i: (i, 0) for i in range(self.size)}
        return _tree_layout(self)


# ---------------------------------------------------------------- builders


def grid(name: str, h: int, w: int) -> Structure:
    """An h × w grid of units, 4-connected."""
    _check_units("grid()", h * w)
    graph = nx.convert_node_labels_to_integers(nx.grid_2d_graph(h, w), ordering="sorted")
    return Structure(name, "grid", graph, (h, w))


def torus(name: str, h: int, w: int) -> Structure:
    """An h × w grid whose edges wrap around (a torus), 4-connected."""
    _check_units("torus()", h * w)
    graph = nx.convert_node_labels_to_integers(nx.grid_2d_graph(h, w, periodic=True), ordering="sorted")
    return Structure(name, "torus", graph, (h, w))


def chain(name: str, n: int) -> Structure:
    """n units in a line."""
    _check_units("chain()", n)
    return Structure(name, "chain", nx.path_graph(n))


def balanced_tree(name: str, branching: int, depth: int) -> Structure:
    """A complete tree: every node has ``branching`` children down to ``depth`` (root at depth 0).

    Nodes are numbered breadth first, so ``tree(2, 5)`` has 63 units.
    """
    _check_units("tree()", tree_units(branching, depth))
    return _checked_tree(name, nx.balanced_tree(branching, depth), root=0)


def forest(name: str, trees: int, branching: int, depth: int) -> Structure:
    """``trees`` complete trees side by side, each of ``branching`` children per node down to ``depth``.

    Numbered level by level across the forest, as the ``features`` data source numbers its
    hierarchy: the roots are 0..trees-1, then come the roots' children (root 0's first), then
    theirs.  So node i of level ℓ ≥ 1 has parent first(ℓ−1) + (i − first(ℓ)) // branching.
    ``forest(64, 2, 2)`` has 64 · 7 = 448 units.
    """
    _check_units("forest()", trees * tree_units(branching, depth))
    graph = nx.empty_graph(trees)
    first, width = 0, trees  # the first node and the size of the level above
    for _ in range(depth):
        children = np.arange(first + width, first + width + width * branching)
        graph.add_edges_from(zip((first + (children - first - width) // branching).tolist(), children.tolist()))
        first, width = first + width, width * branching
    return Structure(name, "forest", graph, forest_roots=tuple(range(trees)))


def tree_from_edges(name: str, edges: list[tuple[int, int]], root: int = 0) -> Structure:
    """A tree given by its (parent, child) edges over the nodes 0..n-1."""
    graph = nx.Graph()
    graph.add_edges_from(edges)
    if not edges:
        graph.add_node(root)  # a tree of one node has no edges
    return _checked_tree(name, graph, root)


def tree_from_file(name: str, path: Path, root: int = 0) -> Structure:
    """A tree read from an edge list (``parent child`` per line) or a GML file."""
    try:
        if path.suffix.lower() == ".gml":
            graph = nx.read_gml(path, label="id")
        else:
            graph = nx.read_edgelist(path, nodetype=int)
    except FileNotFoundError:
        raise StructureError(f"tree file not found: {path}") from None
    except (OSError, ValueError, TypeError, nx.NetworkXError) as error:
        raise StructureError(f"cannot read tree file {path}: {error}") from None
    return _checked_tree(name, nx.Graph(graph), root)


def _checked_tree(name: str, graph: nx.Graph, root: int) -> Structure:
    n = graph.number_of_nodes()
    if n == 0:
        raise StructureError("the tree has no nodes")
    if set(graph.nodes) != set(range(n)):
        raise StructureError(f"tree nodes must be the numbers 0..{n - 1}")
    if not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise StructureError(f"this is not a tree: it has {parts} separate components")
    if graph.number_of_edges() != n - 1:
        cycle = nx.find_cycle(graph)
        raise StructureError(f"this is not a tree: it has a cycle through nodes {sorted({u for u, _ in cycle})}")
    if root not in graph:
        raise StructureError(f"root {root} is not a node of the tree")
    return Structure(name, "tree", graph, root=root)


def _tree_layout(structure: Structure) -> dict[int, tuple[float, float]]:
    """Leaves spread evenly along x; each parent centred over its children."""
    tree = structure.directed
    x: dict[int, float] = {}
    next_leaf = [0]

    def place(node: int) -> float:
        children = list(tree.successors(node))
        if not children:
            x[node] = next_leaf[0]
            next_leaf[0] += 1
        else:
            x[node] = sum(place(child) for child in children) / len(children)
        return x[node]

    for root in structure.roots:  # a forest's trees side by side
        place(root)
    return {i: (x[i], -float(structure.depths[i])) for i in range(structure.size)}


# ---------------------------------------------------------------- pools from structures


def windows(structure: Structure, size: int, stride: int, sigma: float | None = None):
    """Square windows of size × size units every ``stride`` rows and columns.

    On a torus the windows wrap around and start at every multiple of the stride;
    on a grid they stay inside it.  With ``sigma``, each unit of a window gets the
    weight exp(−d²/2σ²), d its distance from the window's centre (else None).
    Returns (pools, weights).
    """
    h, w = structure.shape
    if structure.kind == "torus":
        starts_r, starts_c = range(0, h, stride), range(0, w, stride)
    else:
        starts_r, starts_c = range(0, h - size + 1, stride), range(0, w - size + 1, stride)
    centre = (size - 1) / 2
    pools, weights = [], []
    for r in starts_r:
        for c in starts_c:
            cells = sorted((((r + i) % h) * w + (c + j) % w, i, j) for i in range(size) for j in range(size))
            pools.append(tuple(unit for unit, _, _ in cells))
            if sigma is not None:
                weights.append(tuple(math.exp(-((i - centre) ** 2 + (j - centre) ** 2) / (2 * sigma**2))
                                     for _, i, j in cells))  # fmt: skip
    return pools, (weights if sigma is not None else None)


def neighborhoods(structure: Structure, radius: int) -> list[tuple[int, ...]]:
    """For every unit, the units within ``radius`` steps of it (itself included)."""
    return [tuple(np.flatnonzero(structure.distances[i] <= radius).tolist()) for i in range(structure.size)]


def subtrees(structure: Structure) -> list[tuple[int, ...]]:
    """For every node of a tree or a forest, the node and all its descendants."""
    return list(structure.descendants)


# ---------------------------------------------------------------- matrices from structures


def tree_inhibition(structure: Structure) -> np.ndarray:
    """1 between units on different branches; 0 between a unit and its ancestors,
    its descendants and itself.  In a forest, units of different trees are on different
    branches (as if the roots hung from one unit that is not there)."""
    return (~structure.related).astype(np.float32)


def grid_inhibition(structure: Structure, radius: float | None = None, sigma: float | None = None) -> np.ndarray:
    """Inhibition that grows with distance on the map, 0 on the diagonal.

    ``radius``: 1 between units more than ``radius`` steps apart, else 0.
    ``sigma``: 1 − exp(−d²/2σ²), a smooth version.
    """
    d = structure.distances
    if sigma is not None:
        out = 1 - np.exp(-(d**2) / (2 * sigma**2))
    else:
        out = (d > radius).astype(np.float64)
    np.fill_diagonal(out, 0)
    return out.astype(np.float32)
