"""Pictures of a trained model, written as PNG into its run directory.

- ``filters.png``: the decoder's columns as image tiles, laid out on the spec's map
  (grid, torus) or tree when it has one, else in a square-ish grid; for a convolutional
  decoder its filters, for a locally connected one its filters at their positions;
- ``<S>.png``: every square matrix that an inhibition term uses, as a heat map;
- ``curves.png``: held-out energy, each term and the errors, epoch by epoch;
- ``sparsity.png``: the histogram of L0 per sample and each unit's activation frequency;
- ``firing.png``: the log-density histogram of unit firing (log10 of each unit's firing frequency on
  the held-out set), the units that never fired there in a bin of their own;
- ``tree.png``: the spec's tree drawn with networkx, units coloured by activation frequency;
- ``angles.png``: DrSAE's encoder/decoder angle per unit (part vs categorical units);
- ``orientation.png``: each orientation map of the filters (energydsl.reporting.orientation_map),
  hue the preferred orientation, pinwheels marked.

A picture draws at most :data:`PICTURED_UNITS` units one by one (a tile, a node, a row and
column of a matrix), whatever the width: beyond, ``filters.png`` shows the most used units (by
firing on the held-out set; the first ones when that is unknown), a window of the map around
the most used unit, or the units of the tree nearest its root; a pictured (units × units) matrix
its rows and columns of the most used units; ``tree.png`` the units nearest the root; a kernel
its first maps.  The title says which.  The histograms and curves take every unit.

Each picture is a :class:`matplotlib.figure.Figure` saved through the Agg canvas; pyplot
is never imported, so matplotlib's backend stays as the user set it (a notebook keeps
its inline plots).  matplotlib itself loads on the first picture, not on import.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from energydsl.ops.firing import firing_matrix, firings_per_unit
from energydsl.ops.structures import Structure
from energydsl.reporting.analysis import CATEGORICAL_ABOVE, PART_BELOW, unit_angles
from energydsl.reporting.orientation_map import OrientationMap, orientation_maps
from energydsl.reporting.selection import map_window, most_used, nearest_root, part_of_tree
from energydsl.training.metrics import DENSE_ABOVE

PICTURED_UNITS = 256  # the most units a picture draws one by one
MAP_PIXELS = 128 * 128  # the most units of one orientation map drawn (one pixel each)
MAP_PANELS = 16  # the most orientation maps drawn (a locally connected kernel's first maps)


def write_pictures(model, directory: Path, history: list[dict] | None = None, z=None, density=None) -> list[Path]:
    """Every picture that applies to this model; returns the files written.

    ``history`` (the per-epoch metrics), ``z`` (codes of held-out samples, or where they fire:
    :func:`~energydsl.ops.firing.firing_matrix`) and ``density`` (each unit's firing frequency on
    the held-out set; else from ``z``) add the pictures that need them.
    """
    written = []
    roles = model.program.roles
    decoder = roles.decoder
    active = firing_matrix(z) if z is not None else None
    if density is None and active is not None and active.shape[0]:
        density = firings_per_unit(active) / active.shape[0]
    if density is not None:
        density = density.cpu().numpy() if hasattr(density, "cpu") else np.asarray(density)
    if decoder is not None:
        path = directory / "filters.png"
        filters_png(model.params[decoder].detach(), path, model.program.reconstructed.shape,
                    _layout_structure(model), density)  # fmt: skip
        written.append(path)
    kernel = roles.kernel_decoder if decoder is None else None
    if kernel is not None:
        path = directory / "filters.png"
        kernel_png(model.params[kernel].detach().cpu().numpy(), path, f"decoder filters {kernel}")
        written.append(path)
    for name, term in roles.pictured:
        path = directory / f"{name}.png"
        unit_matrix_png(model.params[name].detach(), path, f"{name} ({term})", density)
        written.append(path)
    if history:
        written.append(curves_png(history, directory / "curves.png"))
    if active is not None and active.shape[0]:
        written.append(sparsity_png(active, directory / "sparsity.png"))
        trees = [s for s in model.program.structures.values() if s.kind == "tree" and s.size == active.shape[1]]
        if trees:
            written.append(tree_png(trees[0], firings_per_unit(active) / active.shape[0], directory / "tree.png"))
    if density is not None:
        written.append(firing_png(density, directory / "firing.png", int(model.dead_units().sum())))
    angles = unit_angles(model)
    if angles is not None:
        written.append(angles_png(angles.cpu().numpy(), directory / "angles.png"))
    maps = orientation_maps(model)
    if maps:
        written.append(orientation_png([m for family in maps.values() for m in family], directory / "orientation.png"))
    return written


def curves_png(history: list[dict], path: Path) -> Path:
    """Held-out energy and terms (left), reconstruction and test error (right), per epoch."""
    epochs = [m["epoch"] for m in history]
    errors = [key for key in ("recon_error", "test_error") if key in history[-1]]
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(1, 1 + bool(errors), figsize=(11 if errors else 6, 4), squeeze=False)
    left = axes[0, 0]
    for key in ["energy"] + [k for k in history[-1] if k.startswith("term.")]:
        left.plot(epochs, [m.get(key, np.nan) for m in history], marker=".", label=key.removeprefix("term."))
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_title("held-out energy per sample")
    left.legend()
    for key in errors:
        right = axes[0, 1]
        right.plot(epochs, [m.get(key, np.nan) for m in history], marker=".", label=key)
        right.set_xlabel("epoch")
        right.set_title("errors")
        right.legend()
    save_figure(figure, path)
    return path


def sparsity_png(active, path: Path) -> Path:
    """How many units each sample uses, and how often each unit is used; ``active``: where the
    codes of some samples fire (dense 0/1 or a sparse matrix)."""
    figure, (left, right) = new_figure(1, 2, figsize=(11, 4))
    l0 = np.asarray(active.sum(axis=1)).ravel()
    left.hist(l0, bins=min(50, max(int(l0.max()) + 1, 1)), color="C0")
    left.set_xlabel("active units per sample (L0)")
    left.set_title(f"L0: mean {l0.mean():.1f}")
    frequency = np.sort(np.asarray(active.sum(axis=0), dtype=np.float64).ravel() / active.shape[0])[::-1]
    right.plot(frequency, color="C1")
    right.set_ylim(bottom=0)
    right.set_xlabel("unit (sorted)")
    right.set_title(f"activation frequency ({int((frequency == 0).sum())} units never active)")
    save_figure(figure, path)
    return path


def firing_png(density: np.ndarray, path: Path, dead: int | None = None) -> Path:
    """Histogram of log10 of each unit's firing frequency, ten bins a decade; the units that never
    fired in a red bin of their own, left of the others; the dense line (10 %) dashed."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(figsize=(7, 4))
    fired = density[density > 0]
    never = int((density == 0).sum())
    low = math.floor(np.log10(fired.min())) if fired.size else -1
    edges = np.linspace(low, 0, 10 * -low + 1)
    if fired.size:
        axes.hist(np.log10(fired), bins=edges, color="C0", label=f"fired ({fired.size})")
    axes.bar(low - 0.5, never, width=0.2, color="C3", label=f"never fired ({never})")
    axes.axvline(math.log10(DENSE_ABOVE), color="k", linestyle="--", linewidth=0.8, label="dense above")
    ticks = list(range(low, 1))
    axes.set_xticks([low - 0.5, *ticks], ["never", *[f"$10^{{{t}}}$" for t in ticks]])
    axes.set_xlabel("firing frequency on the held-out set (log scale)")
    axes.set_ylabel("units")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"unit firing density ({dead} dead in training)" if dead is not None else "unit firing density")
    axes.legend()
    save_figure(figure, path)
    return path


def tree_png(tree: Structure, frequency: np.ndarray, path: Path) -> Path:
    """The tree (laid out by its structure), each unit coloured by how often it is active; at most
    :data:`PICTURED_UNITS` units, those nearest the root."""
    from matplotlib.collections import LineCollection

    whole = tree
    tree, kept = nearest_root(whole, PICTURED_UNITS, frequency)
    frequency = np.asarray(frequency)[kept]  # the subtree's unit i is the tree's kept[i]
    positions = tree.positions()
    figure, axes = new_figure(figsize=(min(24, 0.3 * tree.size + 3), 4))
    # drawn here rather than with networkx's drawing functions, which import pyplot
    axes.add_collection(LineCollection([(positions[a], positions[b]) for a, b in tree.graph.edges], colors="0.6"))
    units = list(tree.graph)
    nodes = axes.scatter([positions[u][0] for u in units], [positions[u][1] for u in units], s=60,
                         c=frequency[units], cmap="viridis", vmin=0, zorder=2)  # fmt: skip
    figure.colorbar(nodes, ax=axes, label="activation frequency")
    axes.set_axis_off()
    axes.set_title(f"tree {tree.name}" + part_of_tree(tree.size, whole.size))
    save_figure(figure, path)
    return path


def angles_png(angles: np.ndarray, path: Path) -> Path:
    """Histogram of encoder/decoder angles with the part / categorical thresholds."""
    figure, axes = new_figure(figsize=(6, 4))
    axes.hist(angles, bins=40, color="C2")
    for threshold, label in ((PART_BELOW, "part"), (CATEGORICAL_ABOVE, "categorical")):
        axes.axvline(threshold, color="k", linestyle="--", linewidth=0.8)
        axes.text(threshold, axes.get_ylim()[1] * 0.95, f" {label}", ha="left" if label != "part" else "right")
    axes.set_xlabel("angle between encoder row and decoder column (rad)")
    axes.set_ylabel("units")
    save_figure(figure, path)
    return path


def orientation_png(maps: list[OrientationMap], path: Path) -> Path:
    """Orientation maps side by side: hue the preferred orientation, saturation the selectivity
    (full from the map's 95th percentile up), pinwheels of charge +½ (white) and −½ (black)
    at the centres of their plaquettes.  At most :data:`MAP_PANELS` maps of :data:`MAP_PIXELS` units."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, hsv_to_rgb

    shown = maps[:MAP_PANELS]
    cols = min(len(shown), 4)
    rows = math.ceil(len(shown) / cols)
    figure, axes = new_figure(rows, cols, figsize=(3.6 * cols + 1.2, 3.6 * rows), squeeze=False)
    for ax, orientation in zip(axes.flat, shown):
        window = map_window(orientation.theta.shape, None, MAP_PIXELS)
        rows_, cols_ = slice(window.top, window.top + window.rows), slice(window.left, window.left + window.cols)
        theta, selectivity = orientation.theta[rows_, cols_], orientation.selectivity[rows_, cols_]
        strong = float(np.quantile(orientation.selectivity, 0.95)) or 1.0  # not one outlier's: the rest stay seen
        saturation = np.clip(selectivity / strong, 0, 1)
        ax.imshow(hsv_to_rgb(np.stack([theta / math.pi, saturation, np.ones_like(theta)], axis=-1)),
                  interpolation="nearest")  # fmt: skip
        windings = orientation.measured.windings[rows_, cols_]
        for sign, colour in ((1, "white"), (-1, "black")):
            r, c = np.nonzero(windings == sign)
            label = f"{'+' if sign > 0 else '−'}½ ({len(r)})"
            # unclipped: a torus's plaquettes across the seam have their centres on the picture's edge
            ax.scatter(c + 0.5, r + 0.5, s=30, c=colour, edgecolors="0.3", linewidths=0.8, clip_on=False, label=label)
        count = orientation.measured.count
        words = f"{count} pinwheel{'' if count == 1 else 's'}, density {orientation.measured.density:.2f}"
        ax.set_title(_titled(f"{orientation.title}: {words}", window.words), fontsize=9)
        ax.set_xlim(-0.5, window.cols - 0.5)
        ax.set_ylim(window.rows - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), ncol=2, fontsize=7, frameon=False)
    for ax in axes.flat[len(shown) :]:
        ax.set_axis_off()
    figure.colorbar(ScalarMappable(Normalize(0, 180), cmap="hsv"), ax=axes, label="preferred orientation (degrees)")
    if len(maps) > len(shown):
        figure.suptitle(f"the first {len(shown)} of {len(maps)} orientation maps")
    save_figure(figure, path)
    return path


def _layout_structure(model) -> Structure | None:
    units = model.program.latent.shape[0]
    for structure in model.program.structures.values():
        if structure.size == units:
            return structure
    return None


def _tile_shape(input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """How one column reads as an image: [C, H, W] or a square number of values."""
    if len(input_shape) == 3 and input_shape[0] == 1:
        return input_shape[1], input_shape[2]
    if len(input_shape) == 2:
        return input_shape
    side = math.isqrt(math.prod(input_shape))
    return (side, side) if side * side == math.prod(input_shape) else None


def _tiles(decoder: np.ndarray, shape) -> list[np.ndarray]:
    """Each column as an image scaled to [-1, 1] by its own largest value."""
    tiles = []
    for column in decoder.T:
        scale = np.abs(column).max() or 1.0
        tiles.append((column / scale).reshape(shape))
    return tiles


def filters_png(decoder, path: Path, input_shape, layout: Structure | None = None, density=None) -> None:
    """Decoder columns (a ``(values, units)`` array or tensor) as tiles: on the map, along the
    tree, or in a square-ish grid; at most :data:`PICTURED_UNITS` of them, chosen by ``density``
    (each unit's firing frequency) when there are more (module docstring)."""
    decoder = decoder if isinstance(decoder, np.ndarray) else decoder.detach().cpu().numpy()
    shape = _tile_shape(tuple(input_shape))
    if shape is None:  # not an image: show the matrix itself
        chosen = most_used(decoder.shape[1], density, PICTURED_UNITS)
        aspect = "auto" if chosen.words else None  # a few rows of many columns: stretched to be seen
        matrix_png(decoder[:, chosen.units], path, _titled("decoder", chosen.words), aspect)
        return
    if layout is not None and layout.kind == "tree":
        tree, kept = nearest_root(layout, PICTURED_UNITS, density)
        title = f"decoder columns on the tree {layout.name}" + part_of_tree(tree.size, layout.size)
        _tree_figure(_tiles(decoder[:, kept], shape), tree, path, title)
        return
    if layout is not None and layout.shape is not None:
        window = map_window(layout.shape, density, PICTURED_UNITS)
        units, rows, cols = window.units(layout.shape[1]), window.rows, window.cols
        title = _titled(f"decoder columns on the {layout.kind} {layout.name}", window.words)
    else:
        chosen = most_used(decoder.shape[1], density, PICTURED_UNITS)
        units, cols = chosen.units, math.ceil(math.sqrt(len(chosen.units)))
        rows = math.ceil(len(units) / cols)
        title = _titled("decoder columns", chosen.words)
    _tile_figure(_tiles(decoder[:, units], shape), rows, cols, title, path)


def _tile_figure(tiles: list[np.ndarray], rows: int, cols: int, title: str, path: Path) -> None:
    """The tiles row by row on a rows × cols grid, one pixel of gap between them."""
    h, w = tiles[0].shape if tiles else (1, 1)
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)
    for unit, tile in enumerate(tiles):
        r, c = divmod(unit, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = tile
    figure, axes = new_figure(figsize=(min(16, 0.4 * cols + 1), min(16, 0.4 * rows + 1)))
    axes.imshow(canvas, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title)
    save_figure(figure, path)


def _titled(title: str, words: str) -> str:
    return f"{title}: {words}" if words else title


def kernel_grid(kernel: np.ndarray) -> np.ndarray:
    """A kernel's filters as a grid of tiles ``(rows, cols, kh, kw)`` (NaN: a gap).

    [maps, 1, kh, kw]: the maps in a square-ish grid; [maps, channels, kh, kw]: one row
    per map, one column per input channel; a locally connected [maps, H', W', channels,
    kh, kw]: each map's filters (first channel) at their H'×W' positions, the maps side by side.
    """
    kh, kw = kernel.shape[-2:]
    if kernel.ndim == 6:
        maps, rows, cols = kernel.shape[:3]
        grid = np.full((rows, maps * (cols + 1) - 1, kh, kw), np.nan)
        for m in range(maps):
            grid[:, m * (cols + 1) : m * (cols + 1) + cols] = kernel[m, :, :, 0]
        return grid
    maps, channels = kernel.shape[:2]
    if channels > 1:
        return kernel
    cols = math.ceil(math.sqrt(maps))
    grid = np.full((math.ceil(maps / cols), cols, kh, kw), np.nan)
    for m in range(maps):
        grid[m // cols, m % cols] = kernel[m, 0]
    return grid


def kernel_png(kernel: np.ndarray, path: Path, title: str) -> None:
    """The filters of a convolutional or locally connected kernel, each scaled to [-1, 1]; its first
    maps only where all of them would be more than :data:`PICTURED_UNITS` tiles."""
    maps = kernel.shape[0]
    per_map = math.prod(kernel.shape[1:3]) if kernel.ndim == 6 else kernel.shape[1]
    shown = max(1, min(maps, PICTURED_UNITS // per_map))
    if shown < maps:
        kernel, title = kernel[:shown], f"{title}: maps 0–{shown - 1} of {maps:,}"
    grid = kernel_grid(kernel)
    rows, cols, h, w = grid.shape
    scale = np.abs(np.nan_to_num(grid)).max(axis=(2, 3), keepdims=True)  # gap tiles stay NaN
    grid = grid / np.where(scale > 0, scale, 1.0)
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)
    for r in range(rows):
        for c in range(cols):
            canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = grid[r, c]
    figure, axes = new_figure(figsize=(min(16, 0.12 * cols * (w + 1) + 1), min(16, 0.12 * rows * (h + 1) + 1)))
    axes.imshow(canvas, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title)
    save_figure(figure, path)


def _tree_figure(tiles, tree: Structure, path: Path, title: str) -> None:
    positions = tree.positions()
    xs = [p[0] for p in positions.values()]
    depth = int(tree.depths.max())
    figure, axes = new_figure(figsize=(min(24, 0.45 * (max(xs) + 2)), 1.2 * (depth + 1) + 0.5))
    for parent, child in ((int(tree.parents[i]), i) for i in range(tree.size) if tree.parents[i] >= 0):
        (x0, y0), (x1, y1) = positions[parent], positions[child]
        axes.plot([x0, x1], [y0, y1], color="0.7", linewidth=0.8, zorder=0)
    for unit, tile in enumerate(tiles):
        x, y = positions[unit]
        axes.imshow(tile, cmap="gray", vmin=-1, vmax=1, extent=(x - 0.45, x + 0.45, y - 0.4, y + 0.4), zorder=1)
    axes.set_xlim(min(xs) - 1, max(xs) + 1)
    axes.set_ylim(-depth - 0.6, 0.6)
    axes.set_axis_off()
    axes.set_title(title)
    save_figure(figure, path)


def unit_matrix_png(matrix: torch.Tensor, path: Path, title: str, density=None) -> None:
    """A matrix over the units (an inhibition's S) as a heat map; an axis longer than
    :data:`PICTURED_UNITS` keeps the most used units (by ``density``), in unit order."""
    words = ""
    for axis, length in enumerate(matrix.shape):
        chosen = most_used(length, density if density is not None and len(density) == length else None, PICTURED_UNITS)
        if chosen.words:
            matrix = matrix.index_select(axis, torch.as_tensor(np.sort(chosen.units), device=matrix.device))
            words = chosen.words
    matrix_png(matrix.cpu().numpy(), path, _titled(title, words))


def matrix_png(matrix: np.ndarray, path: Path, title: str, aspect: str | None = None) -> None:
    figure, axes = new_figure(figsize=(6, 5))
    image = axes.imshow(matrix, cmap="viridis", interpolation="nearest", aspect=aspect)
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    save_figure(figure, path)


def new_figure(rows: int = 1, cols: int = 1, figsize=None, squeeze: bool = True):
    """A figure and its axes, like ``pyplot.subplots`` but without pyplot's global state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, cols, squeeze=squeeze)


def save_figure(figure, path: Path) -> None:
    """Draw with Agg and write through a temporary file, so a run directory never holds half a picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    FigureCanvasAgg(figure)  # attaches itself as the figure's canvas
    figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    tmp.replace(path)
