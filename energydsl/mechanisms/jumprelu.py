"""``jumprelu(v, theta, bandwidth)``: v·1[v > θ] with a learned threshold, and the straight-through
estimates of the threshold's gradient that it and ``step`` share (Rajamanoharan et al. 2024).

The jump at θ has no useful derivative in θ (0 almost everywhere).  The estimate replaces the
Heaviside step H(v − θ) by its average over a window of width ε around the jump — the rectangle
kernel rect(u) = 1[|u| < ½] — whose derivative is −(1/ε)·rect((v − θ)/ε): each sample whose value
falls within ε/2 of the threshold pushes on it.  Two functions of this module, importable by
other parts of the language (the ``l0`` energy term):

- :func:`step_function` (v, θ, ε) = 1[v > θ]; ∂/∂θ ≈ −(1/ε)·rect((v − θ)/ε); no gradient to v;
- :func:`jumprelu_function` (v, θ, ε) = v·1[v > θ]; ∂/∂v = 1[v > θ]; ∂/∂θ ≈ −(θ/ε)·rect((v − θ)/ε).

A threshold the same for every sample receives the sum over the batch.  Why the default bandwidth
is 0.05: see :class:`JumpReLU`.
"""

from __future__ import annotations

import torch

from energydsl.expr.compiler import Closure, ExprCompiler, Value
from energydsl.lang import spec as S
from energydsl.mechanisms.arguments import as_tensor, bandwidth, call_arguments, latent_degree, per_sample, threshold
from energydsl.mechanisms.base import Mechanism


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel rect(u) = 1 where |u| < ½, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


def _summed_to(gradient: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A per-sample gradient summed over the batch (and over the entries, for a scalar threshold)."""
    return gradient.sum_to_size(shape)


class _Step(torch.autograd.Function):
    """1[v > θ]; the rectangle straight-through estimate of its gradient to θ; none to v."""

    @staticmethod
    def forward(ctx, v, theta, eps):
        ctx.save_for_backward(v, theta)
        ctx.eps = eps
        return (v > theta).to(v.dtype)

    @staticmethod
    def backward(ctx, g):
        v, theta = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        eps = ctx.eps
        pseudo = -(1 / eps) * rectangle((v - theta) / eps) * g
        return None, _summed_to(pseudo, theta.shape), None


class _JumpReLU(torch.autograd.Function):
    """v·1[v > θ]; the exact gradient to v off the jump; the rectangle estimate to θ."""

    @staticmethod
    def forward(ctx, v, theta, eps):
        ctx.save_for_backward(v, theta)
        ctx.eps = eps
        return v * (v > theta)

    @staticmethod
    def backward(ctx, g):
        v, theta = ctx.saved_tensors
        eps = ctx.eps
        to_v = g * (v > theta) if ctx.needs_input_grad[0] else None
        to_theta = None
        if ctx.needs_input_grad[1]:
            pseudo = -(theta / eps) * rectangle((v - theta) / eps) * g
            to_theta = _summed_to(pseudo, theta.shape)
        return to_v, to_theta, None


def step_function(v: torch.Tensor, theta, bandwidth: float) -> torch.Tensor:
    """1[v > θ] for v (B, ...) and θ a scalar (number or tensor) or shaped like one sample; gradient
    to θ only: −(1/ε)·rect((v − θ)/ε)·g, summed over the batch (ε = ``bandwidth``)."""
    return _Step.apply(v, as_tensor(theta, v), float(bandwidth))


def jumprelu_function(v: torch.Tensor, theta, bandwidth: float) -> torch.Tensor:
    """v·1[v > θ] for v (B, ...) and θ a scalar or shaped like one sample; gradient 1[v > θ]·g to v
    and −(θ/ε)·rect((v − θ)/ε)·g, summed over the batch, to θ (ε = ``bandwidth``)."""
    return _JumpReLU.apply(v, as_tensor(theta, v), float(bandwidth))


class JumpReLU(Mechanism):
    """``jumprelu(v, theta, bandwidth = 0.05)``: vᵢ where vᵢ > θᵢ, else 0 — a ReLU whose jump sits at
    a learned threshold instead of at 0 (Rajamanoharan et al. 2024).

    ``theta`` is a scalar or one threshold per entry of a sample (``param theta[units] init 0.01``);
    write it as a plain parameter, so that Adam moves it by about its learning rate per step (a
    threshold stored as a logarithm, ``exp(log_theta)``, moves by a factor instead, and a small one
    barely moves).  Gradients: 1[v > θ]·g to v; to θ the straight-through estimate
    −(θ/ε)·rect((v − θ)/ε)·g summed over the batch, with rect(u) = 1[|u| < ½] and ε = ``bandwidth``
    (a positive number, in the units of v).  What pushes θ up is a sparsity term on
    ``step(v, theta)`` (the ``l0`` term).

    The default bandwidth, 0.05: the threshold's gradient is estimated from the samples whose value
    falls within ε/2 of it, about B·p(θ)·ε of a batch of B where v has density p near θ.  The paper's
    ε = 0.001 goes with language-model activations rescaled to a fixed norm and batches of
    thousands; on values of order 1 in batches of hundreds it leaves the window empty on most steps,
    and θ hardly moves.  0.05 (SAELens's default too) puts tens of samples in it, at a bias of
    order ε.  Scale ε with the spread of the pre-activations.
    """

    name = "jumprelu"
    l0 = True
    signature = "jumprelu(v, theta, bandwidth = 0.05)"

    @classmethod
    def compile(cls, compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
        slots = call_arguments(compiler, node, ("v", "theta", "bandwidth"), 2, cls.signature)
        value, fn = per_sample(compiler, node, slots[0], "jumprelu(E @ x + b, theta)")
        theta, theta_fn = threshold(compiler, node, slots[1], value)
        eps = bandwidth(compiler, node, slots[2])
        result = Value(value.shape, batched=True, degree=latent_degree(value, theta))
        return result, lambda env: jumprelu_function(fn(env), theta_fn(env), eps)
