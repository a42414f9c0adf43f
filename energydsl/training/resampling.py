"""Resampling dead units, the alternative to an auxiliary loss on them (Bricken et al. 2023,
"Towards Monosemanticity", Anthropic).

``resample dead every N steps`` in the train block: after every N-th step, each unit the
tracker counts as dead (:mod:`energydsl.training.activity`) restarts on a training input that
the model reconstructs badly.

1. A pool of at most :data:`POOL` training samples is drawn, and each sample's squared
   reconstruction error e_i = ‖x_i − x̂_i‖² under the current model is computed (x the
   reconstruction term's target, x̂ its estimate, as for the FVU).
2. Each dead unit j draws a sample i with probability e_i / Σ e (uniformly when every e_i is 0),
   and with the direction u = x_i / ‖x_i‖ of its input, and v = y_i / ‖y_i‖ of what the model
   reconstructs (y_i: a transcoder's target; x_i otherwise, v = u):
   - its decoder column D[:, j] ← v;
   - its encoder row E[j] ← ρ u, with ρ = :data:`ENCODER_SCALE` times the mean norm of the
     alive units' encoder rows, so that the unit starts to fire on inputs like x_i without
     drowning the others;
   - its encoder bias b[j] ← 0;
   - the optimizer's state for those entries ← 0 (Adam's moments, SGD's momentum, bcd's statistics),
     so that the old unit's running averages do not drag the new one back;
   - its activity count ← 0: a whole window to fire before it can count as dead again.
3. The parameters are projected onto their constraints.

(Bricken et al. weigh the inputs by the square of their loss; the squared error weighs less
towards the few worst inputs.)  The draws come from a generator seeded by one draw of the
loop's own generator, which the checkpoints keep, so a resumed run resamples the same units
on the same inputs.  With several workers every worker computes the errors of its shard of
the pool and one all-reduce gives every worker all of them: every worker then draws the same
samples and makes the same change, and no parameter drifts apart.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from energydsl.data import Samples
from energydsl.model import EnergyModel
from energydsl.training.activity import counts
from energydsl.training.distributed import SINGLE, Workers
from energydsl.training.metrics import EVAL_BATCH, squared_errors

POOL = 8192  # training samples whose errors are computed at each resampling
ENCODER_SCALE = 0.2  # a restarted encoder row's norm, as a share of the alive rows' mean norm


@torch.no_grad()
def resample_dead_units(model: EnergyModel, optimizers: Iterable[torch.optim.Optimizer | None],
                        x_train: torch.Tensor | Samples, generator: torch.Generator, workers: Workers = SINGLE,
                        target_train: torch.Tensor | None = None) -> int:  # fmt: skip
    """Restart every dead unit as the module docstring says; returns how many were.  ``target_train``:
    the training samples' targets, for a transcoder."""
    dead = model.dead_units().nonzero().flatten()
    if not dead.numel():
        return 0  # no draw from the generator: the epochs' sample orders stay those of a run without resampling
    draws = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    pool = torch.randperm(x_train.shape[0], generator=draws)[:POOL]
    errors = _errors(model, x_train, target_train, pool, workers).cpu()
    weights = errors if float(errors.sum()) > 0 else torch.ones_like(errors)
    chosen = pool[torch.multinomial(weights, dead.numel(), replacement=True, generator=draws)].to(x_train.device)
    inputs = _unit_rows(model.preprocess(x_train[chosen].to(model.device)))  # (dead, inputs); samples on disk: read here
    outputs = inputs if target_train is None else _unit_rows(model.preprocess_target(target_train[chosen].to(model.device)))
    _restart(model, list(optimizers), dead.to(model.device), inputs, outputs)
    return dead.numel()


def _unit_rows(samples: torch.Tensor) -> torch.Tensor:
    rows = samples.flatten(1)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _errors(model: EnergyModel, x_train: torch.Tensor | Samples, target_train: torch.Tensor | None, pool: torch.Tensor,
            workers: Workers) -> torch.Tensor:  # fmt: skip
    """‖x − x̂‖² of each pooled sample (float64), the same on every worker."""
    term = model.program.reconstruction
    positions = workers.shard(torch.arange(pool.numel()))
    errors = torch.zeros(pool.numel(), dtype=torch.float64, device=workers.device)
    for part in positions.split(EVAL_BATCH):
        rows = pool[part].to(x_train.device)
        xp = model.preprocess(x_train[rows].to(model.device))  # samples on disk: read here
        tp = None if target_train is None else model.preprocess_target(target_train[rows].to(model.device))
        env = model.env(xp, model.infer_prepared(xp, target=tp), target=tp)
        errors[part.to(workers.device)] = squared_errors(*term.reconstruction(env)).to(workers.device)
    return workers.sum_(errors)


def _restart(model: EnergyModel, optimizers: list, dead: torch.Tensor, inputs: torch.Tensor,
             outputs: torch.Tensor) -> None:  # fmt: skip
    """Restart the ``dead`` units: decoder columns from ``outputs``, encoder rows from ``inputs`` (unit rows)."""
    plan = model.program.training.resampling
    decoder = model.params[plan.decoder]
    decoder[:, dead] = outputs.T.to(decoder.dtype)
    _reset_optimizer_state(optimizers, decoder, dead, axis=1)
    if plan.encoder is not None:
        encoder = model.params[plan.encoder]
        encoder[dead] = (_alive_row_norm(encoder, dead) * ENCODER_SCALE * inputs).to(encoder.dtype)
        _reset_optimizer_state(optimizers, encoder, dead, axis=0)
    if plan.encoder_bias is not None:
        bias = model.params[plan.encoder_bias]
        bias[dead] = 0
        _reset_optimizer_state(optimizers, bias, dead, axis=0)
    counts(model)[dead] = 0
    model.project_()


def _alive_row_norm(encoder: torch.Tensor, dead: torch.Tensor) -> float:
    """The mean norm of the encoder rows of the units that are not dead (of all rows when all are; 1 when 0)."""
    norms = encoder.norm(dim=1)
    alive = torch.ones_like(norms, dtype=torch.bool).index_fill_(0, dead, False)
    mean = float(norms[alive].mean()) if alive.any() else float(norms.mean())
    return mean if mean > 0 else 1.0


def _reset_optimizer_state(optimizers: list, parameter: torch.Tensor, units: torch.Tensor, axis: int) -> None:
    """Zero the optimizer's state of ``parameter`` for ``units`` along ``axis``: in tensors shaped like
    the parameter (Adam's moments, SGD's momentum, bcd's Σ x zᵀ), and in the square statistic over the
    units that bcd keeps beside a dictionary (Σ z zᵀ: the units' rows and columns)."""
    size = parameter.shape[axis]
    for optimizer in optimizers:
        state = optimizer.state.get(parameter, {}) if optimizer is not None else {}
        for value in state.values():
            if not torch.is_tensor(value):
                continue
            if value.shape == parameter.shape:
                value.index_fill_(axis, units, 0)
            elif value.shape == (size, size):
                value.index_fill_(0, units, 0).index_fill_(1, units, 0)
