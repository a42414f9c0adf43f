"""Feature recovery in a run's summary: the learned decoder and codes against the data's truth.

When the data carry a true dictionary (``extras["dictionary"]``, ``(dim, features)``: the
``features`` and ``synthetic`` sources, an .npz with a ``dictionary`` array) and the spec
has a decoder (``W`` of ``sqerr(x, W @ z)``, one column per unit) of the same height, the
summary gains (definitions in :mod:`energydsl.ops.recovery`); for a transcoder, whose decoder
writes the target (``sqerr(y, W @ z)``), the truth is the target's dictionary
(``extras["target_dictionary"]``, ``(target_dim, features)``: ``features(..., target_dim = e)``):

- ``recovery.mmcs``: mean over true features of the best |cos| of a decoder column;
- ``recovery.mmcs_units``: mean over units of the best |cos| of a true feature;
- ``recovery.mcc``: mean |cos| of the best one-to-one matching, found by the Hungarian
  algorithm on at most :data:`MCC_MAX_ENTRIES` = 2^25 cosines (e.g. 8192 × 4096): a wide
  dictionary is matched through each feature's best units only, exactly
  (:func:`~energydsl.ops.recovery.bounded_mcc`: 65,536 units against up to 5,792 features);
  left out, with a note in the report, where even that matrix would be larger;

and, when the data also carry the held-out samples' true codes (``extras["codes_test"]``,
dense or sparse), from the model's inferred codes of every held-out sample:

- ``recovery.precision``, ``recovery.recall``, ``recovery.f1``: SAELens's classification
  metrics, each unit's firing as a detector of its best-matching feature's, mean over units;
- ``recovery.feature_f1``: for each true feature the best F1 of any unit, mean over features.

Codes are inferred a batch at a time and only where they are nonzero is kept, so memory
follows the firings, not samples × units; a run passes the firings its held-out pass kept
(:func:`energydsl.training.metrics.held_out`), which stop at 2^24 firings: the detection metrics
then come from the samples before that, with a note.
"""

from __future__ import annotations

import math

import torch

from energydsl.data import Dataset
from energydsl.model import EnergyModel
from energydsl.ops.firing import FiringRecorder, firing_matrix
from energydsl.ops.recovery import best_matches, bounded_mcc, detection
from energydsl.reporting.analysis import infer_all
from energydsl.training.metrics import FIRING_ENTRIES, eval_rows

MCC_MAX_ENTRIES = 1 << 25  # the most cosines a matching may use (256 MB); MCC is left out beyond


def recovery_metrics(model: EnergyModel, dataset: Dataset, batch: int = 4096, firing=None,
                     notes: list[str] | None = None) -> dict[str, float]:
    """The ``recovery.*`` metrics that this model and these data allow (none without a truth).

    ``firing``: where the codes of the first held-out samples fire (else they are inferred here,
    ``batch`` samples at a time); ``notes`` receives a line for each metric left out or cut short.
    """
    notes = [] if notes is None else notes
    decoder = _decoder(model, dataset)
    if decoder is None:
        return {}
    truth = dataset.extras[_TRUTH[model.program.target is not None]]
    matches = best_matches(decoder, truth)
    metrics = {"recovery.mmcs": matches.feature_cosine.mean().item(),
               "recovery.mmcs_units": matches.unit_cosine.mean().item()}  # fmt: skip
    matched = bounded_mcc(decoder, truth, MCC_MAX_ENTRIES)
    if matched is not None:
        metrics["recovery.mcc"] = matched
    else:
        notes.append(f"recovery.mcc left out: matching {decoder.shape[1]:,} units with {truth.shape[1]:,} features "
                     f"needs more than {MCC_MAX_ENTRIES:,} cosines")  # fmt: skip
    true_codes = dataset.extras.get("codes_test")
    x = dataset.x_test
    if true_codes is not None and x.shape[0] > 0 and tuple(true_codes.shape) == (x.shape[0], truth.shape[1]):
        targets = dataset.target_test if model.program.target is not None else None
        firing = _unit_firing(model, x, batch, targets) if firing is None else firing
        if firing.shape[0] < x.shape[0]:
            notes.append(f"recovery precision, recall and F1 from the first {firing.shape[0]:,} of {x.shape[0]:,} "
                         "held-out samples (the firings kept)")  # fmt: skip
        found = detection(firing, firing_matrix(true_codes)[: firing.shape[0]], matches.unit_match)
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


def _unit_firing(model: EnergyModel, x: torch.Tensor, batch: int, targets: torch.Tensor | None):
    """Where the inferred codes of ``x`` (with their ``targets``, a transcoder's) fire: a sparse
    ``(samples, units)`` 0/1 matrix (the first samples only, where all of them would pass
    ``FIRING_ENTRIES`` firings)."""
    recorder = FiringRecorder(x.shape[0], FIRING_ENTRIES)
    rows = min(batch, eval_rows(math.prod(model.program.latent.shape)))
    for start in range(0, x.shape[0], rows):
        target = None if targets is None else targets[start : start + rows]
        recorder.add(infer_all(model, x[start : start + rows].to(model.device), target=target))
    return recorder.matrix()
