"""The functions a model expression may call by name: the elementwise ones (on tensors and on
compile-time numbers), the builtins, and one line of description each for the language reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from energydsl.ops import conv


def l2_normalize(v):
    """Each sample scaled to unit l2 norm (a zero sample stays zero)."""
    flat = v.flatten(1)
    norm = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (flat / norm).view_as(v)


# elementwise functions: on a tensor, and on a compile-time number
ELEMENTWISE: dict[str, Callable] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "softplus": torch.nn.functional.softplus,
}
SCALAR_MATH = {"relu": lambda a: max(a, 0.0), "tanh": math.tanh, "abs": abs, "exp": math.exp,
               "log": math.log, "sqrt": math.sqrt,
               "sigmoid": lambda a: 1 / (1 + math.exp(-a)), "softplus": lambda a: math.log1p(math.exp(a))}  # fmt: skip
FUNCTIONS = sorted(ELEMENTWISE) + ["flatten", "normalize", "shrink", "detach", "col_norm"] + list(conv.OPERATORS)
# One line per function, for the language reference (reference.py).
FUNCTION_DESCRIPTIONS = {
    "abs": "``abs(v)``: |v|, elementwise",
    "exp": "``exp(v)``: eᵛ, elementwise",
    "log": "``log(v)``: the natural logarithm, elementwise",
    "relu": "``relu(v)``: max(v, 0), elementwise",
    "sigmoid": "``sigmoid(v)``: 1 / (1 + e⁻ᵛ), elementwise",
    "softplus": "``softplus(v)``: log(1 + eᵛ), elementwise",
    "sqrt": "``sqrt(v)``: the square root, elementwise",
    "tanh": "``tanh(v)``: the hyperbolic tangent, elementwise",
    "flatten": "``flatten(v)``: each sample as one vector",
    "normalize": "``normalize(v)``: each sample scaled to unit l2 norm",
    "shrink": (
        "``shrink(value, threshold)``: soft-thresholding, sign(v)·max(|v| − θ, 0), with θ a scalar or shaped like v"
    ),
    "detach": (
        "``detach(v)``: v, through which no gradient flows (a frozen copy: the gated auto-encoder's auxiliary "
        "loss decodes with ``detach(D)``)"
    ),
    "col_norm": (
        "``col_norm(D)``: the l2 norm of each column of a matrix, a vector (an l1 penalty weighted by the "
        "decoder's column norms: ``lam * l1(z * col_norm(D))``)"
    ),
    **{name: text for name, (_, text) in conv.OPERATORS.items()},
}
