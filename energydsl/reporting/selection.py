"""Which units a picture of a wide model draws: at most a fixed number, chosen and stated.

A picture draws each unit it shows (a tile, a node, a row and column of a matrix), so a
65,536-unit model cannot be drawn whole.  Each function here picks at most ``limit`` units and
says which in words, for the picture's title; a model within the limit is drawn whole, as it
always was, and its title gains nothing.

- :func:`most_used`: the units that fire on the most held-out samples (without firing
  densities: the first units);
- :func:`map_window`: a window of a grid or torus, centred on the most used unit (without
  densities: the top-left corner), so that neighbours stay neighbours;
- :func:`nearest_root`: a tree's top levels, then the most used units of the next level, as a
  tree of its own (closed under taking parents, so it is drawn like the whole one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from energydsl.ops.structures import Structure, tree_from_edges


@dataclass(frozen=True)
class Selection:
    """The units shown, in drawing order, and the words that say which (empty: all of them)."""

    units: np.ndarray
    words: str = ""


def most_used(units: int, density: np.ndarray | None, limit: int) -> Selection:
    """At most ``limit`` units: all of them in order when they fit, else the most used first."""
    if units <= limit:
        return Selection(np.arange(units))
    if density is None:
        return Selection(np.arange(limit), f"units 0–{limit - 1} of {units:,}")
    order = np.argsort(-np.asarray(density, dtype=np.float64), kind="stable")[:limit]
    return Selection(order, f"the {limit} most used of {units:,} units")


@dataclass(frozen=True)
class Window:
    """Rows ``top:top + rows`` and columns ``left:left + cols`` of an ``h × w`` map."""

    top: int
    left: int
    rows: int
    cols: int
    words: str = ""

    def units(self, w: int) -> np.ndarray:
        """The window's units, row by row (unit r·w + c sits at row r, column c)."""
        r, c = np.meshgrid(np.arange(self.top, self.top + self.rows), np.arange(self.left, self.left + self.cols),
                           indexing="ij")  # fmt: skip
        return (r * w + c).ravel()


def map_window(shape: tuple[int, int], density: np.ndarray | None, limit: int) -> Window:
    """The whole ``h × w`` map when it fits, else a window of at most ``limit`` units (as square
    as the map allows) around its most used unit, inside the map."""
    h, w = shape
    if h * w <= limit:
        return Window(0, 0, h, w)
    rows = min(h, math.isqrt(limit))
    cols = min(w, limit // rows)
    rows = min(h, limit // cols)  # a narrow map gives the window its rows back
    centre = (0, 0) if density is None else divmod(int(np.argmax(density)), w)
    top = min(max(centre[0] - rows // 2, 0), h - rows)
    left = min(max(centre[1] - cols // 2, 0), w - cols)
    around = "around its most used unit" if density is not None else "at its corner"
    words = f"rows {top}–{top + rows - 1}, columns {left}–{left + cols - 1} of its {h} × {w}, {around}"
    return Window(top, left, rows, cols, words)


def nearest_root(tree: Structure, limit: int, density: np.ndarray | None = None) -> tuple[Structure, np.ndarray]:
    """The tree itself when it fits; else the subtree of its ``limit`` units nearest the root
    (whole levels, then the most used units of the next level, or its first ones), renumbered
    0..n-1 with its unit i the tree's ``kept[i]``.  Returns (subtree, kept)."""
    if tree.size <= limit:
        return tree, np.arange(tree.size)
    depths = tree.depths
    per_level = np.bincount(depths)
    whole_levels = int(np.searchsorted(np.cumsum(per_level), limit, side="right"))  # levels 0..whole_levels-1
    kept = np.flatnonzero(depths < whole_levels)
    room = limit - len(kept)
    if room > 0:  # the next level's busiest units: their parents are all kept
        next_level = np.flatnonzero(depths == whole_levels)
        if density is not None:
            next_level = next_level[np.argsort(-np.asarray(density)[next_level], kind="stable")]
        kept = np.sort(np.concatenate([kept, next_level[:room]]))
    new = {int(unit): i for i, unit in enumerate(kept)}
    parents = tree.parents
    edges = [(new[int(parents[unit])], new[int(unit)]) for unit in kept if parents[unit] >= 0]
    return tree_from_edges(tree.name, edges, root=new[tree.root]), kept


def part_of_tree(shown: int, total: int) -> str:
    """The title's words for a tree drawn in part ('' when whole)."""
    return "" if shown == total else f": the {shown} of its {total:,} units nearest the root"
