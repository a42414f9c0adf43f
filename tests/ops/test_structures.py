"""Structures over latent units (trees, grids, tori, chains) and what is built from them.

Every expected value here is computed independently of networkx: tree parents from
breadth-first numbering, torus distances from wrapped coordinates, window contents
from row/column arithmetic.
"""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest
import torch

import energydsl
from energydsl.ops import structures as st
from energydsl.ops.pools import PoolFamily, blocks
from energydsl.ops.structures import StructureError

# ---------------------------------------------------------------- helpers


def torus_distance(h: int, w: int, a: int, b: int) -> int:
    """4-connected steps between units a and b of an h × w torus (row-major numbering)."""
    dr, dc = abs(a // w - b // w), abs(a % w - b % w)
    return min(dr, h - dr) + min(dc, w - dc)


def grid_distance(w: int, a: int, b: int) -> int:
    return abs(a // w - b // w) + abs(a % w - b % w)


def balanced_parents(branching: int, depth: int) -> list[int]:
    """Breadth-first numbering: node i > 0 has parent (i - 1) // branching."""
    n = sum(branching**d for d in range(depth + 1))
    return [-1] + [(i - 1) // branching for i in range(1, n)]


def ancestors(parents, i: int) -> set[int]:
    out = set()
    while parents[i] >= 0:
        i = int(parents[i])
        out.add(i)
    return out


def family(name: str, members, weights=None, size=None) -> PoolFamily:
    members = tuple(tuple(m) for m in members)
    size = size if size is not None else 1 + max(u for m in members for u in m)
    names = tuple(f"{name}[{i}]" for i in range(len(members)))
    return PoolFamily(name, size, names, members, None if weights is None else tuple(map(tuple, weights)))


# ---------------------------------------------------------------- trees


@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2), (2, 0), (4, 1)])
def test_balanced_tree_size_parents_and_depths(branching, depth):
    tree = st.balanced_tree("T", branching, depth)
    expected = balanced_parents(branching, depth)
    assert tree.kind == "tree" and tree.root == 0
    assert tree.size == len(expected) == (branching ** (depth + 1) - 1) // (branching - 1)
    assert tree.parents.tolist() == expected
    depths = [len(ancestors(expected, i)) for i in range(tree.size)]
    assert tree.depths.tolist() == depths
    assert max(depths) == depth


def test_balanced_tree_too_large_is_a_structure_error():
    with pytest.raises(StructureError, match="too large"):
        st.balanced_tree("T", 10, 7)


def test_tree_from_edges_with_another_root():
    # 0 - 1 - 2, and 1 - 3: rooted at 2
    tree = st.tree_from_edges("T", [(0, 1), (1, 2), (1, 3)], root=2)
    assert tree.size == 4 and tree.root == 2
    assert tree.parents.tolist() == [1, 2, -1, 1]
    assert tree.depths.tolist() == [2, 1, 0, 2]
    assert st.subtrees(tree) == [(0,), (0, 1, 3), (0, 1, 2, 3), (3,)]


def test_tree_from_edges_in_any_order_and_numbering():
    edges = [(3, 1), (0, 3), (3, 2), (0, 4), (4, 5)]
    tree = st.tree_from_edges("T", edges)
    assert tree.parents.tolist() == [-1, 3, 3, 0, 0, 4]
    assert tree.depths.tolist() == [0, 2, 2, 1, 1, 2]


def test_tree_from_edge_list_file(tmp_path):
    path = tmp_path / "tree.txt"
    path.write_text("# parent child\n0 1\n0 2\n1 3\n1 4\n2 5\n")
    tree = st.tree_from_file("T", path)
    assert tree.size == 6
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2]


def test_tree_from_gml_file(tmp_path):
    graph = nx.DiGraph([(0, 1), (0, 2), (2, 3), (2, 4), (4, 5)])  # directed parent -> child
    path = tmp_path / "tree.gml"
    nx.write_gml(graph, path)
    tree = st.tree_from_file("T", path)
    assert tree.size == 6
    assert tree.parents.tolist() == [-1, 0, 0, 2, 2, 4]
    assert st.subtrees(tree)[2] == (2, 3, 4, 5)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(0, 1), (1, 2), (2, 0)], "cycle"),
        ([(0, 1), (0, 2), (1, 2), (2, 3)], "cycle"),
        ([(0, 1), (2, 3)], "2 separate components"),
        ([(0, 1), (2, 3), (4, 5)], "3 separate components"),
        ([(1, 2), (2, 3)], r"0\.\.2"),
        ([(0, 1), (0, 5)], r"0\.\.2"),
    ],
)
def test_not_a_tree_is_a_structure_error(edges, message):
    with pytest.raises(StructureError, match=message):
        st.tree_from_edges("T", edges)


def test_root_outside_the_tree_is_a_structure_error():
    with pytest.raises(StructureError, match="root 7"):
        st.tree_from_edges("T", [(0, 1), (0, 2)], root=7)


def test_tree_file_errors(tmp_path):
    with pytest.raises(StructureError, match="not found"):
        st.tree_from_file("T", tmp_path / "missing.txt")
    cycle = tmp_path / "cycle.txt"
    cycle.write_text("0 1\n1 2\n2 0\n")
    with pytest.raises(StructureError, match="cycle"):
        st.tree_from_file("T", cycle)
    words = tmp_path / "words.txt"
    words.write_text("a b\n")
    with pytest.raises(StructureError):
        st.tree_from_file("T", words)
    forest = tmp_path / "forest.gml"
    nx.write_gml(nx.Graph([(0, 1), (2, 3)]), forest)
    with pytest.raises(StructureError, match="components"):
        st.tree_from_file("T", forest)
    # a StructureError is a user error: the CLI shows it without a traceback
    assert issubclass(StructureError, energydsl.UserError)


def forest_parents(trees: int, branching: int, depth: int) -> list[int]:
    """Level-by-level numbering across the forest: level l starts at first(l), and its node i has
    parent first(l - 1) + (i - first(l)) // branching; roots have none."""
    parents, first, width = [-1] * trees, 0, trees
    for _ in range(depth):
        parents += [first + i // branching for i in range(width * branching)]
        first, width = first + width, width * branching
    return parents


@pytest.mark.parametrize(("trees", "branching", "depth"), [(3, 2, 2), (4, 3, 1), (5, 2, 0), (1, 2, 3)])
def test_forest_parents_depths_and_subtrees(trees, branching, depth):
    forest = st.forest("F", trees, branching, depth)
    parents = forest_parents(trees, branching, depth)
    assert forest.kind == "forest" and forest.roots == tuple(range(trees))
    assert forest.size == trees * (branching ** (depth + 1) - 1) // (branching - 1)
    assert forest.parents.tolist() == parents
    assert forest.depths.tolist() == [len(ancestors(parents, i)) for i in range(forest.size)]
    for i, pool in enumerate(st.subtrees(forest)):
        assert list(pool) == sorted(j for j in range(forest.size) if j == i or i in ancestors(parents, j))
    # one tree's forest is the balanced tree, numbered the same way
    if trees == 1:
        assert forest.parents.tolist() == balanced_parents(branching, depth)


def test_forest_inhibition_crosses_trees_but_not_branches():
    forest = st.forest("F", 2, 2, 1)  # roots 0, 1; children 2, 3 of 0 and 4, 5 of 1
    S = st.tree_inhibition(forest)
    parents = forest_parents(2, 2, 1)
    for i, j in itertools.product(range(6), range(6)):
        same_branch = i == j or i in ancestors(parents, j) or j in ancestors(parents, i)
        assert S[i, j] == (0.0 if same_branch else 1.0), (i, j)
    assert S[0, 1] == 1 and S[2, 3] == 1 and S[0, 4] == 1 and S[0, 2] == 0


def test_forest_in_a_spec_makes_tree_group_pools():
    source = TREE_SPEC.format(n=14, tree="forest(2, 2, 2)")
    program = energydsl.compile_program(source)
    assert program.structures["T"].parents.tolist() == forest_parents(2, 2, 2)
    model = energydsl.load(source)
    z = torch.zeros(1, 14)
    z[0, [0, 2, 6]] = torch.tensor([3.0, 4.0, 12.0])  # root 0, its child 2, 2's child 6
    # groups: 0 holds all three (13), 2 holds 2 and 6 (sqrt(160)), 6 holds 6 (12)
    assert model.terms(torch.zeros(1, 8), z)["tree"].item() == pytest.approx(0.1 * (13 + math.sqrt(160) + 12))


def test_forest_size_must_match_the_latent():
    with pytest.raises(energydsl.SpecError, match="14 units.*'z' has 10"):
        energydsl.compile_program(TREE_SPEC.format(n=10, tree="forest(2, 2, 2)"))


# ---------------------------------------------------------------- trees in a spec

TREE_SPEC = """model t
data synthetic(dim = 8, atoms = {n}, count = 40)
input x[8]
latent z[{n}]
graph T = {tree}
param W[8, {n}]
energy
  recon : 0.5 * sqerr(x, W @ z)
  tree  : 0.1 * tree_group(z, T)
infer z by fista(steps = 10)
"""
GRAPH_LINE = 5


def check_points_at_graph(error: energydsl.SpecError, source: str, path: str) -> None:
    line = source.splitlines()[GRAPH_LINE - 1]
    column = line.index("tree(") + 1
    assert error.span is not None and error.span.line == GRAPH_LINE
    assert error.span.column == column
    assert str(error).startswith(f"{path}:{GRAPH_LINE}:{column}: ")
    assert line in error.render()


@pytest.mark.parametrize(
    ("n", "tree", "message"),
    [
        (3, "tree(edges = [[0, 1], [1, 2], [2, 0]])", "cycle"),
        (4, "tree(edges = [[0, 1], [2, 3]])", "2 separate components"),
        (3, "tree(edges = [[1, 2], [2, 3]])", r"0\.\.2"),
        (3, "tree(edges = [[0, 1], [0, 2]], root = 5)", "root 5"),
        (10, "tree(branching = 2, depth = 2)", "7 units.*'z' has 10"),
        (7, "tree(edges = [[0, 1], [0, 2]])", "3 units.*'z' has 7"),
    ],
)
def test_bad_tree_in_a_spec_is_located_at_the_graph(tmp_path, n, tree, message):
    source = TREE_SPEC.format(n=n, tree=tree)
    with pytest.raises(energydsl.SpecError, match=message) as info:
        energydsl.compile_program(source)
    check_points_at_graph(info.value, source, "<spec>")
    # the same from a file: the message starts with file:line:col
    path = tmp_path / "bad.energy"
    path.write_text(source)
    with pytest.raises(energydsl.SpecError, match=message) as info:
        energydsl.compile_program(path)
    check_points_at_graph(info.value, source, str(path))


def test_bad_tree_files_in_a_spec_are_located_at_the_graph(tmp_path):
    missing = tmp_path / "missing.txt"
    cycle = tmp_path / "cycle.txt"
    cycle.write_text("0 1\n1 2\n2 0\n")
    for file, message in ((missing, "not found"), (cycle, "cycle")):
        source = TREE_SPEC.format(n=3, tree=f'tree(file = "{file.as_posix()}")')
        with pytest.raises(energydsl.SpecError, match=message) as info:
            energydsl.compile_program(source)
        check_points_at_graph(info.value, source, "<spec>")


def test_tree_file_relative_to_the_spec(tmp_path):
    (tmp_path / "tree.txt").write_text("0 1\n0 2\n")
    path = tmp_path / "ok.energy"
    path.write_text(TREE_SPEC.format(n=3, tree='tree(file = "tree.txt")'))
    program = energydsl.compile_program(path)
    assert program.structures["T"].parents.tolist() == [-1, 0, 0]


def test_grid_size_must_match_the_latent():
    source = TREE_SPEC.format(n=10, tree="torus(3, 3)").replace("tree  : 0.1 * tree_group(z, T)", "")
    with pytest.raises(energydsl.SpecError, match="9 units.*'z' has 10") as info:
        energydsl.compile_program(source)
    assert info.value.span.line == GRAPH_LINE


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize(("h", "w", "size", "stride"), [(4, 4, 2, 1), (6, 6, 3, 3), (6, 4, 2, 2), (6, 6, 4, 2)])
def test_torus_windows_wrap_around(h, w, size, stride):
    torus = st.torus("M", h, w)
    pools, weights = st.windows(torus, size, stride)
    assert weights is None
    assert len(pools) == (h // stride) * (w // stride)
    starts = [(r, c) for r in range(0, h, stride) for c in range(0, w, stride)]
    for pool, (r, c) in zip(pools, starts):
        expected = sorted(((r + i) % h) * w + (c + j) % w for i in range(size) for j in range(size))
        assert list(pool) == expected
        assert len(set(pool)) == size * size
    # every unit lies in (size / stride)² windows
    coverage = np.bincount([u for p in pools for u in p], minlength=h * w)
    assert (coverage == (size // stride) ** 2).all()


def test_torus_window_at_the_corner_holds_the_four_corners():
    pools, _ = st.windows(st.torus("M", 4, 4), 2, 1)
    assert (0, 3, 12, 15) in pools


@pytest.mark.parametrize(("h", "w", "size", "stride"), [(5, 5, 3, 2), (4, 6, 2, 1), (5, 4, 3, 1)])
def test_grid_windows_stay_inside(h, w, size, stride):
    pools, _ = st.windows(st.grid("M", h, w), size, stride)
    assert len(pools) == len(range(0, h - size + 1, stride)) * len(range(0, w - size + 1, stride))
    for pool in pools:
        rows = {u // w for u in pool}
        cols = {u % w for u in pool}
        # a contiguous size × size square: no wrapping
        assert len(pool) == size * size
        assert max(rows) - min(rows) == size - 1 and max(cols) - min(cols) == size - 1
        assert set(pool) == {r * w + c for r in rows for c in cols}


@pytest.mark.parametrize(("size", "sigma"), [(3, 1.0), (4, 1.5), (5, 0.7)])
def test_gaussian_window_weights_peak_at_the_centre(size, sigma):
    h = w = 8
    pools, weights = st.windows(st.torus("M", h, w), size, 2, sigma=sigma)
    assert weights is not None and len(weights) == len(pools)
    centre = (size - 1) / 2
    starts = [(r, c) for r in range(0, h, 2) for c in range(0, w, 2)]
    for pool, ws, (r, c) in zip(pools, weights, starts):
        assert len(ws) == len(pool)
        for unit, weight in zip(pool, ws):
            # the unit's offset inside the window, undoing the wrap-around
            i, j = (unit // w - r) % h, (unit % w - c) % w
            assert weight == pytest.approx(math.exp(-((i - centre) ** 2 + (j - centre) ** 2) / (2 * sigma**2)))
        ws = np.array(ws)
        offsets = [((u // w - r) % h, (u % w - c) % w) for u in pool]
        middle = [k for k, (i, j) in enumerate(offsets) if abs(i - centre) <= 0.5 and abs(j - centre) <= 0.5]
        assert ws.max() == pytest.approx(ws[middle].max())
        assert all(ws[k] == pytest.approx(ws.max()) for k in middle)
        corners = [k for k, (i, j) in enumerate(offsets) if i in (0, size - 1) and j in (0, size - 1)]
        assert all(ws[k] == pytest.approx(ws.min()) for k in corners)
        assert ws.min() < ws.max()


def test_windows_in_a_spec():
    source = """
    data synthetic(dim = 8, atoms = 16, count = 40)
    input x[8]
    latent z[16]
    graph M = torus(4, 4)
    pools P = windows(M, size = 2, stride = 1)
    pools Q = windows(M, size = 3, stride = 2, sigma = 1.0)
    param W[8, 16]
    energy
      recon : 0.5 * sqerr(x, W @ z)
      group : 0.1 * group_l2(z, P)
    """
    program = energydsl.compile_program(source)
    P, Q = program.pools["P"], program.pools["Q"]
    assert P.size == 16 and len(P.members) == 16 and P.weights is None
    assert P.pool_names[0] == "P[0]"
    assert len(Q.members) == 4 and Q.weights is not None
    assert all(len(m) == len(ws) == 9 for m, ws in zip(Q.members, Q.weights))


def test_windows_larger_than_the_map_are_a_spec_error():
    source = """
    data synthetic(dim = 8, atoms = 16, count = 40)
    input x[8]
    latent z[16]
    graph M = torus(4, 4)
    pools P = windows(M, size = 5, stride = 1)
    param W[8, 16]
    energy
      recon : 0.5 * sqerr(x, W @ z)
    """
    with pytest.raises(energydsl.SpecError, match="do not fit"):
        energydsl.compile_program(source)


# ---------------------------------------------------------------- neighborhoods, subtrees


@pytest.mark.parametrize(
    ("h", "w", "radius", "size"), [(6, 6, 0, 1), (6, 6, 1, 5), (6, 6, 2, 13), (7, 7, 3, 25), (4, 4, 2, 11)]
)
def test_torus_neighborhood_sizes(h, w, radius, size):
    torus = st.torus("M", h, w)
    pools = st.neighborhoods(torus, radius)
    assert len(pools) == h * w
    for i, pool in enumerate(pools):
        assert len(pool) == size
        assert i in pool
        assert set(pool) == {j for j in range(h * w) if torus_distance(h, w, i, j) <= radius}
    membership = np.zeros((h * w, h * w), dtype=bool)
    for i, pool in enumerate(pools):
        membership[i, list(pool)] = True
    assert (membership == membership.T).all()


def test_grid_and_chain_neighborhoods_stop_at_the_border():
    pools = st.neighborhoods(st.grid("M", 3, 3), 1)
    assert [len(p) for p in pools] == [3, 4, 3, 4, 5, 4, 3, 4, 3]
    chain = st.neighborhoods(st.chain("C", 5), 1)
    assert chain == [(0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4)]


def test_tree_neighborhoods_are_node_parent_children():
    tree = st.balanced_tree("T", 2, 2)
    pools = st.neighborhoods(tree, 1)
    assert pools[0] == (0, 1, 2)
    assert pools[1] == (0, 1, 3, 4)
    assert pools[6] == (2, 6)


@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2)])
def test_subtrees_are_node_and_descendants(branching, depth):
    tree = st.balanced_tree("T", branching, depth)
    parents = balanced_parents(branching, depth)
    pools = st.subtrees(tree)
    assert len(pools) == tree.size
    for i, pool in enumerate(pools):
        expected = sorted(j for j in range(tree.size) if j == i or i in ancestors(parents, j))
        assert list(pool) == expected
    assert pools[0] == tuple(range(tree.size))
    leaves = [i for i in range(tree.size) if i not in parents]
    assert all(pools[i] == (i,) for i in leaves)


# ---------------------------------------------------------------- inhibition matrices


@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2)])
def test_tree_inhibition(branching, depth):
    tree = st.balanced_tree("T", branching, depth)
    parents = balanced_parents(branching, depth)
    S = st.tree_inhibition(tree)
    n = tree.size
    assert S.shape == (n, n)
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_array_equal(np.diag(S), np.zeros(n))
    for i, j in itertools.product(range(n), range(n)):
        same_branch = i == j or i in ancestors(parents, j) or j in ancestors(parents, i)
        assert S[i, j] == (0.0 if same_branch else 1.0), (i, j)


def test_tree_inhibition_of_a_chain_shaped_tree_is_zero():
    tree = st.tree_from_edges("T", [(0, 1), (1, 2), (2, 3)])
    assert not st.tree_inhibition(tree).any()


@pytest.mark.parametrize(("kind", "radius"), [("torus", 1), ("torus", 2), ("grid", 1), ("grid", 2.5)])
def test_grid_inhibition_radius(kind, radius):
    h, w = 5, 6
    structure = (st.torus if kind == "torus" else st.grid)("M", h, w)
    S = st.grid_inhibition(structure, radius=radius)
    n = h * w
    assert S.shape == (n, n)
    np.testing.assert_array_equal(S, S.T)
    for i, j in itertools.product(range(n), range(n)):
        d = torus_distance(h, w, i, j) if kind == "torus" else grid_distance(w, i, j)
        assert S[i, j] == (1.0 if d > radius else 0.0), (i, j, d)


def test_grid_inhibition_sigma_grows_with_distance():
    torus = st.torus("M", 6, 6)
    S = st.grid_inhibition(torus, sigma=1.5)
    for j in range(36):
        d = torus_distance(6, 6, 0, j)
        assert S[0, j] == pytest.approx(1 - math.exp(-(d**2) / (2 * 1.5**2)), abs=1e-6)
    assert S[0, 0] == 0
    np.testing.assert_allclose(S, S.T)


def test_inhibition_matrices_in_a_spec(tree_inhibition_source):
    source = tree_inhibition_source
    model = energydsl.load(source)
    expected = st.tree_inhibition(st.balanced_tree("T", 2, 3))
    np.testing.assert_array_equal(model.params["S"].detach().numpy(), expected)


# ---------------------------------------------------------------- laminar levels


def test_blocks_are_one_level():
    fam = blocks("B", 12, 4)
    assert fam.laminar_levels() == [[0, 1, 2]]


@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2), (2, 0)])
def test_subtrees_are_depth_plus_one_disjoint_levels(branching, depth):
    tree = st.balanced_tree("T", branching, depth)
    fam = family("T", st.subtrees(tree), size=tree.size)
    levels = fam.laminar_levels()
    assert levels is not None and len(levels) == depth + 1
    assert sorted(j for level in levels for j in level) == list(range(tree.size))
    for number, level in enumerate(levels):
        units = [u for j in level for u in fam.members[j]]
        assert len(units) == len(set(units))  # disjoint within a level
        # innermost first: level k holds the subtrees rooted at depth (depth - k)
        assert {int(tree.depths[j]) for j in level} == {depth - number}
    # each pool comes after every pool it contains
    where = {j: number for number, level in enumerate(levels) for j in level}
    for j, k in itertools.permutations(range(tree.size), 2):
        if set(fam.members[k]) < set(fam.members[j]):
            assert where[k] < where[j]


def test_unbalanced_nested_family_levels():
    fam = family("P", [(0, 1, 2, 3, 4), (0,), (0, 1), (3,), (5, 6)], size=8)
    levels = fam.laminar_levels()
    assert levels is not None
    where = {j: number for number, level in enumerate(levels) for j in level}
    assert where[1] < where[2] < where[0]
    assert where[3] < where[0]
    for level in levels:
        units = [u for j in level for u in fam.members[j]]
        assert len(units) == len(set(units))


def test_overlapping_pools_are_not_laminar():
    pools, _ = st.windows(st.torus("M", 4, 4), 2, 1)
    assert family("P", pools).laminar_levels() is None
    assert family("P", st.neighborhoods(st.torus("M", 4, 4), 1)).laminar_levels() is None
    assert family("P", [(0, 1, 2), (2, 3)], size=4).laminar_levels() is None
    # disjoint windows (stride = size) are laminar again
    pools, _ = st.windows(st.torus("M", 4, 4), 2, 2)
    assert family("P", pools).laminar_levels() == [[0, 1, 2, 3]]
