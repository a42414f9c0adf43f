"""A 65,536-unit model's evaluation, analyses, pictures and report stay bounded in the number of units.

What "bounded" means here, checked while the reporting runs:

- no torch tensor larger than :data:`~energydsl.training.metrics.EVAL_ENTRIES` values (2^24: one
  evaluation batch of codes), so neither a (units × units) matrix (2^32) nor the codes of the whole
  held-out set (512 × 65,536 = 2^25 here) ever exists; every tensor an operator returns is seen
  through a ``TorchDispatchMode``;
- numpy (and scipy, matplotlib) allocations, traced by ``tracemalloc``, peak far below one
  held-out × units array of bytes;
- every picture draws at most 256 units, and its title says which.

The small-width behaviour is unchanged; the other tests of the reporting pin it.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import scipy.sparse
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import energydsl
from energydsl import api
from energydsl.ops.firing import firing_matrix
from energydsl.ops.recovery import best_matches, detection
from energydsl.ops.sparse_codes import SparseCodes
from energydsl.ops.structures import balanced_tree, grid, tree_from_edges
from energydsl.reporting import analysis, viz
from energydsl.reporting.analysis import neighbour_cosine_ratio, related_coactive_share, rooted_fraction
from energydsl.reporting.selection import map_window, most_used, nearest_root
from energydsl.training import metrics
from energydsl.training.metrics import EVAL_ENTRIES, held_out

UNITS = 65_536

WIDE = """
model wide
data features(dim = 16, features = 32, count = 640, test = 0.8)

const units = 65536
const k     = 4

input  x[d]
latent z[units] >= 0
graph  M = grid(256, 256)

param D[d, units]   constrain col_norm == 1
param E[units, d]   init 0.03 * D.T
param b_enc[units]  init zeros
param b_dec[d]      init zeros

let pre  = E @ (x - b_dec) + b_enc
encoder z = topk(relu(pre), k)

energy
  recon : sqerr(x, D @ z + b_dec)

infer z by encoder

train
  optimizer adam(lr = 1e-3)
  batch 64
  epochs 1
"""


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in values) that any torch operator returns while active."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape, self.op = 0, (), None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.numel:
                self.numel, self.shape, self.op = tensor.numel(), tuple(tensor.shape), func
        return out


class DrawnUnits:
    """Spies on the pictures: how many tiles or matrix columns each one draws, and its title;
    draws them too while ``render`` is true."""

    def __init__(self, monkeypatch, render: bool = True):
        self.drawn: dict[str, tuple[int, str]] = {}
        self.render = render
        tile_figure, tree_figure, matrix_png = viz._tile_figure, viz._tree_figure, viz.matrix_png

        def tiles(tiles, rows, cols, title, path):
            self.drawn[path.name] = (len(tiles), title)
            assert len(tiles) <= rows * cols
            return tile_figure(tiles, rows, cols, title, path) if self.render else None

        def tree(tiles, tree_, path, title):
            self.drawn[path.name] = (len(tiles), title)
            assert len(tiles) == tree_.size
            return tree_figure(tiles, tree_, path, title) if self.render else None

        def matrix(matrix_, path, title, aspect=None):
            self.drawn[path.name] = (matrix_.shape[1], title)
            return matrix_png(matrix_, path, title, aspect) if self.render else None

        monkeypatch.setattr(viz, "_tile_figure", tiles)
        monkeypatch.setattr(viz, "_tree_figure", tree)
        monkeypatch.setattr(viz, "matrix_png", matrix)


@pytest.mark.slow
def test_a_65536_unit_run_is_evaluated_analysed_and_pictured_within_bounds(tmp_path, monkeypatch):
    model = energydsl.load(WIDE)
    assert model.dataset.x_test.shape[0] * UNITS > EVAL_ENTRIES  # the held-out codes would not fit the bound
    history = energydsl.train(model)  # two steps
    drawn = DrawnUnits(monkeypatch)
    densified = SparseCodes.densified
    tracemalloc.start()
    try:
        with LargestTensor() as largest:
            summary = api._final_metrics(model, model.dataset, tmp_path, history, model.program.spec.source)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert SparseCodes.densified == densified  # the TopK codes were read as they are, never made dense
    assert largest.numel <= EVAL_ENTRIES, f"{largest.op} made a tensor of shape {largest.shape}"
    assert numpy_peak < 64 << 20  # one (held-out × units) array of bytes: 32 MiB; of float32: 128 MiB

    count, title = drawn.drawn["filters.png"]
    assert count == 256 and "of its 256 × 256, around its most used unit" in title  # a 16 × 16 window of the map
    assert {"filters.png", "sparsity.png", "firing.png", "curves.png"} <= {p.name for p in tmp_path.glob("*.png")}
    # every figure of a small run is there: held-out metrics, the map's ratio, recovery
    for key in ("energy", "fvu", "units.unused", "M.neighbour_cosine_ratio", "recovery.mcc", "recovery.f1"):
        assert key in summary
    assert 0.5 < summary["M.neighbour_cosine_ratio"] < 2  # no map learned in two steps: about 1
    page = (tmp_path / "report.html").read_text()
    assert "estimated on 1,048,576 random pairs" in page


# --------------------------------------------------------------------------- the same bounds, small and fast


def test_evaluation_batches_hold_a_bounded_number_of_code_values_and_give_the_same_metrics(monkeypatch):
    spec = WIDE.replace("const units = 65536", "const units = 256").replace("grid(256, 256)", "grid(16, 16)")
    model = energydsl.load(spec)
    whole = held_out(model, model.dataset, keep=10_000)
    monkeypatch.setattr(metrics, "EVAL_ENTRIES", 256 * 100)  # a hundred samples a batch
    assert metrics.eval_rows(256) == 100 and metrics.eval_rows(1 << 30) == 1
    batches, infer = [], model.infer_prepared

    def counted(xp, *args, **kwargs):
        batches.append(len(xp))
        return infer(xp, *args, **kwargs)

    monkeypatch.setattr(model, "infer_prepared", counted)
    batched = held_out(model, model.dataset, keep=10_000)
    assert batches == [100] * 5 + [12]  # the 512 held-out samples
    assert batched.metrics == pytest.approx(whole.metrics, rel=1e-5)
    z = model.infer(model.dataset.x_test)
    assert (batched.firing != whole.firing).nnz == 0
    assert np.array_equal(batched.firing.toarray(), (z != 0).numpy())


def test_analyses_past_the_bound_on_firings_use_the_first_samples_and_say_so(tmp_path, monkeypatch):
    spec = WIDE.replace("const units = 65536", "const units = 64").replace("graph  M = grid(256, 256)\n", "")
    model = energydsl.load(spec)
    monkeypatch.setattr(metrics, "FIRING_ENTRIES", 400)  # about 100 of the 512 held-out samples' firings
    monkeypatch.setattr(api, "write_pictures", lambda *args: [])  # not asked here
    summary = api._final_metrics(model, model.dataset, tmp_path, [], "")
    z = model.infer(model.dataset.x_test)
    kept = int(np.searchsorted(np.cumsum((z != 0).sum(dim=1).numpy()), 400, side="right"))
    truth = model.dataset.extras
    found = detection(z[:kept], firing_matrix(truth["codes_test"])[:kept],
                      best_matches(model.params["D"], truth["dictionary"]).unit_match)  # fmt: skip
    assert summary["recovery.f1"] == pytest.approx(found.f1.mean().item(), abs=1e-6)
    page = (tmp_path / "report.html").read_text()
    assert f"analyses and pictures from the first {kept} held-out samples" in page
    assert f"recovery precision, recall and F1 from the first {kept} of 512 held-out samples" in page


def test_selections_are_bounded_and_said():
    density = np.zeros(1000)
    density[[7, 3, 999]] = [0.5, 0.9, 0.1]
    chosen = most_used(1000, density, 4)
    assert chosen.units[:3].tolist() == [3, 7, 999] and len(chosen.units) == 4
    assert chosen.words == "the 4 most used of 1,000 units"
    assert most_used(1000, None, 4).words == "units 0–3 of 1,000"
    assert most_used(4, density[:4], 4).words == "" and most_used(4, None, 4).units.tolist() == [0, 1, 2, 3]

    busy = np.zeros(256 * 256)
    busy[100 * 256 + 3] = 1.0  # row 100, column 3: the window cannot go left of column 0
    window = map_window((256, 256), busy, 256)
    assert (window.top, window.left, window.rows, window.cols) == (92, 0, 16, 16)
    assert window.units(256)[:2].tolist() == [92 * 256, 92 * 256 + 1] and len(window.units(256)) == 256
    narrow = map_window((4, 10_000), None, 256)
    assert (narrow.rows, narrow.cols, narrow.top, narrow.left) == (4, 64, 0, 0)
    assert map_window((8, 8), None, 256).words == ""

    tree = balanced_tree("T", 2, 9)  # 1023 units: levels 0-7 hold 255, one more from level 8
    frequency = np.zeros(tree.size)
    frequency[300] = 1.0  # a unit of level 8
    subtree, kept = nearest_root(tree, 256, frequency)
    assert subtree.size == 256 and kept[:255].tolist() == list(range(255)) and kept[255] == 300
    assert all(tree.parents[kept[child]] == kept[subtree.parents[child]] for child in range(1, 256))
    assert nearest_root(tree, 2000)[0] is tree


def test_filters_of_a_wide_decoder_draw_at_most_256_units(tmp_path, monkeypatch):
    drawn = DrawnUnits(monkeypatch, render=False)  # drawn only on a small tree, whose layout is new
    decoder = torch.randn(16, 4096, generator=torch.Generator().manual_seed(0))
    density = np.linspace(0, 1, 4096)  # the last units are the most used
    viz.filters_png(decoder, tmp_path / "plain.png", (16,), None, density)
    assert drawn.drawn["plain.png"] == (256, "decoder columns: the 256 most used of 4,096 units")
    viz.filters_png(decoder, tmp_path / "map.png", (16,), grid("M", 64, 64), density)
    count, title = drawn.drawn["map.png"]
    assert count == 256 and title.endswith("rows 48–63, columns 48–63 of its 64 × 64, around its most used unit")
    tree = balanced_tree("T", 2, 9)  # 1023 units
    viz.filters_png(decoder[:, :1023], tmp_path / "tree.png", (16,), tree, density[:1023])
    words = "the 256 of its 1,023 units nearest the root"
    assert drawn.drawn["tree.png"] == (256, f"decoder columns on the tree T: {words}")
    monkeypatch.setattr(viz, "PICTURED_UNITS", 10)  # drawn, small: the subtree's layout
    drawn.render = True
    viz.filters_png(decoder[:, :63], tmp_path / "small_tree.png", (16,), balanced_tree("T", 2, 5), density[:63])
    assert drawn.drawn["small_tree.png"][0] == 10 and (tmp_path / "small_tree.png").stat().st_size > 1000
    monkeypatch.setattr(viz, "PICTURED_UNITS", 256)
    drawn.render = False
    viz.filters_png(decoder[:6], tmp_path / "matrix.png", (6,), None, density)  # not an image: the matrix
    assert drawn.drawn["matrix.png"] == (256, "decoder: the 256 most used of 4,096 units")
    viz.filters_png(decoder[:, :100], tmp_path / "small.png", (16,), None, density[:100])  # small: all, as before
    assert drawn.drawn["small.png"] == (100, "decoder columns")


def test_an_inhibition_matrix_and_a_kernel_are_pictured_in_part(tmp_path, monkeypatch):
    inhibition = torch.arange(1000.0).repeat(1000, 1)  # S[i, j] = j
    density = np.zeros(1000)
    density[[10, 500]] = 1.0
    shown = {}
    original = viz.matrix_png

    def keep(matrix, path, title, aspect=None):
        shown[path.name] = matrix
        return original(matrix, path, title, aspect)

    monkeypatch.setattr(viz, "matrix_png", keep)
    viz.unit_matrix_png(inhibition, tmp_path / "S.png", "S (inhibition)", density)
    matrix = shown["S.png"]
    assert matrix.shape == (256, 256) and matrix[0, :3].tolist() == [0, 1, 2] and 500 in matrix[0]  # unit order kept
    kernel = np.random.default_rng(0).standard_normal((1000, 1, 3, 3))
    grids = []
    kernel_grid = viz.kernel_grid
    monkeypatch.setattr(viz, "kernel_grid", lambda k: grids.append(kernel_grid(k)) or grids[-1])
    viz.kernel_png(kernel, tmp_path / "K.png", "decoder filters K")
    assert np.isfinite(grids[0][..., 0, 0]).sum() == 256  # 256 filters drawn, the rest of the grid a gap
    assert (tmp_path / "K.png").stat().st_size > 1000


def test_tree_analyses_count_without_a_units_by_units_matrix():
    # against the definitions, on a small tree, with a dense co-activation matrix
    tree = tree_from_edges("T", [(0, 1), (0, 2), (1, 3), (1, 4), (4, 5), (2, 6)])
    generator = torch.Generator().manual_seed(1)
    z = torch.rand(300, 7, generator=generator) * (torch.rand(300, 7, generator=generator) < 0.4)
    active = (z != 0).double()
    together = active.T @ active
    together.fill_diagonal_(0)
    related = torch.from_numpy(tree.related).double()
    assert related_coactive_share(z, tree) == pytest.approx(float((together * related).sum() / together.sum()))
    parents = torch.from_numpy(tree.parents)
    child = parents >= 0
    orphaned = (active[:, child] > active[:, parents[child]]).any(dim=1)
    assert rooted_fraction(z, tree) == pytest.approx(1 - orphaned.double().mean().item())

    # a 16,383-unit tree; each sample fires a leaf and some of its ancestors, so every pair is on one
    # branch: the first 200 samples the whole path up to the root (rooted), the others three ancestors
    wide = balanced_tree("W", 2, 13)
    leaves = np.random.default_rng(0).integers(2**13 - 1, 2**14 - 1, size=500)  # units of the last level
    paths = [_path_to_root(int(leaf))[: 14 if sample < 200 else 4] for sample, leaf in enumerate(leaves)]
    rows = np.concatenate([[sample] * len(path) for sample, path in enumerate(paths)])
    firing = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, np.concatenate(paths))),
                                     shape=(500, wide.size))  # fmt: skip
    assert len(wide.parents) == wide.size  # built before the tracing: networkx's graph walk is slow under it
    tracemalloc.start()
    try:
        rooted, share = rooted_fraction(firing, wide), related_coactive_share(firing, wide)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rooted == pytest.approx(0.4) and share == 1.0
    assert peak < 16 << 20  # a (units × units) matrix of bytes: 256 MiB
    assert "related" not in wide.__dict__  # nor was the tree's own (units × units) relation built


def _path_to_root(unit: int) -> list[int]:
    """A unit of a breadth-first binary tree and its ancestors, from it up to the root."""
    path = [unit]
    while path[-1]:
        path.append((path[-1] - 1) // 2)
    return path


def test_the_pairs_estimate_of_the_neighbour_ratio_is_close_to_the_exact_one(monkeypatch):
    structure = grid("M", 40, 50)
    decoder = torch.randn(12, 2000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    decoder[:, 1:] += 0.5 * decoder[:, :-1]  # neighbours in a row are alike
    exact = neighbour_cosine_ratio(decoder, structure)
    assert exact > 1.2
    monkeypatch.setattr(analysis, "EXACT_PAIRS_UNITS", 1000)
    assert neighbour_cosine_ratio(decoder, structure) == pytest.approx(exact, rel=0.01)
    columns = decoder / decoder.norm(dim=0)
    cosines = (columns.T @ columns).abs()
    monkeypatch.setattr(analysis, "EXACT_PAIRS_UNITS", 4096)
    assert analysis.mean_pair_cosine(columns) == pytest.approx(float((cosines.sum() - 2000) / (2000 * 1999)), rel=1e-12)
    assert math.isfinite(exact)
