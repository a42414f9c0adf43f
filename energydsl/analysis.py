"""Measurements of what structure a trained model learned.

- On a tree: how many inferred supports are rooted subtrees (closed under taking
  ancestors), and which share of co-active unit pairs lie on one branch.
- On a map (grid, torus): how much more alike the decoder columns of neighbouring
  units are than those of random pairs (a topographic map).
"""

from __future__ import annotations

import numpy as np
import torch

from . import spec as S
from .model import EnergyModel
from .structures import Structure


def rooted_fraction(z: torch.Tensor, tree: Structure) -> float:
    """Share of samples whose support contains the parent of every active non-root unit."""
    active = (z != 0).cpu().numpy()
    parents = tree.parents
    child = parents >= 0
    orphan = active[:, child] & ~active[:, parents[child]]
    return float((~orphan.any(axis=1)).mean())


def related_coactive_share(z: torch.Tensor, tree: Structure) -> float:
    """Among pairs of distinct units active in the same sample, the share on one branch
    (one is an ancestor of the other)."""
    active = (z != 0).double()
    together = (active.T @ active).cpu().numpy()  # (m, m) co-activation counts
    np.fill_diagonal(together, 0)
    total = together.sum()
    return float((together * tree.related).sum() / total) if total else 0.0


def neighbour_cosine_ratio(decoder: torch.Tensor, structure: Structure) -> float:
    """Mean |cosine| of decoder columns over neighbouring units / over all pairs of units."""
    columns = decoder.detach().double()
    columns = columns / columns.norm(dim=0, keepdim=True).clamp_min(1e-30)
    cosine = (columns.T @ columns).abs().cpu().numpy()
    edges = np.array(list(structure.graph.edges))
    neighbours = cosine[edges[:, 0], edges[:, 1]].mean()
    off_diagonal = ~np.eye(cosine.shape[0], dtype=bool)
    return float(neighbours / cosine[off_diagonal].mean())


def decoder_name(model: EnergyModel) -> str | None:
    """The parameter W of the reconstruction term ``sqerr(x, W @ z)``, if there is one."""
    program = model.program
    recon = program.reconstruction
    if recon is None:
        return None
    decl = next(t for t in program.spec.energy if t.name.name == recon.name)
    for node in _walk(decl.value):
        if isinstance(node, S.BinOp) and node.op == "@" and isinstance(node.left, S.Name):
            right = node.right
            if isinstance(right, S.Name) and right.id == program.latent.name and node.left.id in model.params:
                return node.left.id
    return None


def _walk(node):
    yield node
    for child in (getattr(node, f, None) for f in ("left", "right", "operand")):
        if child is not None:
            yield from _walk(child)
    for child in getattr(node, "args", ()):
        yield from _walk(child)


@torch.no_grad()
def structure_metrics(model: EnergyModel, x: torch.Tensor) -> dict[str, float]:
    """The measurements above for every structure of the spec, on samples ``x``."""
    metrics: dict[str, float] = {}
    structures = model.program.structures
    if not structures:
        return metrics
    z = model.infer(x)
    decoder = decoder_name(model)
    for name, structure in structures.items():
        if structure.kind == "tree":
            metrics[f"{name}.rooted_fraction"] = round(rooted_fraction(z, structure), 6)
            metrics[f"{name}.related_coactive_share"] = round(related_coactive_share(z, structure), 6)
        elif decoder is not None:
            ratio = neighbour_cosine_ratio(model.params[decoder], structure)
            metrics[f"{name}.neighbour_cosine_ratio"] = round(ratio, 6)
    return metrics
