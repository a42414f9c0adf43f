"""The argument checks the sparsity mechanisms share: a per-sample value, a count of units, a threshold,
a bandwidth.  Each failure is a :class:`SpecError` at the argument, with a hint."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from energydsl.errors import SpecError
from energydsl.expr.compiler import INF, Closure, Env, ExprCompiler, Value
from energydsl.lang import spec as S

# The default width of the rectangle kernel of the straight-through estimates (jumprelu, step).
# Why this value: see the JumpReLU mechanism's reference entry.
DEFAULT_BANDWIDTH = 0.05


def kind(value: Value) -> str:
    """What a value is, as a message names it."""
    if value.is_scalar:
        return "a scalar"
    return f"a per-sample {value.describe()} value" if value.batched else f"a {value.describe()} parameter"


def latent_degree(*values: Value) -> float:
    """The degree in the latent of a mechanism's result: none of them is a polynomial, so INF unless
    no argument reads the latent."""
    return 0 if all(v.degree == 0 for v in values) else INF


def call_arguments(compiler: ExprCompiler, node: S.Call, names: tuple[str, ...], required: int,
                   signature: str) -> list[S.Expr | None]:
    """The call's arguments by position (None where left out), the first ``required`` of them present;
    a mistake in how it is called is hinted with the mechanism's ``signature``."""
    try:
        slots = compiler.arguments(node, len(names), names)
    except SpecError as error:
        raise SpecError(error.message, error.span, hint=error.hint or f"it is called as {signature}") from None
    if any(slot is None for slot in slots[:required]):
        raise SpecError(f"{node.func}() needs {required} argument(s)", node.span, hint=f"it is called as {signature}")
    return slots


def per_sample(compiler: ExprCompiler, node: S.Call, slot: S.Expr, example: str) -> tuple[Value, Closure]:
    """The value a mechanism acts on: something that varies with the sample (``relu(E @ x + b)``)."""
    value, fn = compiler.compile(slot)
    if not value.batched:
        raise SpecError(f"{node.func}() acts on each sample's values: its first argument must vary with the "
                        f"sample, this is {kind(value)}", slot.span, hint=f"for example {example}")  # fmt: skip
    return value, fn


def unit_count(compiler: ExprCompiler, node: S.Call, slot: S.Expr, width: int,
               whole: bool = True) -> Callable[[Env], float]:  # fmt: skip
    """``k``: how many of a sample's ``width`` entries to keep, at least 1 and at most ``width``.

    A compile-time constant is checked here.  A scalar that is not one (a constant scheduled during
    training) is read at each evaluation; it is then rounded (``whole``) and clipped into
    [1, width], since an evaluation half-way through a schedule has no one to report to.
    """
    value, fn = compiler.compile(slot)
    what = f"k of {node.func}()"
    if value.batched or not value.is_scalar:
        raise SpecError(f"{what} must be a number, this is {kind(value)}", slot.span,
                        hint=f"a count of units kept per sample, e.g. {node.func}(relu(pre), 32)")  # fmt: skip
    if value.const is None:  # scheduled: known only while running
        if whole:
            return lambda env: float(min(max(round(float(fn(env))), 1), width))
        return lambda env: min(max(float(fn(env)), 1.0), float(width))
    k = value.const
    if math.isnan(k) or math.isinf(k):
        raise SpecError(f"{what} evaluates to {k}", slot.span, hint="a count of units kept per sample")
    if whole and k != int(k):
        raise SpecError(f"{what} must be a whole number, got {k:g}", slot.span,
                        hint="the number of entries kept per sample, e.g. 32")  # fmt: skip
    if k < 1:
        raise SpecError(f"{what} must be at least 1, got {k:g}", slot.span,
                        hint="keeping no entry at all would make every code zero")  # fmt: skip
    if k > width:
        raise SpecError(f"{what} is {k:g}, but each sample has only {width} entries", slot.span,
                        hint=f"k must be at most {width}; lower k or widen the value")  # fmt: skip
    return lambda env: k


def threshold(compiler: ExprCompiler, node: S.Call, slot: S.Expr, value: Value) -> tuple[Value, Closure]:
    """``theta``: a scalar, or one threshold per entry of a sample (a parameter shaped like one sample
    of ``value``); the same for every sample.  Its closure returns a tensor or a float."""
    theta, fn = compiler.compile(slot)
    if theta.batched:
        raise SpecError(f"the threshold of {node.func}() must be the same for every sample, this is {kind(theta)}",
                        slot.span, hint=f"declare a parameter, e.g. 'param theta{value.describe()} init 0.01'")  # fmt: skip
    if not (theta.is_scalar or theta.shape == value.shape):
        raise SpecError(f"the threshold of {node.func}() must be a scalar or {value.describe()} (one per entry of "
                        f"a sample), this is {kind(theta)}", slot.span,
                        hint=f"declare it as 'param theta{value.describe()}'")  # fmt: skip
    return theta, fn


def bandwidth(compiler: ExprCompiler, node: S.Call, slot: S.Expr | None) -> float:
    """``bandwidth``: the width ε of the rectangle kernel, a positive compile-time number."""
    if slot is None:
        return DEFAULT_BANDWIDTH
    value, _ = compiler.compile(slot)
    if value.const is None or not 0 < value.const < INF:  # NaN fails too
        shown = f"{value.const:g}" if value.const is not None else kind(value)
        raise SpecError(f"the bandwidth of {node.func}() must be a positive number, got {shown}", slot.span,
                        hint=f"the width of the window around the threshold, in units of the value; "
                             f"the default is {DEFAULT_BANDWIDTH:g}")  # fmt: skip
    return value.const


def as_tensor(number_or_tensor, like: torch.Tensor) -> torch.Tensor:
    """A closure's result (a float for numbers) as a tensor beside ``like``."""
    if isinstance(number_or_tensor, torch.Tensor):
        return number_or_tensor
    return torch.as_tensor(float(number_or_tensor), dtype=like.dtype, device=like.device)


def affine_form(compiler: ExprCompiler, node: S.Expr) -> tuple[Closure, bool] | None:
    """For ``W @ u + c`` or ``relu(W @ u + c)`` (through lets), a per-sample vector: the closure of its
    unevaluated :class:`~energydsl.ops.sparse_codes.Affine` and whether a relu is applied.  A mechanism
    that keeps a few units per sample computes those codes at the cost of the kept units (see
    :mod:`energydsl.ops.sparse_codes`); for any other argument it computes densely."""
    relu = isinstance(node, S.Call) and node.func == "relu" and len(node.args) == 1 and not node.kwargs
    value, _ = compiler.compile(node.args[0] if relu else node)
    if value.affine is None or not value.batched or len(value.shape) != 1:
        return None
    return value.affine, relu
