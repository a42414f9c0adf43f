"""``topk(v, k)``: the k largest entries of each sample."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from energydsl.expr.compiler import Closure, ExprCompiler, Value
from energydsl.lang import spec as S
from energydsl.mechanisms.arguments import affine_form, call_arguments, latent_degree, per_sample, unit_count
from energydsl.mechanisms.base import Mechanism
from energydsl.ops.sparse_codes import top_k_codes


def keep_largest(v: torch.Tensor, k: int) -> torch.Tensor:
    """Each sample's (row's) ``k`` largest entries of ``v`` (B, ...), the others 0; ties broken arbitrarily.

    ``torch.topk`` finds them without sorting the row, and scattering the kept values into zeros
    makes the gradient reach exactly the kept entries.
    """
    flat = v.flatten(1)
    if k >= flat.shape[1]:
        return v
    kept = flat.topk(k, dim=1, sorted=False)
    return torch.zeros_like(flat).scatter(1, kept.indices, kept.values).view_as(v)


class TopK(Mechanism):
    """``topk(v, k)``: keep the ``k`` largest entries of each sample of ``v`` (by value, not by
    magnitude), and set the others to 0.

    topk(v, k)ᵢ = vᵢ if vᵢ is among the k largest entries of its sample, else 0.  The gradient
    reaches the kept entries only (∂/∂vᵢ = 1 where kept, 0 elsewhere).  The usual non-negative
    form of a TopK sparse auto-encoder is ``encoder z = topk(relu(pre), k)``: the relu keeps the
    code ≥ 0 when fewer than k pre-activations are positive.

    ``k`` is a whole number from 1 to the number of entries of a sample, checked when the spec
    is compiled; a scheduled constant (a k that changes during training) is read at each
    evaluation, rounded and clipped into that range.  A sample that is an image [C, H, W] keeps
    its k largest entries over all its maps.
    """

    name = "topk"
    l0 = True
    signature = "topk(v, k)"

    @classmethod
    def compile(cls, compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
        slots = call_arguments(compiler, node, ("v", "k"), 2, cls.signature)
        value, fn = per_sample(compiler, node, slots[0], "topk(relu(E @ x + b), 32)")
        count = unit_count(compiler, node, slots[1], math.prod(value.shape))
        result = Value(value.shape, batched=True, degree=latent_degree(value))
        sparse = affine_form(compiler, slots[0])
        if sparse is not None:
            affine, relu = sparse
            return replace(result, sparse=True), lambda env: top_k_codes(affine(env), int(count(env)), relu)
        return result, lambda env: keep_largest(fn(env), int(count(env)))

