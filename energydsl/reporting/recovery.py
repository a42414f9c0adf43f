"""Feature recovery in a run's summary: the learned decoder and codes against the data's truth.

When the data carry a true dictionary (``extras["dictionary"]``, ``(dim, features)``: the
``features`` and ``synthetic`` sources, an .npz with a ``dictionary`` array) and the spec
has a decoder (``W`` of ``sqerr(x, W @ z)``, one column per unit) of the same height, the
summary gains (definitions in :mod:`energydsl.ops.recovery`); for a transcoder, whose decoder
writes the target (``sqerr(y, W @ z)``), the truth is the target's dictionary
(``extras["target_dictionary"]``, ``(target_dim, features)``: ``features(..., target_dim = e)``):

- ``recovery.mmcs``: mean over true features of the best |cos| of a decoder column;
- ``recovery.mmcs_units``: mean over units of the best |cos| of a true feature;
- ``recovery.mcc``: mean |cos| of the best one-to-one matching (when units × features is
  at most 2^25, e.g. 8192 × 4096; the Hungarian algorithm needs that matrix and cubic time);

and, when the data also carry the held-out samples' true codes (``extras["codes_test"]``,
dense or sparse), from the model's inferred codes of every held-out sample:

- ``recovery.precision``, ``recovery.recall``, ``recovery.f1``: SAELens's classification
  metrics, each unit's firing as a detector of its best-matching feature's, mean over units;
- ``recovery.feature_f1``: for each true feature the best F1 of any unit, mean over features.

Codes are inferred a batch at a time and only where they are nonzero is kept, so memory
follows the firings, not samples × units.
"""

from __future__ import annotations

import torch

from energydsl.data import Dataset
from energydsl.model import EnergyModel
from energydsl.ops.recovery import best_matches, detection, mcc
from energydsl.reporting.analysis import infer_all

MCC_MAX_ENTRIES = 1 << 25  # units × features beyond which MCC is left out (256 MB of cosines)


def recovery_metrics(model: EnergyModel, dataset: Dataset, batch: int = 4096) -> dict[str, float]:
    """The ``recovery.*`` metrics that this model and these data allow (none without a truth)."""
    decoder = _decoder(model, dataset)
    if decoder is None:
        return {}
    truth = dataset.extras[_TRUTH[model.program.target is not None]]
    matches = best_matches(decoder, truth)
    metrics = {"recovery.mmcs": matches.feature_cosine.mean().item(),
               "recovery.mmcs_units": matches.unit_cosine.mean().item()}  # fmt: skip
    if decoder.shape[1] * truth.shape[1] <= MCC_MAX_ENTRIES:
        metrics["recovery.mcc"] = mcc(decoder, truth)
    true_codes = dataset.extras.get("codes_test")
    x = dataset.x_test
    if true_codes is not None and x.shape[0] > 0 and tuple(true_codes.shape) == (x.shape[0], truth.shape[1]):
        targets = dataset.target_test if model.program.target is not None else None
        found = detection(_unit_firing(model, x, batch, targets), true_codes, matches.unit_match)
        metrics.update({"recovery.precision": found.precision.mean().item(), "recovery.recall": found.recall.mean().item(),
                        "recovery.f1": found.f1.mean().item(), "recovery.feature_f1": found.feature_f1.mean().item()})  # fmt: skip
    return {key: round(value, 6) for key, value in metrics.items()}


_TRUTH = {False: "dictionary", True: "target_dictionary"}  # by whether the spec is a transcoder


def _decoder(model: EnergyModel, dataset: Dataset) -> torch.Tensor | None:
    """The decoder ``(dim, units)``, when the data carry a true dictionary of the same height."""
    name, truth = model.program.roles.decoder, dataset.extras.get(_TRUTH[model.program.target is not None])
    if name is None or truth is None or truth.dim() != 2:
        return None
    decoder = model.params[name].detach()
    return decoder if decoder.dim() == 2 and decoder.shape[0] == truth.shape[0] else None


def _unit_firing(model: EnergyModel, x: torch.Tensor, batch: int, targets: torch.Tensor | None) -> torch.Tensor:
    """Where the inferred codes of ``x`` (with their ``targets``, a transcoder's) are nonzero: a sparse
    ``(samples, units)`` tensor of ones."""
    positions = []
    for start in range(0, x.shape[0], batch):
        target = None if targets is None else targets[start : start + batch]
        z = infer_all(model, x[start : start + batch].to(model.device), target=target)
        where = (z != 0).nonzero().T.cpu()
        where[0] += start
        positions.append(where)
        units = z.shape[1]
    indices = torch.cat(positions, dim=1)
    return torch.sparse_coo_tensor(indices, torch.ones(indices.shape[1]), (x.shape[0], units), check_invariants=False)
