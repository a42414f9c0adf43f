"""Ramps: constants that move during training (a λ warm-up, a k decay).

``ramp lam from 0 over 1000 steps`` in the train block moves ``lam`` from 0 to its declared (or
``--set``) value over the run's first 1000 optimizer steps, then holds it there;
``ramp k from 4 * k over 2 epochs cosine`` does the same over two epochs along half a cosine.
The start and the length are constant expressions, in which every constant has its declared
value (so ``4 * k`` is four times the final k).

A ramped constant has no fixed value.  Model expressions — the encoder, lets, the energy terms'
arguments and weights — read its current value when they run; anywhere a fixed number is needed
(a size, another constant, an initial value, a data argument, a step count) it is an error at
the use.  The training loop sets every ramp's value before each step from its position in the
run (so a resumed run continues the ramp exactly); outside training the value is the final one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from energydsl.errors import Span, SpecError, SpecWarning, did_you_mean, one_of
from energydsl.expr.compiler import Env, ExprCompiler, Symbol, Value
from energydsl.expr.syntax import names_read
from energydsl.lang import spec as S
from energydsl.terms import VaryingWeight

UNITS = {"steps": "steps", "step": "steps", "epochs": "epochs", "epoch": "epochs"}
SHAPES = {
    "linear": "a straight line from the start value to the final one",
    "cosine": "half a cosine, final + (start − final)·½(1 + cos(π·t/T)): slow at both ends",
}
_SCALAR_ENV = Env({"reference": torch.zeros((), dtype=torch.float64)})  # evaluates a weight's factors


@dataclass(eq=False)
class Schedule:
    """One ramp: ``name`` goes from ``start`` to ``end`` over ``length`` steps or epochs of the
    run, then stays at ``end``.  ``value`` is the current value (``end`` outside training)."""

    name: str
    start: float
    end: float  # the constant's declared (or --set) value
    length: float  # in units; > 0
    unit: str  # "steps" | "epochs"
    shape: str  # "linear" | "cosine"
    span: Span
    value: float = field(init=False)

    def __post_init__(self):
        self.value = self.end

    def at(self, steps: int, epochs: float) -> float:
        """The value after ``steps`` optimizer steps, ``epochs`` epochs (fractional within an epoch)
        of the run: with t/T the share of the ramp done (at most 1), start + (end − start)·t/T for
        ``linear``, end + (start − end)·½(1 + cos(π·t/T)) for ``cosine``."""
        done = min((steps if self.unit == "steps" else epochs) / self.length, 1.0)
        if done >= 1:
            return self.end
        if self.shape == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * done))
        return self.start + (self.end - self.start) * done

    def read(self, env: Env) -> torch.Tensor:
        """The current value as an expression reads it: a 0-dim CPU tensor in the evaluation's dtype
        (a CPU scalar enters a GPU kernel as an argument, with no copy)."""
        return torch.tensor(self.value, dtype=env["reference"].dtype)

    def describe(self) -> str:
        """``lam: 0 → 0.1 over 1000 steps (linear)``."""
        length = f"{self.length:g} {self.unit if self.length != 1 else self.unit[:-1]}"
        return f"{self.name}: {self.start:g} → {self.end:g} over {length} ({self.shape})"


def ramp_readers(spec: S.Spec, name: str) -> list[str]:
    """What reads the ramped constant ``name`` as it moves: ``the encoder``, ``let p``, ``term sparse``."""
    readers = ["the encoder" for decl in spec.encoders if name in names_read(decl.value)]
    readers += [f"let {decl.name.name}" for decl in spec.lets if name in names_read(decl.value)]
    return readers + [f"term {decl.name.name}" for decl in spec.energy if name in names_read(decl.value)]


def set_schedules(schedules, steps: int, epochs: float) -> None:
    """Every ramp at its value after ``steps`` steps and ``epochs`` epochs of the run."""
    for schedule in schedules:
        schedule.value = schedule.at(steps, epochs)


def finish_schedules(schedules) -> None:
    """Every ramp at its final value (after training, and for a loaded model)."""
    for schedule in schedules:
        schedule.value = schedule.end


class SchedulesStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _ramp_declarations(self) -> dict[str, S.RampDecl]:
        """The train block's ramps by constant, each naming a declared constant once."""
        ramps: dict[str, S.RampDecl] = {}
        constants = [decl.name.name for decl in self.spec.consts]
        for ramp in self.spec.train.ramps if self.spec.train else ():
            name = ramp.name.name
            if name not in constants:
                hint = did_you_mean(name, constants) or (one_of(constants) if constants else
                                                          "a ramp moves a constant: declare it with 'const'")  # fmt: skip
                raise SpecError(f"ramp: unknown constant '{name}'", ramp.name.span, hint=hint)
            if name in ramps:
                raise SpecError(f"'{name}' is ramped twice (first at line {ramps[name].span.line})", ramp.name.span)
            ramps[name] = ramp
        return ramps

    @staticmethod
    def _ramped_symbol(ramp: S.RampDecl, read=None) -> Symbol:
        """The symbol of a ramped constant: a run-time scalar whose value ``read`` gives (None while
        the constants are evaluated: none of them may read it, so nothing calls it)."""
        return Symbol("const", Value(()), read or (lambda env: None), changes=f"ramp at line {ramp.span.line}")

    def _schedules(self, ramps: dict[str, S.RampDecl], values: dict[str, float]) -> dict[str, Schedule]:
        """The ramps' schedules, their start and length evaluated with every constant at its declared
        value; then each ramped constant's symbol reads its schedule."""
        fixed = {name: Symbol("const", Value((), const=value), lambda env, v=value: v) for name, value in values.items()}
        compiler = ExprCompiler({**self.scope, **fixed}, "const")
        schedules = {}
        for name, ramp in ramps.items():
            unit = UNITS[ramp.unit.name]
            shape = self._ramp_shape(ramp)
            if unit == "steps":
                length = compiler.integer(ramp.length, "a ramp's length in steps")
            else:
                length = compiler.positive(ramp.length, "a ramp's length in epochs")
            schedule = Schedule(name, compiler.constant(ramp.start), values[name], length, unit, shape, ramp.span)
            self._warn_longer_than_training(schedule, ramp)
            if not ramp_readers(self.spec, name):
                self.warnings.append(SpecWarning(f"ramp '{name}': no model expression reads '{name}'", ramp.name.span,
                                                 hint="the encoder, lets and energy terms read a ramped constant"))
            self.scope[name] = self._ramped_symbol(ramp, schedule.read)
            schedules[name] = schedule
        return schedules

    @staticmethod
    def _ramp_shape(ramp: S.RampDecl) -> str:
        if ramp.shape is None:
            return "linear"
        if ramp.shape.name not in SHAPES:
            raise SpecError(f"unknown ramp shape '{ramp.shape.name}'", ramp.shape.span,
                            hint=did_you_mean(ramp.shape.name, SHAPES) or one_of(SHAPES))  # fmt: skip
        return ramp.shape.name

    def _warn_longer_than_training(self, schedule: Schedule, ramp: S.RampDecl) -> None:
        """A ramp in epochs that outlasts the training never reaches its final value during it (and
        jumps there when training ends).  (In steps, the length of training depends on the data.)"""
        train = self.spec.train
        if schedule.unit != "epochs" or train is None:
            return
        counts = [phase.epochs for phase in train.phases] or [train.epochs]
        if any(count is None for count in counts):
            return  # the phases' own checks report it
        try:
            total = sum(self.consts.constant(count) for count in counts)
        except SpecError:
            return  # reported where the epochs are checked
        if schedule.length > total:
            self.warnings.append(SpecWarning(
                f"ramp '{schedule.name}' lasts {schedule.length:g} epochs, longer than the training "
                f"({total:g} epochs): it ends before reaching {schedule.end:g}", ramp.length.span,
                hint="shorten the ramp, or train longer"))

    # ------------------------------------------------------------ weights that change

    def _varying_weight(self, factors: list[tuple[S.Expr, object, bool]]) -> VaryingWeight | None:
        """The changing part of a term's weight from its factors (node, closure, divides), each a
        scalar expression of constants of which some are ramped."""
        if not factors:
            return None
        for node, _, _ in factors:
            fixed = [n for n in sorted(names_read(node)) if n in self.scope and self.scope[n].role != "const"]
            if fixed:
                raise SpecError("expected a constant number here", node.span)
        closures = [(fn, divides) for _, fn, divides in factors]
        names = sorted(set().union(*(names_read(node) for node, _, _ in factors)) & set(self.schedules))
        ramps = [self.schedules[n] for n in names]
        last: dict = {}

        def value() -> float:
            key = tuple(schedule.value for schedule in ramps)
            if last.get("key") != key:  # a weight is read at every prox step; the ramps move once per step
                product = torch.ones((), dtype=torch.float64)  # a tensor: x / 0 is inf, as the checks expect
                for fn, divides in closures:
                    factor = fn(_SCALAR_ENV)
                    product = product / factor if divides else product * factor
                last.update(key=key, value=float(product))
            return last["value"]

        return VaryingWeight(self._factors_text(factors), value, tuple(names))

    def _factors_text(self, factors) -> str:
        """``lam``, ``lam * k``, ``lam / k``, ``1 / (k + 1)``: the changing factors as written."""
        texts = []
        for node, _, divides in factors:
            text = self._written(node.span)
            if isinstance(node, (S.BinOp, S.Neg)) and (divides or node.kind == "neg" or node.op in "+-"):
                text = f"({text})"
            texts.append((text, divides))
        product = " * ".join(text for text, divides in texts if not divides) or "1"
        return product + "".join(f" / {text}" for text, divides in texts if divides)

    def _written(self, span: Span) -> str:
        lines = self.spec.source.splitlines()[span.line - 1 : span.end_line]
        if len(lines) == 1:
            return lines[0][span.column - 1 : span.end_column - 1]
        lines[0], lines[-1] = lines[0][span.column - 1 :], lines[-1][: span.end_column - 1]
        return " ".join(" ".join(lines).split())

    def _check_weight_sign(self, name: str, weight: float, varying: VaryingWeight | None, span: Span) -> None:
        """A term's weight must be >= 0 (and finite) throughout training: with ramps, at every
        combination of their start and final values (a ramp moves its constant monotonically)."""
        if varying is None:
            if weight < 0:
                raise SpecError(f"the weight of term '{name}' is negative ({weight:g})", span,
                                hint="an energy term must have a weight >= 0")  # fmt: skip
            return
        schedules = [self.schedules[n] for n in varying.names]
        try:
            for ends in itertools.product(*((s.start, s.end) for s in schedules)):
                for schedule, value in zip(schedules, ends):
                    schedule.value = value
                total = weight * varying.value()
                if not math.isfinite(total) or total < 0:
                    where = ", ".join(f"{s.name} = {v:g}" for s, v in zip(schedules, ends))
                    raise SpecError(f"the weight of term '{name}' is {total:g} with {where}", span,
                                    hint="an energy term must have a finite weight >= 0 throughout training")  # fmt: skip
        finally:
            finish_schedules(schedules)
