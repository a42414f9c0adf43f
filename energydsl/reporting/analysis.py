"""Measurements of what structure a trained model learned.

- On a tree: how many inferred supports are rooted subtrees (closed under taking
  ancestors), and which share of co-active unit pairs lie on one branch.
- On a map (grid, torus): how much more alike the decoder columns of neighbouring
  units are than those of random pairs (a topographic map).
- With an encoder and a decoder (DrSAE): the angle between each unit's encoder row
  and decoder column, which splits units into *part* units (< 0.5 rad: the encoder
  matches the decoder, as in ISTA) and *categorical* units (> 0.7 rad), with the
  classifier weight each group carries (Rolfe & LeCun 2013, section 4).
- For every spec: how often each unit is active (units that never fire are neither part nor categorical).
- With filters that are image patches on a 2-D map: the orientation map's pinwheels, column
  spacing and smoothness (energydsl.reporting.orientation_map).

Bounded in the number of units: the codes are read as where they fire (a sparse matrix, memory
samples × k for a TopK code) and no (units × units) matrix is ever formed — co-activation on a
tree is counted by binary searches in a preorder, and the all-pairs mean |cos| of a map with more
than :data:`EXACT_PAIRS_UNITS` units is estimated from random pairs.
"""

from __future__ import annotations

import math
import warnings

import networkx as nx
import numpy as np
import torch

from energydsl.errors import InferenceCapWarning
from energydsl.model import EnergyModel
from energydsl.ops.firing import firing_matrix, firings_per_unit
from energydsl.ops.structures import Structure
from energydsl.reporting.orientation_map import orientation_maps, orientation_metrics
from energydsl.training.metrics import eval_rows

EXACT_PAIRS_UNITS = 4096  # above, the mean |cos| over all pairs of units is estimated from random pairs
PAIR_SAMPLES = 1 << 20  # the random pairs (the estimate's standard error: the standard deviation of |cos| / 1024)
_CHUNK_VALUES = 1 << 22  # values of one chunk of gathered columns or of cosines


def rooted_fraction(z, tree: Structure) -> float:
    """Share of samples whose support contains the parent of every active non-root unit.

    ``z``: codes ``(samples, units)`` or where they fire (:func:`~energydsl.ops.firing.firing_matrix`).
    """
    active = firing_matrix(z)
    if active.shape[0] == 0:
        return float("nan")
    rows, units = active.nonzero()
    parents = tree.parents[units]
    rows, units = rows.astype(np.int64), units.astype(np.int64)
    fired = rows * active.shape[1] + units  # one key per firing: (sample, unit)
    child = parents >= 0
    rows, parents = rows[child], parents[child]
    orphans = rows[~np.isin(rows * active.shape[1] + parents, fired)]  # firings whose parent is silent
    return 1.0 - len(np.unique(orphans)) / active.shape[0]


def related_coactive_share(z, tree: Structure) -> float:
    """Among ordered pairs of distinct units active in the same sample, the share on one branch
    (one is an ancestor of the other).

    Without a (units × units) co-activation matrix: a sample with k active units has k(k − 1)
    such pairs, and twice as many on one branch as (unit, active proper descendant) pairs.  In a
    preorder numbering, u's descendants are the numbers in (pre(u), pre(u) + size(u)), so each
    firing's active descendants are counted by two binary searches in the sorted (sample, pre) keys.
    """
    active = firing_matrix(z)
    rows, units = active.nonzero()
    per_sample = np.bincount(rows, minlength=active.shape[0]).astype(np.float64)
    pairs = float((per_sample * (per_sample - 1)).sum())
    if not pairs:
        return 0.0
    pre, size = _preorder(tree)
    first = rows.astype(np.int64) * tree.size + pre[units]  # the key of each firing; its descendants' follow
    keys = np.sort(first)
    descendants = np.searchsorted(keys, first + size[units]) - np.searchsorted(keys, first, side="right")
    return float(2 * descendants.sum() / pairs)


def _preorder(tree: Structure) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's number in a depth-first preorder from the root, and the size of its subtree."""
    order = np.fromiter(nx.dfs_preorder_nodes(tree.graph, tree.root), dtype=np.int64, count=tree.size)
    pre = np.empty(tree.size, dtype=np.int64)
    pre[order] = np.arange(tree.size)
    size = np.ones(tree.size, dtype=np.int64)
    parents = tree.parents
    for unit in order[::-1]:  # children before their parent
        if parents[unit] >= 0:
            size[parents[unit]] += size[unit]
    return pre, size


def neighbour_cosine_ratio(decoder: torch.Tensor, structure: Structure) -> float:
    """Mean |cosine| of decoder columns over neighbouring units / over all pairs of distinct units.

    The denominator is exact up to :data:`EXACT_PAIRS_UNITS` units (a block of cosines at a time);
    above, it is the mean over :data:`PAIR_SAMPLES` random pairs (seed 0), so that no (units × units)
    matrix is ever held.
    """
    columns = decoder.detach().double()
    columns = columns / columns.norm(dim=0, keepdim=True).clamp_min(1e-30)
    edges = torch.as_tensor(np.array(list(structure.graph.edges)), dtype=torch.long, device=columns.device)
    neighbours = _pair_cosines(columns, edges[:, 0], edges[:, 1]).mean()
    return float(neighbours / mean_pair_cosine(columns))


def mean_pair_cosine(columns: torch.Tensor) -> float:
    """Mean |cos| over pairs of distinct columns of ``columns`` (unit columns, or zero)."""
    units = columns.shape[1]
    if units > EXACT_PAIRS_UNITS:
        generator = torch.Generator().manual_seed(0)
        first = torch.randint(units, (PAIR_SAMPLES,), generator=generator)
        second = torch.randint(units - 1, (PAIR_SAMPLES,), generator=generator)
        second += second >= first  # uniform over the other units
        return float(_pair_cosines(columns, first.to(columns.device), second.to(columns.device)).mean())
    total = 0.0
    block = max(1, _CHUNK_VALUES // units)
    for start in range(0, units, block):
        total += float((columns[:, start : start + block].T @ columns).abs().sum())
    diagonal = float((columns * columns).sum())  # |cos(u, u)|: 1, or 0 for a zero column
    return (total - diagonal) / max(units * (units - 1), 1)


def _pair_cosines(columns: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """|cos| of the pairs of columns (first[i], second[i]), a chunk of pairs at a time."""
    chunk = max(1, _CHUNK_VALUES // max(columns.shape[0], 1))
    return torch.cat([(columns[:, first[i : i + chunk]] * columns[:, second[i : i + chunk]]).sum(dim=0).abs()
                      for i in range(0, len(first), chunk)])  # fmt: skip


PART_BELOW, CATEGORICAL_ABOVE = 0.5, 0.7  # radians, the paper's thresholds


def unit_angles(model: EnergyModel) -> torch.Tensor | None:
    """Per unit, the angle in radians between its encoder row and its decoder column."""
    encoder, decoder = model.program.roles.encoder, model.program.roles.decoder
    if encoder is None or decoder is None or model.program.target is not None:
        return None  # a transcoder's encoder reads the input, its decoder writes the target: no angle
    rows = model.params[encoder].detach().double()
    columns = model.params[decoder].detach().double().T
    cosine = (rows * columns).sum(dim=1) / (rows.norm(dim=1) * columns.norm(dim=1)).clamp_min(1e-30)
    return torch.arccos(cosine.clamp(-1, 1))


def unit_kinds(model: EnergyModel, alive: torch.Tensor | None = None) -> dict[str, float]:
    """Counts of part and categorical units, and each group's mean classifier column norm;
    only the ``alive`` units (a boolean mask) when given: a unit that never fires is
    neither, whatever its angle."""
    angles = unit_angles(model)
    if angles is None:
        return {}
    alive = torch.ones_like(angles, dtype=torch.bool) if alive is None else alive.to(angles.device)
    groups = {"part": (angles < PART_BELOW) & alive, "categorical": (angles > CATEGORICAL_ABOVE) & alive}
    metrics = {f"units.{kind}": int(mask.sum()) for kind, mask in groups.items()}
    classifier = model.program.roles.classifier
    if classifier is not None:
        norms = model.params[classifier].detach().double().norm(dim=0)
        for kind, mask in groups.items():
            metrics[f"units.{kind}_classifier_norm"] = round(float(norms[mask].mean()), 6) if mask.any() else 0.0
    return metrics


@torch.no_grad()
def infer_all(model: EnergyModel, x: torch.Tensor, batch: int | None = None,
              target: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The inferred codes of ``x`` (with their ``target``, a transcoder's; dense: ``x`` decides the size),
    ``batch`` samples at a time (default: :func:`~energydsl.training.metrics.eval_rows`).  Without a
    warning for samples that stop at the step cap: a run's metrics report those (``infer.capped``), not
    one line per batch."""
    batch = batch or eval_rows(math.prod(model.program.latent.shape))
    parts = range(0, x.shape[0], batch)
    targets = [None if target is None else target[start : start + batch] for start in parts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceCapWarning)
        return torch.cat([model.infer(x[start : start + batch], target=t) for start, t in zip(parts, targets)])


def run_metrics(model: EnergyModel, z, notes: list[str] | None = None) -> dict[str, float]:
    """Everything above that applies to this spec, from the codes ``z`` of held-out samples or
    where they fire (:func:`~energydsl.ops.firing.firing_matrix`); ``notes`` receives a line for
    each figure that is estimated rather than exact."""
    notes = [] if notes is None else notes
    active = firing_matrix(z)
    metrics: dict[str, float] = {}
    decoder = model.program.roles.decoder
    for name, structure in model.program.structures.items():
        if structure.kind == "tree":
            metrics[f"{name}.rooted_fraction"] = round(rooted_fraction(active, structure), 6)
            metrics[f"{name}.related_coactive_share"] = round(related_coactive_share(active, structure), 6)
        elif decoder is not None:
            ratio = neighbour_cosine_ratio(model.params[decoder], structure)
            metrics[f"{name}.neighbour_cosine_ratio"] = round(ratio, 6)
            if structure.size > EXACT_PAIRS_UNITS:
                notes.append(f"{name}.neighbour_cosine_ratio: the mean |cos| of all pairs of the {structure.size:,} "
                             f"units estimated on {PAIR_SAMPLES:,} random pairs")  # fmt: skip
    metrics.update(orientation_metrics(orientation_maps(model)))
    fired = firings_per_unit(active) > 0  # (units.dead, .unused and .dense: training/metrics.py)
    metrics.update(unit_kinds(model, alive=torch.from_numpy(fired)))
    return metrics
