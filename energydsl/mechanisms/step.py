"""``step(v)`` and ``step(v, theta, bandwidth)``: the Heaviside step, a gate and the count behind L0."""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.expr.compiler import Closure, ExprCompiler, Value
from energydsl.lang import spec as S
from energydsl.mechanisms.arguments import bandwidth, call_arguments, latent_degree, per_sample, threshold
from energydsl.mechanisms.base import Mechanism
from energydsl.mechanisms.jumprelu import step_function


def gate(v: torch.Tensor) -> torch.Tensor:
    """1[v > 0], with no gradient at all (a comparison is not differentiable)."""
    return (v > 0).to(v.dtype)


class Step(Mechanism):
    """``step(v)`` = 1[v > 0] and ``step(v, theta, bandwidth = 0.05)`` = 1[v > θ], elementwise.

    ``step(v)`` passes no gradient: it is the gate of a gated sparse auto-encoder,
    ``encoder z = step(W_gate @ x + b_gate) * relu(W_mag @ x + b_mag)``, whose gate path learns
    through an auxiliary loss instead.  ``step(v, theta)`` passes no gradient to v either, and
    to the threshold θ (a scalar or one per entry of a sample, the same for every sample) the
    straight-through estimate −(1/ε)·rect((v − θ)/ε)·g, summed over the batch, with
    rect(u) = 1[|u| < ½] and ε = ``bandwidth`` (see ``jumprelu``): summed over the units, it is
    the L0 norm of ``jumprelu(v, theta)`` with a gradient that moves the thresholds.
    """

    name = "step"
    l0 = True
    signature = "step(v, theta, bandwidth = 0.05)"

    @classmethod
    def compile(cls, compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
        slots = call_arguments(compiler, node, ("v", "theta", "bandwidth"), 1, cls.signature)
        value, fn = per_sample(compiler, node, slots[0], "step(W_gate @ x + b_gate)")
        if slots[1] is None:
            if slots[2] is not None:
                raise SpecError("step(v) has no threshold to estimate a gradient for: a bandwidth needs theta",
                                slots[2].span, hint="write step(v, theta, bandwidth = 0.05), or step(v) alone")  # fmt: skip
            return Value(value.shape, batched=True, degree=latent_degree(value)), lambda env: gate(fn(env))
        theta, theta_fn = threshold(compiler, node, slots[1], value)
        eps = bandwidth(compiler, node, slots[2])
        result = Value(value.shape, batched=True, degree=latent_degree(value, theta))
        return result, lambda env: step_function(fn(env), theta_fn(env), eps)
