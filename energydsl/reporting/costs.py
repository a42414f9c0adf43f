"""What one inference and one training step of a compiled spec cost, in FLOPs: measured, not modelled.

The compiled model is instantiated at the spec's real shapes (with random samples standing in
for the data) and the very code that infers and trains runs once under
:class:`torch.utils.flop_counter.FlopCounterMode`, so the counts follow the expression closures
exactly, hoisted encoder products and the Gram-matrix fast path included.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from energydsl.compiler import Method, Program
from energydsl.model import EnergyModel
from energydsl.solvers.problem import Problem, affine_gradient, lipschitz, smooth_and_grad

# Random samples that stand in for the training data: ``samples(x)`` initialisers draw from them.
STAND_IN_SAMPLES = 64
MEASURE_SEED = 0


def fista_method(program: Program) -> Method | None:
    """The proximal method of the inference chain (fista or ista), if there is one."""
    return next((m for m in program.methods if m.solver.uses_prox), None)


def gram_method(program: Program) -> Method | None:
    """The method of the inference chain that solves from the Gram matrix (lars, omp), if there is one."""
    return next((m for m in program.methods if m.solver.gram), None)


@dataclass(frozen=True)
class SolverCost:
    """FLOPs of one FISTA/ISTA solve, per batch."""

    gram: bool  # the Gram-matrix fast path applies
    quadratic: bool  # every smooth term is at most quadratic in z
    setup: int  # once per batch: the Gram matrix, or the power iteration for L
    gradient: int  # one step's gradient
    autograd_gradient: int  # the same gradient by autograd (forward + backward of the smooth energy)
    backtracking: int  # at least one energy evaluation per step when not quadratic
    prox: int  # one prox

    @property
    def step(self) -> int:
        return self.gradient + self.backtracking + self.prox


@dataclass(frozen=True)
class PhaseCost:
    inference: int
    energy_and_gradient: int  # the energy of the phase's terms and its gradient in the parameters
    train_step: int


@dataclass(frozen=True)
class Costs:
    batch: int
    encoder: int | None
    solver: SolverCost | None  # at test time: no label, all terms
    inference: int
    phases: dict[str, PhaseCost]


def stand_in_model(program: Program) -> EnergyModel:
    """The model at the spec's shapes, initialised from random samples instead of the data."""
    generator = torch.Generator().manual_seed(MEASURE_SEED)
    samples = torch.randn((STAND_IN_SAMPLES,) + tuple(program.sample_shape), generator=generator)
    return EnergyModel(program, samples)


@contextmanager
def _warm_starts_kept(program: Program):
    """The dual prox keeps a warm start on the (shared) term; measuring must not leave one behind."""
    saved = [(t.term.norms, t.term.norms.warm_start) for t in program.terms if t.term.prox_kind == "group"]
    try:
        yield
    finally:
        for norms, dual in saved:
            norms.warm_start = dual


def _uncached(problem: Problem) -> Problem:
    """The problem reading its Hessian afresh: a batch's full setup, whatever earlier batches left in the
    model's cache (the first batch's cost, the same on every measurement)."""
    return replace(problem, gram=None)


def _flops(fn: Callable[[], object]) -> tuple[int, object]:
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def measure(model: EnergyModel) -> Costs:
    """The FLOPs of one inference and of one training step per phase, on a random batch."""
    with _warm_starts_kept(model.program):
        return _measure(model)


def _measure(model: EnergyModel) -> Costs:
    program = model.program
    batch = program.training.batch
    generator = torch.Generator().manual_seed(MEASURE_SEED)
    xp = model.preprocess(torch.randn((batch,) + tuple(program.sample_shape), generator=generator))
    train_y = torch.zeros(batch, dtype=torch.long) if program.label is not None else None
    target = torch.randn((batch,) + program.target.shape, generator=generator) if program.target is not None else None
    encoder = None
    if program.encoder is not None and any(m.solver.runs_encoder for m in program.methods):
        with torch.no_grad():
            encoder, _ = _flops(lambda: program.encoder(model.env(xp, None, None)))
    solvers: dict[tuple, SolverCost | None] = {}

    def solver_for(y, names) -> SolverCost | None:
        """Phases with the same terms in inference share one measurement."""
        key = (y is not None, tuple(t.name for t in model.active_terms(names, y is not None) if t.degree > 0))
        if key not in solvers:
            solvers[key] = _solver_cost(model, xp, y, names, target)
        return solvers[key]

    solver = solver_for(None, None)
    phases = {}
    for phase in program.training.phases:
        phases[phase.name] = _phase_cost(model, xp, train_y, phase.terms, encoder, solver_for, target)
    return Costs(batch, encoder, solver, inference_flops(program, encoder, solver), phases)


def inference_flops(program: Program, encoder: int | None, solver: SolverCost | None) -> int:
    total = encoder or 0
    method = fista_method(program)
    if solver is not None:
        total += solver.setup + (method.steps * solver.step if method is not None else 0)
    return total


def _solver_cost(model: EnergyModel, xp, y, names, target=None) -> SolverCost | None:
    """One FISTA/ISTA solve's FLOPs, by running its pieces as :func:`energydsl.solvers.fista.fista` does."""
    if gram_method(model.program) is not None:
        problem = _uncached(model.problem(xp, y, names, target))
        z = xp.new_zeros((xp.shape[0],) + model.program.latent.shape)
        setup, _ = _flops(lambda: affine_gradient(problem, z))
        return SolverCost(True, True, setup, 0, 0, 0, 0)
    if fista_method(model.program) is None:
        return None
    # code maps estimate L inside _problem (a few samples' power iteration): counted as it runs
    problem_setup, problem = _flops(lambda: _uncached(model.problem(xp, y, names, target)))
    generator = torch.Generator().manual_seed(MEASURE_SEED)
    z = torch.randn((xp.shape[0],) + model.program.latent.shape, generator=generator)
    autograd, _ = _flops(lambda: smooth_and_grad(problem, z))
    dense = problem.quadratic and problem.lipschitz is None  # large code maps never build the Gram matrix
    setup, affine = _flops(lambda: affine_gradient(problem, z)) if dense else (0, None)
    if affine is not None:
        H, c = affine
        gradient, _ = _flops(lambda: torch.addmm(c, z, H))
    elif problem.lipschitz is not None:
        setup, gradient = problem_setup, autograd
    else:
        power, _ = _flops(lambda: lipschitz(problem, z))
        setup, gradient = setup + power, autograd
    backtracking = 0
    if not problem.quadratic:
        with torch.no_grad():
            backtracking, _ = _flops(lambda: problem.smooth(z))
    # the prox works sample by sample: measured on one, it costs exactly batch × that
    one = z[:1]
    prox, _ = _flops(lambda: problem.prox(one, one.new_full((1, 1), 0.1), one))
    return SolverCost(affine is not None, problem.quadratic, setup, gradient, autograd, backtracking,
                      prox * xp.shape[0])  # fmt: skip


def _phase_cost(model: EnergyModel, xp, y, names, encoder: int | None, solver_for, target=None) -> PhaseCost:
    """One training step of a phase: inference, then the energy and its gradient, as train_step runs them."""
    if all(m.solver.runs_encoder for m in model.program.methods):
        # the code keeps its graph: the energy's gradient flows back through the encoder
        total, _ = _flops(lambda: _energy_backward(model, xp, y, names, None, target))
        return PhaseCost(encoder, total - encoder, total)
    solver = solver_for(y, names)
    inference = inference_flops(model.program, encoder, solver)
    generator = torch.Generator().manual_seed(MEASURE_SEED + 1)
    z = torch.randn((xp.shape[0],) + model.program.latent.shape, generator=generator)
    energy, _ = _flops(lambda: _energy_backward(model, xp, y, names, z, target))
    return PhaseCost(inference, energy, inference + energy)


def _energy_backward(model: EnergyModel, xp, y, names, z, target=None) -> None:
    if z is None:
        z = model.infer_prepared(xp, y, names, differentiable=True, target=target)
    loss = model.energy_of(xp, z, y, names, target=target).mean()
    if loss.requires_grad:
        loss.backward()
    for p in model.params.values():
        p.grad = None
