"""The generic loop, one for every spec.

For each minibatch: infer z* with the parameters frozen (or run the encoder),
take one descent step on the parameters that descend and one ascent step on
those that ascend (both from the same gradient of the batch's mean energy), then
project every parameter onto its constraints.  Phases switch terms on and off; ramps
move constants before every step (see :mod:`energydsl.compiler.schedules`).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field

import torch

from energydsl.compiler import Phase, finish_schedules, set_schedules
from energydsl.data import DataError, Dataset
from energydsl.errors import NumericalError
from energydsl.expr.compiler import Across
from energydsl.model import EnergyModel
from energydsl.optim.bcd import BlockCoordinateDictionary
from energydsl.training import activity
from energydsl.training.distributed import SINGLE, Workers
from energydsl.training.feed import Order, epoch_batches, epoch_order, resident, worker_batches
from energydsl.training.metrics import evaluate
from energydsl.training.resampling import resample_dead_units


@dataclass
class Optimizers:
    descent: torch.optim.Optimizer | None
    ascent: torch.optim.Optimizer | None

    def zero_grad(self) -> None:
        for opt in (self.descent, self.ascent):
            if opt is not None:
                opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in (self.descent, self.ascent):
            if opt is not None:
                opt.step()


def make_optimizers(model: EnergyModel) -> Optimizers:
    """One optimizer per direction; each parameter its own group and learning rate."""
    training = model.program.training
    groups: dict[str, list[dict]] = {"descent": [], "ascent": []}
    for plan in model.program.params:
        if plan.learn == "fixed":
            continue
        lr = plan.lr if plan.lr is not None else training.lr * plan.lr_scale
        groups[plan.learn].append({"params": [model.params[plan.name]], "lr": lr, "base_lr": lr})
    return Optimizers(*(_optimizer(model, groups[d], maximize=d == "ascent") for d in ("descent", "ascent")))


def _optimizer(model: EnergyModel, groups: list[dict], maximize: bool):
    if not groups:
        return None
    training = model.program.training
    names = {id(p): name for name, p in model.params.items()}
    return training.entry.make(groups, dict(training.options), training.lr, maximize,
                               lambda D: _column_projection(model, names[id(D)]))  # fmt: skip


def _column_projection(model: EnergyModel, name: str):
    """project(D, j): column j of parameter ``name`` onto its constraints, in place (bcd's
    constraints — col_norm, nonneg, mask — act on each column alone)."""
    plan = next(p for p in model.program.params if p.name == name)
    masks = iter(model.masks[name])
    steps = [(c, next(masks) if c.masked else None) for c in plan.constraints]

    def project(D: torch.Tensor, j: int) -> None:
        for constraint, mask in steps:
            constraint.project(D[:, j : j + 1], None if mask is None else mask[:, j : j + 1])

    return project


class Interrupted(Exception):
    """Ctrl-C during training, raised after the loop saved its state."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped.

    ``order`` is the current epoch's sample order, kept so that a resumed epoch
    visits the remaining batches in the same order: a permutation of an in-memory set, or
    the :class:`~energydsl.data.streamed.StreamOrder` (a seed) of samples read from disk.
    """

    generator: torch.Generator
    optimizers: Optimizers
    history: list[dict] = field(default_factory=list)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the current epoch
    order: Order | None = None


def initial_state(model: EnergyModel, seed: int | None = None) -> LoopState:
    training = model.program.training
    generator = torch.Generator().manual_seed(training.seed if seed is None else seed)
    return LoopState(generator, make_optimizers(model))


def train_step(model: EnergyModel, optimizers: Optimizers, x, y, terms, workers: Workers = SINGLE,
               batch_size: int | None = None, convergence: list | None = None, target=None) -> float:  # fmt: skip
    """One minibatch of the generic loop; returns the batch's mean energy.  The inference
    appends to ``convergence`` (when given) how each iterative method ended on each sample.
    ``target``: the samples' targets, for a transcoder (as the data give them, like ``x``).

    With several workers, ``x`` is this worker's shard of a global batch of
    ``batch_size`` samples, and the gradients are summed over the workers.
    A non-finite energy stops before the parameters move; a parameter that the
    step made non-finite stops right after (the caller keeps the last checkpoint).
    The activity tracker counts the batch's codes once the energy is computed, so
    the step's terms see the dead units as they were before it.
    """
    xp, tp = model.preprocess(x), model.preprocess_target(target)
    by_encoder = all(m.solver.runs_encoder for m in model.program.methods)
    across = Across(batch_size or x.shape[0], workers.gather) if workers.size > 1 else None
    with model.learning_step(across):
        z = model.infer_prepared(xp, y, terms, differentiable=by_encoder, convergence=convergence, target=tp)
        loss = model.energy_of(xp, z, y, terms, target=tp).sum() / (batch_size or x.shape[0])
    activity.track(model, z, batch_size or x.shape[0], workers)
    value = workers.sum_(loss.detach().clone()).item()
    if not math.isfinite(value):
        check_parameters(model)  # a parameter the previous step broke is the likelier cause
        raise NumericalError(f"the energy is {value}: {_nonfinite_terms(model, xp, z, y, terms, tp)}")
    optimizers.zero_grad()
    if isinstance(optimizers.descent, BlockCoordinateDictionary):
        _accumulate_dictionary_statistics(model, optimizers.descent, xp, z, y, terms, batch_size or x.shape[0], tp)
        workers.sum_all_(optimizers.descent.statistics())
    else:
        loss.backward()
        workers.sum_gradients_(model.params.values())
    optimizers.step()
    model.project_()
    return value


def check_parameters(model: EnergyModel) -> None:
    """Raise if a step made a parameter non-finite.  Not run after every step (it reads every
    parameter, a tenth of a DrSAE step): a broken parameter makes the next step's energy
    non-finite, which is checked, and every checkpoint is checked before it is written."""
    broken = [name for name, p in model.params.items() if not bool(p.isfinite().all())]
    if broken:
        raise NumericalError(f"parameter {', '.join(broken)} became non-finite (nan or inf)")


@torch.no_grad()
def _accumulate_dictionary_statistics(model: EnergyModel, optimizer: BlockCoordinateDictionary, xp, z, y, terms,
                                      batch_size: int, target=None) -> None:  # fmt: skip
    """Give bcd each active dictionary's batch statistics: its term's target and the codes."""
    env = model.env(xp, z.detach(), y, detach=True, target=target)
    for name, term_name in model.program.training.decoders:
        if term_name in terms:
            term = next(t for t in model.program.terms if t.name == term_name)
            optimizer.accumulate(model.params[name], z.detach(), term.args[0](env), 1 / batch_size)


@torch.no_grad()
def _nonfinite_terms(model: EnergyModel, xp, z, y, terms, target=None) -> str:
    if not bool(z.isfinite().all()):
        return f"the inferred {model.program.latent.name} holds nan or inf"
    env = model.env(xp, z, y, detach=True, target=target)
    names = [t.name for t in model.active_terms(terms, y is not None) if not bool(t.energy(env).isfinite().all())]
    return f"term {', '.join(repr(n) for n in names)} is not finite" if names else "the terms' sum overflows"


def epoch_plan(model: EnergyModel) -> list[tuple[Phase, int]]:
    """Every epoch's phase and its index within that phase, in order."""
    return [(phase, k) for phase in model.program.training.phases for k in range(phase.epochs)]


def schedule_factor(phase: Phase, k: int) -> float:
    """The learning-rate factor of the phase's epoch k: its lr_scale times its schedule's
    factor (see compile.SCHEDULES)."""
    if phase.schedule == "cosine":
        return phase.lr_scale * 0.5 * (1 + math.cos(math.pi * k / phase.epochs))
    return phase.lr_scale


def _set_learning_rates(optimizers: Optimizers, factor: float) -> None:
    for optimizer in (optimizers.descent, optimizers.ascent):
        for group in optimizer.param_groups if optimizer is not None else ():
            group["lr"] = group["base_lr"] * factor


def train(
    model: EnergyModel,
    data: Dataset,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every: int = 0,
    seed: int | None = None,
    state: LoopState | None = None,
    workers: Workers = SINGLE,
) -> list[dict]:
    """Train ``model`` on ``data`` through the spec's phases; returns one metrics dict per epoch.

    ``on_step(done, total, energy)`` follows every step with the batches done
    in this epoch, the epoch's batch count and the batch's mean energy.
    ``on_checkpoint(state)`` is called every ``checkpoint_every`` steps, after every
    epoch and on Ctrl-C (which then raises :class:`Interrupted`).  Passing the
    ``state`` of a checkpoint continues that run: on CPU the result is bitwise the
    same as a run that was never interrupted.  With several ``workers`` (see
    :mod:`energydsl.training.distributed`) each one trains on its shard of every batch and
    only rank 0 evaluates, reports and saves.  Training never warns of inference that stops
    at its step cap; each epoch's metrics give ``infer.capped``, the share of the training
    samples whose inference did (of those inferred since the run started or resumed), and
    ``units.dead``, those the activity tracker counts as dead, with ``units.dead_alarm``, their
    share, in the epochs where it is above the spec's ``warn dead above``.  With ``resample dead
    every N steps`` the dead units restart after every N-th step (:mod:`energydsl.training.resampling`).
    """
    training = model.program.training
    state = state if state is not None else initial_state(model, seed)
    save = on_checkpoint if on_checkpoint is not None and workers.main else (lambda _state: None)
    device = model.device
    check_enough_data(model, data)
    activity.set_default_window(model, data.x_train.shape[0])
    x_train = resident(data.x_train, device)
    y_train = data.y_train.to(device) if data.y_train is not None and model.program.label else None
    target_train = resident(data.target_train, device) if model.program.target else None
    plan = epoch_plan(model)
    schedules = model.program.schedules
    with _deferred_interrupts() as interrupted, _final_values_after(schedules), ExitStack() as readers:
        while state.epoch < len(plan):
            phase, k = plan[state.epoch]
            _set_learning_rates(state.optimizers, schedule_factor(phase, k))
            start = time.perf_counter()
            model.train()
            if state.order is None:
                state.order = epoch_order(x_train, state.generator)
            batches = epoch_batches(state.order, training.batch, device)
            capped = torch.zeros(2, dtype=torch.float64, device=device)  # samples capped at the step cap, inferred
            feed = readers.enter_context(closing(worker_batches(x_train, batches, state.batch, workers, device)))
            for batch, mine, x in feed:
                follow_schedules(schedules, state, len(batches))
                y = None if y_train is None else y_train[mine]
                target = None if target_train is None else target_train[mine].to(device)  # streamed: read here
                reports = []
                try:
                    energy = train_step(model, state.optimizers, x, y, phase.terms, workers, len(batch), reports,
                                        target)  # fmt: skip
                    if training.resampling is not None and (state.step + 1) % training.resampling.every == 0:
                        resample_dead_units(model, (state.optimizers.descent, state.optimizers.ascent), x_train,
                                            state.generator, workers, target_train)  # fmt: skip
                    stopping = workers.any(interrupted())
                    due = checkpoint_every and (state.step + 1) % checkpoint_every == 0
                    if stopping or due or state.batch + 1 == len(batches):
                        check_parameters(model)  # before anything is saved
                except NumericalError as error:
                    raise NumericalError(f"step {state.step + 1} (epoch {state.epoch + 1}, phase {phase.name}): "
                                         f"{error}") from None  # fmt: skip
                for report in reports:  # no sync with the device: summed once per epoch
                    capped[0] += report.capped.sum()
                    capped[1] += report.capped.numel()
                state.step += 1
                state.batch += 1
                if on_step is not None and workers.main:
                    on_step(state.batch, len(batches), energy)
                if stopping:
                    save(state)
                    raise Interrupted(state.step)
                if due:
                    save(state)
            state.epoch, state.batch, state.order = state.epoch + 1, 0, None
            capped = workers.sum_(capped.to(workers.device)).tolist()
            if workers.main:
                follow_schedules(schedules, state, len(batches))  # evaluated with the values at the epoch's end
                metrics = {"phase": phase.name, "epoch": state.epoch, **evaluate(model, data)}
                metrics.update({f"schedule.{s.name}": s.value for s in schedules})
                if capped[1]:
                    metrics["infer.capped"] = round(capped[0] / capped[1], 6)
                alarm = activity.dead_alarm(model)
                if alarm is not None:
                    metrics["units.dead_alarm"] = round(alarm, 4)
                metrics["seconds"] = round(time.perf_counter() - start, 3)
                state.history.append(metrics)
                if on_epoch is not None:
                    on_epoch(metrics)
                save(state)
    return state.history


@contextmanager
def _final_values_after(schedules):
    """After training (finished, interrupted or failed), every ramped constant at its final value."""
    try:
        yield
    finally:
        finish_schedules(schedules)


def follow_schedules(schedules, state: LoopState, batches: int) -> None:
    """The ramped constants at their values for the loop's position (steps taken, and epochs as a
    fraction of ``batches`` per epoch): a pure function of the position, so a resumed run continues
    every ramp exactly."""
    set_schedules(schedules, state.step, state.epoch + state.batch / batches)


def check_enough_data(model: EnergyModel, data: Dataset) -> None:
    """At least one batch of training samples, and the targets a transcoder reconstructs (checked before
    a run directory is written)."""
    batch = model.program.training.batch
    if data.x_train.shape[0] < batch:
        raise DataError(f"{data.name}: {data.x_train.shape[0]} training samples, fewer than one batch of {batch}; "
                        "lower 'batch' in the spec's train block (or --set it through a const) or give more data")  # fmt: skip
    target = model.program.target
    if target is not None and data.target_train is None:
        raise DataError(f"{data.name}: no targets, but spec '{model.name}' reconstructs its target '{target.name}' "
                        "(give paired data)")  # fmt: skip


@contextmanager
def _deferred_interrupts():
    """Turn the first Ctrl-C into a flag the loop checks between steps.

    A step interrupted half-way would leave parameters and optimizer state out
    of step with each other; the loop instead finishes the step, saves and
    stops.  A second Ctrl-C interrupts at once.  (Signals can only be handled
    in the main thread; elsewhere Ctrl-C behaves as usual.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
