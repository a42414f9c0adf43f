"""What a spec compiles to: the :class:`Program` and its parts (no tensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from energydsl.compiler.roles import Roles
from energydsl.compiler.schedules import Schedule
from energydsl.errors import Span, SpecWarning
from energydsl.expr.compiler import Closure, StateSlot
from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.ops.constraints import Constraint
from energydsl.ops.pools import PoolFamily
from energydsl.optim import OPTIMIZERS, Optimizer
from energydsl.solvers import SOLVERS, Solver
from energydsl.terms import BoundTerm

DEFAULT_STEPS, DEFAULT_TOL = 200, 1e-4
COMMON_OPTIONS = ("steps", "tol", "gap")  # the iterative methods' options, which the compiler checks and callers override


# ---------------------------------------------------------------- the program


@dataclass(frozen=True)
class DataCall:
    name: str
    args: tuple = ()
    kwargs: tuple[tuple[str, object], ...] = ()

    def text(self) -> str:
        items = [_argument_text(a) for a in self.args] + [f"{k}={_argument_text(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(items)})" if items else self.name


def _argument_text(value) -> str:
    """A data argument as a spec writes it: flags as the bare words true and false."""
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


@dataclass(frozen=True)
class Variable:
    name: str
    shape: tuple[int, ...]  # a latent is always a vector here: its values, stored flat
    span: Span
    layout: tuple[int, ...] | None = None  # an image latent's [maps, rows, cols] (channel-major storage)


@dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]
    init: Closure  # Env (with "init:target" etc.) -> tensor or float
    learn: str  # descent | ascent | fixed
    lr: float | None  # explicit learning rate, else base lr * lr_scale
    lr_scale: float
    constraints: tuple[Constraint, ...]
    masks: tuple[Closure, ...]  # one per "mask" constraint, same order
    span: Span


@dataclass(frozen=True)
class Method:
    kind: str  # the name of a registered solver: fista, ista, lars, encoder, ...
    steps: int = DEFAULT_STEPS
    tol: float = DEFAULT_TOL
    span: Span | None = None
    options: tuple[tuple[str, float], ...] = ()  # every option as written (a plugin solver's own too)
    gap: float = 0.0  # stop on this relative duality gap instead of tol (0: on tol)

    @property
    def solver(self) -> Solver:
        return SOLVERS[self.kind]

    @property
    def own_options(self) -> dict[str, float]:
        """The options of the method's own (all but steps and tol), as written: what its solve receives."""
        return {name: value for name, value in self.options if name not in COMMON_OPTIONS}

    def __str__(self) -> str:
        if not self.solver.options:
            return self.kind
        common = {"steps": f"{self.steps}", "tol": f"{self.tol:g}", "gap": f"{self.gap:g}"}
        hidden = "tol" if self.gap > 0 else "gap"  # the method stops on one of them
        shown = {name: common[name] for name in COMMON_OPTIONS if name in self.solver.options and name != hidden}
        shown |= {name: f"{value:g}" for name, value in self.own_options.items()}
        return f"{self.kind}({', '.join(f'{name} = {value}' for name, value in shown.items())})"


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    terms: tuple[str, ...]
    schedule: str = "constant"  # how the learning rates move over the phase's epochs
    lr_scale: float = 1.0  # every learning rate times this during the phase


DEFAULT_DEAD_ALARM = 0.5  # warn when more than half the units are dead: most of the dictionary is wasted
MAX_DEAD_WINDOW = 2**24  # the activity counts are float32 state: exact integers up to 2^24


@dataclass(frozen=True)
class Resampling:
    """``resample dead every N steps``: which parameters restart a dead unit (see training/resampling.py)."""

    every: int  # optimizer steps between resamplings
    decoder: str  # D[inputs, units] of the reconstruction sqerr(x, D @ z): column j is unit j's atom
    encoder: str | None  # E[units, inputs] of the encoder: row j is unit j's detector (None: no encoder)
    encoder_bias: str | None  # b[units] added to E's product in the encoder (None: none found)


@dataclass(frozen=True)
class Training:
    optimizer: str
    options: dict
    lr: float
    batch: int
    seed: int
    phases: tuple[Phase, ...]
    decoders: tuple[tuple[str, str], ...] = ()  # what the optimizer's check returned: bcd's (parameter, its sqerr term)
    dead_after: int | None = None  # training samples without firing that make a unit dead (None: one epoch)
    dead_alarm: float = DEFAULT_DEAD_ALARM  # the share of dead units above which the run warns
    resampling: Resampling | None = None  # restarting dead units (None: never)

    @property
    def entry(self) -> Optimizer:
        """The optimizer's registry entry."""
        return OPTIMIZERS[self.optimizer]

    def settings(self) -> dict:
        """The optimizer's settings as the user would write them (bcd has no learning rate)."""
        return {"lr": self.lr, **self.options} if self.entry.has_lr else dict(self.options)


@dataclass(frozen=True)
class Activity:
    """The state slots of the dead-unit tracker that every program has (see training/activity.py)."""

    counts: str = "activity"  # per latent unit: training samples since it last fired
    window: str = "dead_window"  # a scalar: the samples without firing that make a unit dead (0: not yet known)


@dataclass
class Program:
    spec: S.Spec
    name: str
    constants: dict[str, float]
    data: DataCall
    sample_shape: tuple[int, ...]  # as the data gives it
    input: Variable
    normalize: str | None
    label: Variable | None  # shape (classes,)
    latent: Variable
    nonneg: bool
    params: list[ParamPlan]
    structures: dict[str, st.Structure]
    pools: dict[str, PoolFamily]
    lets: dict[str, Closure]
    encoder: Closure | None
    sparse_codes: bool  # the encoder returns a few units per sample (ops.sparse_codes), not dense codes
    terms: list[BoundTerm]
    methods: tuple[Method, ...]
    training: Training
    inference_terms: tuple[str, ...] | None = None  # what FISTA minimises (None: every term)
    roles: Roles = Roles()  # what each parameter is for (decoder, encoder, classifier, ...)
    states: tuple[StateSlot, ...] = ()  # what the model keeps beside its parameters (see StateSlot)
    activity: Activity = Activity()  # the slots of the dead-unit tracker, among the states
    schedules: tuple[Schedule, ...] = ()  # the constants that ramps move during training (see schedules.py)
    target: Variable | None = None  # a transcoder's target, reconstructed from the code of the input
    # where the data source's relative paths start: the working directory for data given on the command
    # line or to load(data=...); None: the spec's folder (a data line of the spec)
    data_dir: Path | None = None
    warnings: tuple[SpecWarning, ...] = ()  # what compiles but is probably a slip (check and run print them)

    @property
    def classes(self) -> int | None:
        return self.label.shape[0] if self.label else None

    @property
    def reconstructed(self) -> Variable:
        """What the model reconstructs: the input, or a transcoder's target."""
        return self.target or self.input

    @property
    def reconstruction(self) -> BoundTerm | None:
        """The first reconstruction term of the input, ``sqerr(x, ...)``, or of a transcoder's target,
        ``sqerr(y, ...)``: what 'reconstruction error' measures."""
        for term in self.terms:
            if term.term.role == "reconstruction" and term.first_arg == self.reconstructed.name:
                return term
        return None

    @property
    def classifier(self) -> BoundTerm | None:
        return next((t for t in self.terms if t.term.role == "classifier"), None)
