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
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from energydsl.errors import InferenceCapWarning
from energydsl.model import EnergyModel
from energydsl.ops.structures import Structure


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
def infer_all(model: EnergyModel, x: torch.Tensor, batch: int = 1024,
              target: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The inferred codes of ``x`` (with their ``target``, a transcoder's), a batch at a time.  Without a
    warning for samples that stop at the step cap: a run's metrics report those (``infer.capped``), not
    one line per batch."""
    parts = range(0, x.shape[0], batch)
    targets = [None if target is None else target[start : start + batch] for start in parts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceCapWarning)
        return torch.cat([model.infer(x[start : start + batch], target=t) for start, t in zip(parts, targets)])


def run_metrics(model: EnergyModel, z: torch.Tensor) -> dict[str, float]:
    """Everything above that applies to this spec, from the codes ``z`` of held-out samples."""
    metrics: dict[str, float] = {}
    decoder = model.program.roles.decoder
    for name, structure in model.program.structures.items():
        if structure.kind == "tree":
            metrics[f"{name}.rooted_fraction"] = round(rooted_fraction(z, structure), 6)
            metrics[f"{name}.related_coactive_share"] = round(related_coactive_share(z, structure), 6)
        elif decoder is not None:
            ratio = neighbour_cosine_ratio(model.params[decoder], structure)
            metrics[f"{name}.neighbour_cosine_ratio"] = round(ratio, 6)
    frequency = (z != 0).double().mean(dim=0)  # (units.dead, .unused and .dense: training/metrics.py)
    metrics.update(unit_kinds(model, alive=frequency > 0))
    return metrics
