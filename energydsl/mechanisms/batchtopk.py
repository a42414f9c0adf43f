"""``batchtopk(v, k)``: the k·B largest entries of a training batch; a learned threshold outside training."""

from __future__ import annotations

import math

import torch

from energydsl.errors import SpecError
from energydsl.expr.compiler import Across, Closure, Env, ExprCompiler, Value
from energydsl.lang import spec as S
from energydsl.mechanisms.arguments import affine_form, call_arguments, kind, latent_degree, per_sample, unit_count
from energydsl.mechanisms.base import Mechanism
from energydsl.ops.sparse_codes import Affine, SparseCodes, batch_top_k_codes, codes_above

DEFAULT_RATE = 0.01  # the weight of each new batch in the running threshold


def keep_largest_in_batch(v: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest entries of the whole batch ``v`` (B, ...), the others 0; and the kept values."""
    flat = v.flatten()
    if count >= flat.numel():
        return v, flat
    kept = flat.topk(count, sorted=False)
    return torch.zeros_like(flat).scatter(0, kept.indices, kept.values).view_as(v), kept.values


def keep_above(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """A JumpReLU with one shared threshold: vᵢ where vᵢ > threshold, else 0 (gradient to the kept entries)."""
    return torch.where(v > threshold, v, torch.zeros((), dtype=v.dtype, device=v.device))


@torch.no_grad()
def follow(threshold: torch.Tensor, kept: torch.Tensor, rate: float) -> None:
    """Move the running ``threshold`` (in place) toward the smallest positive kept value of this batch.

    The first batch sets it outright (a threshold of exactly 0 has never been trained, since a kept
    positive value is never 0), so that it does not climb from 0 over the first ~1/rate steps.  A
    batch that kept nothing positive says nothing about the threshold and leaves it.  All on the
    device, without reading a number back (no synchronisation in the training step).
    """
    smallest = torch.where(kept > 0, kept, torch.inf).min().to(threshold.dtype)
    moved = torch.where(threshold == 0, smallest, torch.lerp(threshold, smallest, rate))
    threshold.copy_(torch.where(torch.isfinite(smallest), moved, threshold))


@torch.no_grad()
def largest_across(v: torch.Tensor, count: int, across: Across, relu: bool = False) -> torch.Tensor:
    """The ``count`` largest entries of the batch that several workers share, this worker's part of it
    ``v`` (of relu(v) with ``relu``), in decreasing order: the same on every worker, so that each keeps
    its entries at least the last of them, and together they keep what one process would."""
    flat = (torch.relu(v) if relu else v).flatten()
    mine = flat.topk(min(count, flat.numel())).values
    padded = torch.cat([mine, mine.new_full((count - mine.numel(),), -torch.inf)])
    return across.gather(padded).topk(count).values


class BatchTopK(Mechanism):
    """``batchtopk(v, k, rate = 0.01)``: while training, keep the k·B largest entries of a batch of B
    samples of ``v`` (over the whole batch: a sample may keep more or fewer than k); outside training,
    keep every entry above a learned threshold.

    Training (the forward pass of a training step): the round(k·B) largest entries of the batch
    are kept, the others set to 0, and the gradient reaches the kept entries.  Each training
    step then moves a running threshold θ (a state slot, ``batchtopk_threshold``, saved with the
    model) toward the smallest positive kept value m of the batch: θ ← (1 − rate)·θ + rate·m
    (the first step sets θ = m).  With several workers (``--nproc``) B is the global batch: the
    workers agree on the round(k·B)-th largest entry (one all-gather of k·B values a step), so that
    they keep what one process would.

    Everywhere else (``model.encode``, inference, evaluation, a loaded run): a JumpReLU with the
    one shared threshold, batchtopk(v)ᵢ = vᵢ·1[vᵢ > θ], so that a sample's code does not depend on
    the other samples of its batch.  Once θ has settled, the two agree closely and keep about k
    entries per sample on average.

    Before any training step θ = 0: outside training the mechanism is then ``relu``-like, keeping
    every positive entry, and a code is dense, not sparse.  Train first (or copy a threshold into
    ``model.state["batchtopk_threshold"]``).

    ``k`` is the average number of entries kept per sample, a number (not necessarily whole) from
    1 to the number of entries of a sample; a scheduled constant is read at each training step.
    ``rate`` is a number in (0, 1].  The usual form is ``batchtopk(relu(pre), k)``: with a non-negative
    value, the kept entries are the positive ones.
    """

    name = "batchtopk"
    l0 = True
    signature = "batchtopk(v, k, rate = 0.01)"

    @classmethod
    def compile(cls, compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
        slots = call_arguments(compiler, node, ("v", "k", "rate"), 2, cls.signature)
        value, fn = per_sample(compiler, node, slots[0], "batchtopk(relu(E @ x + b), 32)")
        count = unit_count(compiler, node, slots[1], math.prod(value.shape), whole=False)
        rate = _rate(compiler, node, slots[2])
        slot = compiler.declare_state("batchtopk_threshold", (), 0.0,
                                      f"the running threshold of the batchtopk(...) of line {node.span.line}, "
                                      "applied outside training")  # fmt: skip

        sparse = affine_form(compiler, slots[0])

        def batchtopk(env: Env) -> torch.Tensor:
            threshold = env["state"][slot]
            if sparse is not None:  # only the kept entries' values are computed (see ops.sparse_codes)
                return _sparse_codes(affine=sparse[0](env), relu=sparse[1], threshold=threshold, env=env,
                                     count=count, rate=rate)  # fmt: skip
            return _dense_codes(fn(env), threshold, env, count, rate)

        return Value(value.shape, batched=True, degree=latent_degree(value), sparse=sparse is not None), batchtopk


def _kept(env: Env, count, batch: int) -> int:
    """round(k·B) for the batch of this step: the global one when several workers share it."""
    across = env.get("across")
    return max(1, round(count(env) * (across.batch if across is not None else batch)))


def _sparse_codes(affine: Affine, relu: bool, threshold: torch.Tensor, env: Env, count, rate: float) -> SparseCodes:
    if not env["training"]:
        return codes_above(affine, threshold, relu)
    kept, across = _kept(env, count, affine.shape[0]), env.get("across")
    if across is None:
        codes = batch_top_k_codes(affine, kept, relu)
        follow(threshold, codes.values, rate)
        return codes
    largest = largest_across(affine.detached_dense(), kept, across, relu)
    follow(threshold, largest, rate)
    return codes_above(affine, largest[-1], relu, inclusive=True)


def _dense_codes(v: torch.Tensor, threshold: torch.Tensor, env: Env, count, rate: float) -> torch.Tensor:
    if not env["training"]:
        return keep_above(v, threshold)
    kept, across = _kept(env, count, v.shape[0]), env.get("across")
    if across is None:
        code, values = keep_largest_in_batch(v, kept)
        follow(threshold, values, rate)
        return code
    largest = largest_across(v.detach(), kept, across)
    follow(threshold, largest, rate)
    return torch.where(v >= largest[-1], v, torch.zeros((), dtype=v.dtype, device=v.device))


def _rate(compiler: ExprCompiler, node: S.Call, slot: S.Expr | None) -> float:
    if slot is None:
        return DEFAULT_RATE
    value, _ = compiler.compile(slot)
    if value.const is None or not 0 < value.const <= 1:
        shown = f"{value.const:g}" if value.const is not None else kind(value)
        raise SpecError(f"the rate of batchtopk() must be a number in (0, 1], got {shown}", slot.span,
                        hint=f"the weight of each training batch in the running threshold; the default is {DEFAULT_RATE:g}")  # fmt: skip
    return value.const
