"""Dead units: the activity tracker every program has, its window and its alarm.

A latent unit *fires* on a sample when its code is nonzero.  The tracker keeps, per unit, the
number of training samples seen since the unit last fired, counted a batch at a time: after
each training step's inference, a unit that fired on some sample of the batch restarts at 0,
every other unit adds the batch's size,

    c_j ← 0 if z_bj ≠ 0 for some sample b of the batch, else c_j + B.

A unit is *dead* when c_j ≥ N, the window of ``dead after N samples`` (``model.dead_units()``,
``env["dead"]`` in the spec's functions).  Without that setting the window is one epoch of the
training data, at most :data:`DEFAULT_WINDOW_CAP` samples: a unit silent on a whole pass over
the data has learned nothing it uses, and on activations far larger than an epoch of a small
data set 10 million samples is the window the field uses (Gao et al. 2024).

The counts and the window are state slots (``Program.activity``): saved with the model and in
checkpoints, so a resumed run counts on exactly.  With several workers a unit fired when it
fired on any worker's shard (one all-reduce of a vector of units per step), and the batch is
the global one, so every worker keeps the same counts.
"""

from __future__ import annotations

import torch

from energydsl.compiler.program import MAX_DEAD_WINDOW
from energydsl.model import EnergyModel
from energydsl.ops.sparse_codes import firing_counts
from energydsl.training.distributed import SINGLE, Workers

DEFAULT_WINDOW_CAP = 10_000_000  # samples: the default window is one epoch, at most this


def counts(model: EnergyModel) -> torch.Tensor:
    """Per unit, the training samples since it last fired (the tracker's state slot, updated in place)."""
    return model.state[model.program.activity.counts]


def set_default_window(model: EnergyModel, train_samples: int) -> None:
    """Give a model whose spec sets no ``dead after`` its window: one epoch of ``train_samples``, capped.
    A window already set (by the spec, or by the run a checkpoint or model file restores) stays."""
    window = model.state[model.program.activity.window]
    if float(window) == 0:
        window.fill_(min(train_samples, DEFAULT_WINDOW_CAP))


@torch.no_grad()
def track(model: EnergyModel, z: torch.Tensor, batch_size: int, workers: Workers = SINGLE) -> None:
    """Count one training batch: ``z`` is this worker's codes ``(B, units)``, ``batch_size`` the global batch."""
    fired = firing_counts(z) > 0
    if workers.size > 1:
        fired = workers.sum_(fired.to(workers.device, torch.float32)).to(fired.device) > 0
    seen = counts(model)
    # saturate below 2^24, where float32 would stop counting exactly (no window is longer)
    seen.add_(batch_size).clamp_(max=MAX_DEAD_WINDOW).masked_fill_(fired, 0)


def dead_count(model: EnergyModel) -> int:
    return int(model.dead_units().sum())


def dead_alarm(model: EnergyModel) -> float | None:
    """The share of dead units when it is above the spec's ``warn dead above`` share, else None."""
    units = counts(model).numel()
    share = dead_count(model) / units if units else 0.0
    return share if share > model.program.training.dead_alarm else None
