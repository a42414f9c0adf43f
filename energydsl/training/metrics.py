"""The held-out metrics of a model, accumulated a batch at a time (memory bounded by one batch).

Per sample, then summed over the held-out set and divided by its size N:

- ``energy`` and ``term.NAME``: the energy and each term; ``l0``: the nonzero codes;
- ``recon_error``: Σ‖x − x̂‖² / Σ‖x‖², the reconstruction term's error relative to the input's energy
  (x: what the reconstruction term reconstructs, a transcoder's target);
- ``fvu``, the fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the held-out mean,
  and ``explained_variance`` = 1 − fvu.  x is the reconstruction term's target, x̂ its estimate
  (:func:`reconstruction`).  Σ‖x − x̄‖² comes in the same pass: each batch's mean and spread are
  merged into the running ones (Chan, Golub & LeVeque 1979), which keeps float64's precision even
  where the mean is large next to the spread, as it is for language-model activations;
- ``units.dense``: units firing on more than :data:`DENSE_ABOVE` of the samples; ``units.unused``:
  units firing on none; ``units.dead``: the units the training-time tracker counts as dead
  (:mod:`energydsl.training.activity`), whatever the held-out set;
- ``test_error``: the classifier's error, where there are labels.

Each unit's firing density (its share of held-out samples with a nonzero code) is kept for the
pictures, not written with the metrics, and so, when asked, is where the codes of the first
held-out samples fire (a sparse matrix, :mod:`energydsl.ops.firing`) for the analyses after training.

Memory: a batch holds at most :data:`EVAL_BATCH` samples and, on a wide latent, at most
:data:`EVAL_ENTRIES` code values (256 samples at 65,536 units), so evaluation never holds a
dense (held-out samples × units) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import scipy.sparse
import torch

from energydsl.data import Dataset
from energydsl.expr.compiler import Env
from energydsl.model import EnergyModel
from energydsl.ops.firing import FiringRecorder
from energydsl.ops.sparse_codes import firing_counts, nonzero_count

EVAL_BATCH = 1024
EVAL_ENTRIES = 1 << 24  # code values of one evaluation batch at most (64 MiB of float32)
FIRING_ENTRIES = 1 << 24  # firings kept for the analyses at most (about 200 MiB with their sparse matrix)
DENSE_ABOVE = 0.1  # a unit firing on more than a tenth of the samples is dense (the field's usual line)


def eval_rows(units: int) -> int:
    """The samples of one evaluation batch: :data:`EVAL_BATCH`, fewer where ``units`` is large."""
    return max(1, min(EVAL_BATCH, EVAL_ENTRIES // max(units, 1)))


def squared_errors(target: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """‖x − x̂‖² per sample ``(B,)``, in float64."""
    return ((target - estimate).flatten(1).double() ** 2).sum(dim=1)


@dataclass
class Spread:
    """Count, mean and Σ‖x − mean‖² of the vectors seen, merged a batch at a time."""

    count: int = 0
    mean: torch.Tensor | float = 0.0
    squares: float = 0.0  # Σ‖x − mean‖²

    def add(self, x: torch.Tensor) -> None:
        x = x.flatten(1).double()
        n, mean = x.shape[0], x.mean(dim=0)
        squares = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.squares += squares + float((delta**2).sum()) * self.count * n / total
        self.mean = self.mean + delta * (n / total)
        self.count = total


@dataclass
class HeldOut:
    """What :func:`held_out` returns: the metrics, and each unit's firing density ``(units,)``."""

    metrics: dict
    density: torch.Tensor
    firing: scipy.sparse.csr_matrix | None = None  # where the first ``keep`` samples' codes fire


@torch.no_grad()
def held_out(model: EnergyModel, data: Dataset, split: str = "test", keep: int = 0) -> HeldOut:
    """The metrics of the module docstring on the test split (the training split when there is none);
    with ``keep``, also where the codes of its first ``keep`` samples fire (fewer samples where
    those firings would pass :data:`FIRING_ENTRIES`: see ``HeldOut.firing.shape[0]``)."""
    x = data.x_test if split == "test" and data.x_test.shape[0] else data.x_train
    labels = data.y_test if x is data.x_test else data.y_train
    labels = labels if model.program.label is not None else None
    targets = (data.target_test if x is data.x_test else data.target_train) if model.program.target else None
    model.eval()
    sums: dict[str, float] = {}
    spread = Spread()
    firing = torch.zeros(model.program.latent.shape, dtype=torch.float64)
    recorder = FiringRecorder(keep, FIRING_ENTRIES)
    rows = eval_rows(firing.numel())
    for start in range(0, x.shape[0], rows):
        xb = x[start : start + rows].to(model.device)
        yb = None if labels is None else labels[start : start + rows].to(model.device)
        tp = None if targets is None else model.preprocess_target(targets[start : start + rows])
        xp = model.preprocess(xb)
        with model.batch_scope():
            z = model.infer_prepared(xp, target=tp)  # labels are unknown at test time, a transcoder's targets known
            env = model.env(xp, z, yb, target=tp)
            recon = model.program.reconstruction
            pair = recon.reconstruction(env) if recon is not None else None
            for key, value in _batch_sums(model, env, xp, z, yb, pair).items():
                sums[key] = sums.get(key, 0.0) + value
        if pair is not None:
            spread.add(pair[0])
        firing += firing_counts(z).double().cpu()
        if keep:
            recorder.add(z)
    count = x.shape[0]
    metrics = {key: value / count for key, value in sums.items() if not key.startswith("_")}
    if "_target_energy" in sums:
        metrics["recon_error"] = sums["_squared_error"] / max(sums["_target_energy"], 1e-30)
    if "_squared_error" in sums and spread.squares > 0:
        metrics["fvu"] = sums["_squared_error"] / spread.squares
        metrics["explained_variance"] = 1 - metrics["fvu"]
    metrics = {key: round(value, 6) for key, value in metrics.items()}
    density = firing / max(count, 1)
    metrics["units.dead"] = int(model.dead_units().sum())
    metrics["units.dense"] = int((density > DENSE_ABOVE).sum())
    metrics["units.unused"] = int((firing == 0).sum())
    return HeldOut(metrics, density, recorder.matrix() if keep else None)


def evaluate(model: EnergyModel, data: Dataset, split: str = "test") -> dict:
    """The held-out metrics of the module docstring, rounded to 6 digits."""
    return held_out(model, data, split).metrics


def _batch_sums(model: EnergyModel, env: Env, xp, z, y, pair) -> dict[str, float]:
    """Sums over the batch (divided by the sample count by the caller; keys with _ are not metrics);
    ``pair``: the reconstruction's (target, estimate), or None."""
    out: dict[str, float] = {}
    total = torch.zeros(xp.shape[0], device=xp.device)
    for term in model.active_terms(None, y is not None):
        energy = term.energy(env)
        total += energy
        out[f"term.{term.name}"] = energy.sum().item()
    out["energy"] = total.sum().item()
    out["l0"] = nonzero_count(z)
    if pair is not None:  # the term's own (target, estimate): a matryoshka run reports its whole dictionary's
        out["_squared_error"] = squared_errors(*pair).sum().item()
        out["_target_energy"] = (pair[0].flatten(1).double() ** 2).sum().item()
    if y is not None and model.program.classifier is not None:
        logits = model.program.classifier.args[0](env)
        out["test_error"] = (logits.argmax(dim=1) != y).sum().item()
    return out
