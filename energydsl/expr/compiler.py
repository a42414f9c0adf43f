"""Expressions → (static type, closure).

One walk over an expression both checks it (names, roles, shapes) and builds the
closure that computes it, so checking a spec and compiling it cannot disagree.
Closures take an :class:`Env` — the tensors of one evaluation — and return a
tensor (or a float for compile-time scalars).

Tensors that vary per sample carry a leading batch axis: a latent ``z[400]`` is a
``(B, 400)`` tensor, a parameter ``W[784, 400]`` a plain ``(784, 400)`` matrix, and
``W @ z`` is computed as ``z @ W.T`` → ``(B, 784)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.expr.functions import ELEMENTWISE, FUNCTIONS, SCALAR_MATH, l2_normalize
from energydsl.expr.syntax import children, hoist
from energydsl.lang import spec as S
from energydsl.ops import conv
from energydsl.ops.pools import soft_threshold
from energydsl.ops.sparse_codes import Affine

INF = math.inf


@dataclass(frozen=True)
class Value:
    """What the checker knows about an expression before any tensor exists."""

    shape: tuple[int, ...]  # per sample when batched
    batched: bool = False  # varies with the sample (depends on x, y or z)
    const: float | None = None  # the value, for compile-time scalars
    degree: float = 0  # polynomial degree in the latent: 0, 1, 2 or INF
    # For a per-sample ``W @ u (+ c)``: the closure of its unevaluated :class:`Affine`, from which a
    # mechanism choosing k units per sample (topk) computes only those (see ops.sparse_codes).
    affine: Closure | None = field(default=None, compare=False, repr=False)
    sparse: bool = False  # its closure returns SparseCodes: each sample's few units, not a dense tensor

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    def describe(self) -> str:
        dims = ", ".join(map(str, self.shape))
        return f"[{dims}]" if self.shape else "a scalar"


Closure = Callable[["Env"], Any]


@dataclass
class Env:
    """The tensors of one evaluation: variables, parameters, and a cache for lets."""

    tensors: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)
    # Values that do not depend on the latent, shared by the evaluations of one batch (the encoder's
    # and the energy's, see EnergyModel.batch_scope), keyed by (name, detached, grad enabled, input).
    shared: dict[tuple, Any] | None = None

    def latent_free(self, key: str, compute: Callable[[Env], Any]):
        """``compute(self)``, computed once per batch scope and input tensor for a value that does not
        read the latent (inference may also evaluate a few of the batch's samples: another input)."""
        if self.shared is None:
            return compute(self)
        inputs = self.tensors.get("reference")
        slot = (key, self.tensors.get("detached", False), torch.is_grad_enabled(), id(inputs))
        held = self.shared.get(slot)
        if held is None or held[0] is not inputs:  # the entry holds its input, so the id is not reused
            held = self.shared[slot] = (inputs, compute(self))
        return held[1]

    def __getitem__(self, name: str):
        return self.tensors[name]

    def get(self, name: str, default=None):
        """The entry ``name``, or ``default`` where this evaluation has none (an optional entry
        such as "dead", which only a model that tracks unit activity provides)."""
        return self.tensors.get(name, default)


@dataclass(frozen=True)
class Across:
    """A training batch that several workers share (``env["across"]``; None in one process): its global
    size, and ``gather``, which returns the concatenation of one equal-length vector from every worker.
    A function whose value depends on the whole batch (``batchtopk``) reads it to act as one process would."""

    batch: int
    gather: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StateSlot:
    """A tensor the model keeps between evaluations beside its parameters — a running threshold, a
    count — that a function of the spec declares when it is compiled.  It is saved with the model and
    its checkpoints; a closure reads and updates it as ``env["state"][name]`` (in place), and should
    update it only while ``env["training"]``."""

    name: str
    shape: tuple[int, ...]
    fill: float = 0.0  # the initial value of every entry
    description: str = ""  # one line, for explain


@dataclass(frozen=True)
class Symbol:
    """A name in scope: its role, its static type, and how to read it."""

    role: str  # const | input | label | latent | param | let | state | builtin
    value: Value
    read: Closure
    # why a constant has no fixed value (e.g. "ramp at line 12"): model expressions read its
    # current value at run time; anywhere a fixed number is needed it is an error
    changes: str | None = None


class ExprCompiler:
    """Checks and compiles expressions against a scope of symbols.

    ``context`` says where the expression stands and so what it may use:
    ``const`` (numbers and constants only), ``init`` (earlier parameters and the
    initialisers), ``model`` (variables, parameters, lets), ``weight`` (a term's weight:
    constants).  Only ``model`` and ``weight`` expressions run during training, so only they
    may read a constant whose value changes then (see :attr:`Symbol.changes`).
    """

    def __init__(
        self,
        scope: dict[str, Symbol],
        context: str,
        extra_functions: dict | None = None,
        unavailable: dict[str, str] | None = None,
        states: list[StateSlot] | None = None,
    ):
        self.scope = scope
        self.context = context
        # name → callable(compiler, call) -> (Value, Closure); e.g. the initialisers
        self.extra_functions = extra_functions or {}
        # names that exist but not here → why (shown as the hint)
        self.unavailable = unavailable or {}
        # the state slots declared by the functions compiled so far (shared with inner compilers)
        self.states: list[StateSlot] = states if states is not None else []

    def declare_state(self, base: str, shape: tuple[int, ...], fill: float = 0.0, description: str = "") -> str:
        """A new :class:`StateSlot` named ``base`` (``base2``, ``base3``... when taken); returns its name."""
        taken = {slot.name for slot in self.states}
        name = next(f"{base}{n if n > 1 else ''}" for n in itertools.count(1) if f"{base}{n if n > 1 else ''}" not in taken)
        self.states.append(StateSlot(name, tuple(shape), fill, description))
        return name

    def with_scope(self, scope: dict[str, Symbol], unavailable: dict[str, str] | None = None) -> ExprCompiler:
        """A compiler of the same context, functions and state slots over another scope."""
        return ExprCompiler(scope, self.context, self.extra_functions,
                            self.unavailable if unavailable is None else unavailable, self.states)  # fmt: skip

    # ------------------------------------------------------------ entry points

    def compile(self, node: S.Expr) -> tuple[Value, Closure]:
        method = getattr(self, f"_compile_{node.kind}")
        return method(node)

    def constant(self, node: S.Expr) -> float:
        value, _ = self.compile(node)
        if value.const is None:
            changing = self._changing_name(node)
            if changing is not None:
                raise changing_error(changing, self.scope[changing.id].changes, FIXED_NUMBER)
            raise SpecError("expected a constant number here", node.span)
        if math.isnan(value.const) or math.isinf(value.const):
            raise SpecError(f"this constant evaluates to {value.const}", node.span)
        return value.const

    def integer(self, node: S.Expr, what: str, minimum: int = 1) -> int:
        number = self.constant(node)
        if number != int(number):
            raise SpecError(f"{what} must be a whole number, got {number:g}", node.span)
        if number < minimum:
            raise SpecError(f"{what} must be at least {minimum}, got {number:g}", node.span)
        return int(number)

    def positive(self, node: S.Expr, what: str) -> float:
        number = self.constant(node)
        if number <= 0:
            raise SpecError(f"{what} must be positive, got {number:g}", node.span)
        return number

    def _changing_name(self, node: S.Expr) -> S.Name | None:
        """The first name in ``node`` of a constant that changes during training, if any."""
        if isinstance(node, S.Name):
            symbol = self.scope.get(node.id)
            return node if symbol is not None and symbol.changes else None
        return next((found for child in children(node) if (found := self._changing_name(child)) is not None), None)

    # ------------------------------------------------------------ leaves

    def _compile_number(self, node: S.Number):
        number = node.value
        return Value((), const=number), lambda env: number

    def _compile_string(self, node: S.String):
        raise SpecError("a string is only allowed as a data source argument", node.span)

    def _compile_name(self, node: S.Name):
        symbol = self.scope.get(node.id)
        builtin = self.extra_functions.get(node.id)
        if symbol is None and getattr(builtin, "as_name", False):
            return builtin(self, S.Call(span=node.span, func=node.id, func_span=node.span))
        if symbol is None:
            raise self.unknown_name(node.id, node.span)
        if symbol.role == "label":
            raise SpecError(
                f"'{node.id}' is a label: it can only be the second argument of xent(...)", node.span
            )
        if symbol.role == "graph":
            raise SpecError(f"'{node.id}' is a structure: use it in a pool family, a matrix or a tree term",
                            node.span)  # fmt: skip
        if symbol.role == "pools":
            raise SpecError(f"'{node.id}' is a pool family: it can only be an argument of a group term", node.span)
        if symbol.changes and self.context not in RUN_TIME_CONTEXTS:
            raise changing_error(node, symbol.changes, _FIXED_BECAUSE.get(self.context, FIXED_NUMBER))
        return symbol.value, symbol.read

    def unknown_name(self, name: str, span) -> SpecError:
        if name in self.unavailable:
            return SpecError(f"'{name}' cannot be used here", span, hint=self.unavailable[name])
        hint = did_you_mean(name, list(self.scope) + list(self.extra_functions))
        return SpecError(f"unknown name '{name}'", span, hint=hint)

    def _compile_list(self, node: S.ListExpr):
        raise SpecError("a list is only allowed as an argument of a structure or pool builder", node.span)

    # ------------------------------------------------------------ operators

    def _compile_neg(self, node: S.Neg):
        value, fn = self.compile(node.operand)
        if value.const is not None:
            negated = -value.const
            return Value((), const=negated), lambda env: negated
        return value, lambda env: -fn(env)

    def _compile_transpose(self, node: S.Transpose):
        value, fn = self.compile(node.operand)
        if value.batched or len(value.shape) != 2:
            raise SpecError(f".T needs a parameter matrix, this is {self._kind(value)}", node.span)
        return Value(value.shape[::-1], degree=value.degree), lambda env: fn(env).T

    def _compile_binop(self, node: S.BinOp):
        left, left_fn = self.compile(node.left)
        right, right_fn = self.compile(node.right)
        if left.const is not None and right.const is not None:
            return self._fold(node, left.const, right.const)
        if node.op == "@":
            return self._matmul(node, left, left_fn, right, right_fn)
        shape = self._broadcast(node, left, right)
        degree = self._degree(node.op, left, right)
        value = Value(shape, batched=left.batched or right.batched, degree=degree,
                      affine=_affine_sum(node.op, left, left_fn, right, right_fn))  # fmt: skip
        op = _TORCH_OPS[node.op]
        if _per_map(left, right):
            return value, lambda env: op(_map_axis(left_fn(env)), right_fn(env))
        if _per_map(right, left):
            return value, lambda env: op(left_fn(env), _map_axis(right_fn(env)))
        return value, lambda env: op(left_fn(env), right_fn(env))

    def _fold(self, node: S.BinOp, a: float, b: float):
        if node.op == "@":
            raise SpecError("'@' needs matrices and vectors, not numbers", node.span)
        try:
            result = _SCALAR_OPS[node.op](a, b)
        except ZeroDivisionError:
            raise SpecError("division by zero", node.span) from None
        except OverflowError:
            raise SpecError("number too large", node.span) from None
        if isinstance(result, complex):
            raise SpecError(f"({a:g}) ** {b:g} has no real value", node.span)
        return Value((), const=float(result)), lambda env: result

    def _matmul(self, node, left: Value, left_fn, right: Value, right_fn):
        if left.batched or len(left.shape) != 2:
            raise SpecError(
                f"the left side of '@' must be a parameter matrix, this is {self._kind(left)}", node.left.span
            )
        if right.batched and len(right.shape) != 1:
            raise SpecError(f"a per-sample value on the right of '@' must be a vector, this is {right.describe()}",
                            node.right.span, hint="declare the input flat, e.g. x[784], or use flatten(x)")  # fmt: skip
        if len(right.shape) not in (1, 2):
            raise SpecError(f"the right side of '@' must be a vector or a matrix, this is {self._kind(right)}",
                            node.right.span)  # fmt: skip
        if left.shape[1] != right.shape[0]:
            raise SpecError(
                f"shape mismatch in '@': {left.describe()} @ {right.describe()}",
                node.span,
                hint=f"the left side has {left.shape[1]} columns, the right side {right.shape[0]} rows",
            )
        shape = (left.shape[0],) + right.shape[1:]
        value = Value(shape, batched=right.batched, degree=left.degree + right.degree)
        if right.batched:
            if len(shape) == 1:
                value = replace(value, affine=lambda env: Affine(left_fn(env), right_fn(env)))
            return value, lambda env: right_fn(env) @ left_fn(env).T  # (B, n) @ (n, m) -> (B, m)
        return value, lambda env: left_fn(env) @ right_fn(env)

    def _broadcast(self, node: S.BinOp, left: Value, right: Value) -> tuple[int, ...]:
        if left.is_scalar:
            return right.shape
        if right.is_scalar or left.shape == right.shape:
            return left.shape
        if _per_map(left, right) or _per_map(right, left):
            return max(left.shape, right.shape, key=len)
        raise SpecError(
            f"shape mismatch in '{node.op}': {left.describe()} {node.op} {right.describe()}", node.span
        )

    @staticmethod
    def _degree(op: str, left: Value, right: Value) -> float:
        if op in "+-":
            return max(left.degree, right.degree)
        if op == "*":
            return left.degree + right.degree
        if op == "/":
            return left.degree if right.degree == 0 else INF
        return 0 if left.degree == right.degree == 0 else INF  # '**'

    @staticmethod
    def _kind(value: Value) -> str:
        if value.is_scalar:
            return "a scalar"
        return f"a per-sample {value.describe()} value" if value.batched else f"a {value.describe()} parameter"

    # ------------------------------------------------------------ calls

    def _compile_call(self, node: S.Call):
        if node.func == "__once__":
            return compile_once(self, node)
        if node.func in self.extra_functions:
            return self.extra_functions[node.func](self, node)
        if node.func in ELEMENTWISE:
            return self._elementwise(node)
        if node.func == "normalize":
            return self._normalize(node)
        if node.func == "flatten":
            return self._flatten(node)
        if node.func == "shrink":
            return self._shrink(node)
        if node.func == "detach":
            return self._detach(node)
        if node.func == "col_norm":
            return self._col_norm(node)
        if node.func in conv.OPERATORS:
            return self._image_operator(node)
        known = FUNCTIONS + sorted(self.extra_functions)
        raise SpecError(f"unknown function '{node.func}'", node.func_span,
                        hint=did_you_mean(node.func, known) or one_of(known))  # fmt: skip

    def arguments(self, node: S.Call, count: int, keywords: tuple[str, ...] = ()) -> list[S.Expr | None]:
        """Positional or keyword arguments, by position; missing ones are None."""
        names = tuple(keywords) or tuple(f"#{i}" for i in range(count))
        if len(node.args) > count:
            raise SpecError(f"{node.func}() takes at most {count} argument(s), got {len(node.args)}",
                            node.args[count].span)  # fmt: skip
        slots: list[S.Expr | None] = list(node.args) + [None] * (count - len(node.args))
        for kw in node.kwargs:
            if kw.name not in names:
                raise SpecError(f"{node.func}() has no argument '{kw.name}'", kw.span,
                                hint=did_you_mean(kw.name, names) or (one_of(names) if keywords else None))  # fmt: skip
            position = names.index(kw.name)
            if slots[position] is not None:
                raise SpecError(f"{node.func}() got '{kw.name}' twice", kw.span)
            slots[position] = kw.value
        return slots

    def required(self, node: S.Call, slots, count: int) -> None:
        for i in range(count):
            if slots[i] is None:
                raise SpecError(f"{node.func}() needs {count} argument(s)", node.span)

    def _elementwise(self, node: S.Call):
        slots = self.arguments(node, 1)
        self.required(node, slots, 1)
        value, fn = self.compile(slots[0])
        torch_fn = ELEMENTWISE[node.func]
        if value.const is not None:
            try:
                result = float(SCALAR_MATH[node.func](value.const))
            except (ValueError, OverflowError):
                raise SpecError(f"{node.func}({value.const:g}) is not defined", node.span) from None
            return Value((), const=result), lambda env: result
        degree = 0 if value.degree == 0 else INF
        return Value(value.shape, value.batched, degree=degree), lambda env: torch_fn(fn(env))

    def _normalize(self, node: S.Call):
        slots = self.arguments(node, 1)
        self.required(node, slots, 1)
        value, fn = self.compile(slots[0])
        if not value.batched:
            raise SpecError("normalize() scales each sample to unit l2 norm: it needs a per-sample value",
                            node.span)  # fmt: skip
        degree = 0 if value.degree == 0 else INF
        return Value(value.shape, True, degree=degree), lambda env: l2_normalize(fn(env))

    def _flatten(self, node: S.Call):
        slots = self.arguments(node, 1)
        self.required(node, slots, 1)
        value, fn = self.compile(slots[0])
        if not value.batched:
            raise SpecError("flatten() makes each sample a vector: it needs a per-sample value", node.span)
        flat = Value((math.prod(value.shape),), True, degree=value.degree)
        return flat, lambda env: fn(env).flatten(1)

    def _shrink(self, node: S.Call):
        slots = self.arguments(node, 2, ("value", "threshold"))
        self.required(node, slots, 2)
        value, fn = self.compile(slots[0])
        theta, theta_fn = self.compile(slots[1])
        if not (theta.is_scalar or theta.shape == value.shape):
            raise SpecError(f"shrink() threshold must be a scalar or {value.describe()}, got {theta.describe()}",
                            slots[1].span)  # fmt: skip
        degree = 0 if value.degree == theta.degree == 0 else INF
        result = Value(value.shape, value.batched or theta.batched, degree=degree)
        return result, lambda env: soft_threshold(fn(env), theta_fn(env))

    def _detach(self, node: S.Call):
        slots = self.arguments(node, 1, ("v",))
        self.required(node, slots, 1)
        value, fn = self.compile(slots[0])
        if value.const is not None:  # a number has no gradient to stop
            return value, fn
        # the same numbers, but the latent's gradient through it is 0: not a polynomial in the latent
        result = Value(value.shape, value.batched, degree=0 if value.degree == 0 else INF)
        return result, lambda env: _detached(fn(env))

    def _col_norm(self, node: S.Call):
        slots = self.arguments(node, 1, ("matrix",))
        self.required(node, slots, 1)
        value, fn = self.compile(slots[0])
        if value.batched or len(value.shape) != 2:
            raise SpecError(f"col_norm() needs a parameter matrix, this is {self._kind(value)}", slots[0].span,
                            hint="e.g. col_norm(D) for a decoder 'param D[d, units]': one norm per unit")  # fmt: skip
        return Value(value.shape[1:], degree=value.degree), lambda env: fn(env).norm(dim=0)

    def _image_operator(self, node: S.Call):
        """``conv(K, v, stride, padding)`` and the other operators of :mod:`energydsl.ops.conv`."""
        slots = self.arguments(node, 4, ("kernel", "value") + conv.OPTIONS)
        self.required(node, slots, 2)
        rank = conv.OPERATORS[node.func][0]
        kernel, kernel_fn = self.compile(slots[0])
        if kernel.batched or len(kernel.shape) != rank:
            example = "[out, in, kh, kw]" if rank == 4 else "[out, rows, cols, in, kh, kw]"
            raise SpecError(f"{node.func}() needs a kernel parameter {example}, this is {self._kind(kernel)}",
                            slots[0].span)  # fmt: skip
        image, image_fn = self.compile(slots[1])
        if not image.batched or len(image.shape) != 3:
            raise SpecError(f"{node.func}() needs a per-sample image [channels, rows, cols], this is "
                            f"{self._kind(image)}", slots[1].span,
                            hint="declare it as an image, e.g. 'input x[1, 28, 28]' or 'latent z[16, 28, 28]'")  # fmt: skip
        stride = self.integer(slots[2], "the stride") if slots[2] is not None else 1
        padding = self.integer(slots[3], "the padding", 0) if slots[3] is not None else 0
        geometry = conv.Geometry(stride, padding)
        try:
            shape = conv.output_shape(node.func, kernel.shape, image.shape, geometry)
        except ValueError as error:
            raise SpecError(f"{node.func}(): {error}", node.span) from None
        value = Value(shape, batched=True, degree=kernel.degree + image.degree)
        return value, lambda env: conv.apply(node.func, kernel_fn(env), image_fn(env), geometry, shape)

    # ------------------------------------------------------------ recurrence

    def _compile_recurrent(self, node: S.Recurrent):
        raise SpecError("recurrent(...) { ... } can only define the encoder or a let", node.span)

    def recurrent(self, node: S.Recurrent, state: str, state_value: Value) -> tuple[Value, Closure]:
        """``recurrent(T) { body }`` where ``state`` names the state inside the body.

        Subexpressions of the body that do not read the state (``E @ x``) are
        computed once, before the loop.
        """
        steps = self.integer(node.steps, "the step count of recurrent(...)")
        state_symbol = Symbol("state", Value(state_value.shape, True, degree=state_value.degree),
                              lambda env: env.cache["state:" + state])  # fmt: skip
        inner = self.with_scope({**self.scope, state: state_symbol})
        body_value, body_fn = inner.compile(hoist(node.body, state))
        if body_value.shape != state_value.shape or not body_value.batched:
            raise SpecError(f"the body of recurrent(...) gives {body_value.describe()}, "
                            f"but {state} is {state_value.describe()}", node.body.span)  # fmt: skip

        def run(env: Env):
            batch = _batch_size(env)
            reference = env.tensors["reference"]
            env.cache["state:" + state] = reference.new_zeros((batch,) + state_value.shape)
            for _ in range(steps):
                env.cache["state:" + state] = body_fn(env)
            return env.cache.pop("state:" + state)

        degree = 0 if body_value.degree == 0 else INF
        return Value(state_value.shape, True, degree=degree), run


def _affine_sum(op: str, left: Value, left_fn: Closure, right: Value, right_fn: Closure) -> Closure | None:
    """The :class:`Affine` of ``W @ u + c`` or ``W @ u - c`` (c a number or one value per unit, not per sample)."""
    if op == "+" and right.affine is not None and left.affine is None:  # c + W @ u
        left, right, right_fn = right, left, left_fn
    if op not in "+-" or left.affine is None or right.batched or right.shape not in ((), left.shape):
        return None
    sign = 1 if op == "+" else -1
    return lambda env: left.affine(env).plus(right_fn(env), sign)


def _per_map(vector: Value, image: Value) -> bool:
    """A vector [C] beside an image [C, H, W]: one number per map (a per-map scale or bias)."""
    return len(vector.shape) == 1 and len(image.shape) == 3 and vector.shape[0] == image.shape[0]


def _map_axis(vector: torch.Tensor) -> torch.Tensor:
    """[C] (or (B, C)) → [C, 1, 1], to broadcast over the rows and columns of C maps."""
    return vector[..., None, None]


def _detached(value):
    """A tensor without its graph; a number (a scheduled constant) as it is."""
    return value.detach() if isinstance(value, torch.Tensor) else value


def _batch_size(env: Env) -> int:
    return env.tensors["batch_size"]


RUN_TIME_CONTEXTS = ("model", "weight")  # expressions evaluated during training, which may read a changing constant
FIXED_NUMBER = "a fixed number is needed here"
_FIXED_BECAUSE = {"init": "an initial value is computed once, before training"}


def changing_error(name: S.Name, changes: str, because: str) -> SpecError:
    """The error for a constant that changes during training, used where a fixed number is needed."""
    return SpecError(f"'{name.id}' changes during training ({changes}): {because}", name.span,
                     hint="only the encoder, lets and energy terms read its value as it changes; "
                          "declare another constant for this use")  # fmt: skip


def compile_once(compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
    """``__once__(e)``: e computed at most once per evaluation (see :func:`hoist`)."""
    value, fn = compiler.compile(node.args[0])
    key = f"once:{next(_once_ids)}"

    def cached(env: Env):
        if key not in env.cache:
            env.cache[key] = fn(env)
        return env.cache[key]

    return value, cached


_once_ids = itertools.count()

_TORCH_OPS = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.div,
    "**": torch.pow,
}
_SCALAR_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": lambda a, b: a**b,
}
