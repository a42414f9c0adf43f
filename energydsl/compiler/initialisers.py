"""The functions only an ``init`` expression may use, and the tensor code behind them."""

from __future__ import annotations

import math

import torch

from energydsl.lang import spec as S
from energydsl.errors import SpecError
from energydsl.expr.compiler import Closure, Env, Value
from energydsl.compiler.program import Variable


def _default_init(shape: tuple[int, ...]) -> Closure:
    """Vectors start at zero; matrices at N(0, 1/fan_in); kernels at N(0, 1/(in·kh·kw)), the size of one filter."""
    if len(shape) == 1:
        return lambda env: env["reference"].new_zeros(shape)
    std = 1 / math.sqrt(shape[-1] if len(shape) == 2 else math.prod(shape[-3:]))
    return lambda env: torch.randn(shape, generator=env["generator"], dtype=env["reference"].dtype).to(
        env["reference"].device
    ) * std


def _initialisers(shape: tuple[int, ...], input_var: Variable) -> dict:
    """The functions and names that only an ``init`` expression may use."""

    def target(compiler, node, make):
        slots = compiler.arguments(node, 1)
        argument = compiler.constant(slots[0]) if slots[0] is not None else 1.0
        return Value(shape), lambda env: make(env) * argument

    def generated(sampler):
        def build(env):
            cpu = sampler(shape, generator=env["generator"], dtype=env["reference"].dtype)
            return cpu.to(env["reference"].device)

        return build

    def normal(compiler, node):
        """``normal(std)``: independent N(0, std²) entries (std = 1 when omitted)."""
        return target(compiler, node, generated(torch.randn))

    def uniform(compiler, node):
        """``uniform(a)``: independent entries uniform in [−a, a] (a = 1 when omitted)."""
        return target(compiler, node, lambda env: generated(torch.rand)(env) * 2 - 1)

    def samples(compiler, node):
        """``samples(x)``: random training samples of the input, scaled to unit norm, as the columns
        (or rows) of the matrix; for a kernel [out, channels, kh, kw] of an image input, random
        kh×kw patches of the training images (the most contrasted of several draws), unit norm."""
        slots = compiler.arguments(node, 1)
        compiler.required(node, slots, 1)
        if not isinstance(slots[0], S.Name) or slots[0].id != input_var.name:
            raise SpecError(f"samples() draws from the input '{input_var.name}'", slots[0].span)
        dim = math.prod(input_var.shape)
        image = input_var.shape
        if len(shape) == 4 and len(image) == 3 and shape[1] == image[0] and shape[2] <= image[1] and shape[3] <= image[2]:
            return Value(shape), lambda env: _draw_patches(env, shape, image)
        if len(shape) != 2 or dim not in shape:
            raise SpecError(f"samples({input_var.name}) fills a matrix with {dim} rows or columns; "
                            f"this one is {list(shape)}", node.span)  # fmt: skip
        return Value(shape), lambda env: _draw_samples(env, shape, dim)

    functions = {"normal": normal, "uniform": uniform, "samples": samples}
    square = len(shape) == 2 and shape[0] == shape[1]

    def identity(env):
        """The identity matrix (square parameters only)."""
        return torch.eye(shape[0], dtype=env["reference"].dtype, device=env["reference"].device)

    def zeros(env):
        """Every entry 0."""
        return env["reference"].new_zeros(shape)

    def ones(env):
        """Every entry 1."""
        return env["reference"].new_ones(shape)

    for name, builder in {"zeros": zeros, "ones": ones}.items():
        functions[name] = _as_name_or_call(name, Value(shape), builder)
    for name in ("I", "eye"):
        functions[name] = _as_name_or_call(name, Value(shape), identity, square=square)
    return functions


def _as_name_or_call(name: str, value: Value, builder: Closure, square: bool = True):
    def compile_call(compiler, node):
        if node.args or node.kwargs:
            raise SpecError(f"{name} takes no arguments: its shape is the parameter's", node.span)
        if not square:
            raise SpecError(f"{name} is the identity: the parameter must be square", node.span)
        return value, builder

    compile_call.as_name = True
    compile_call.__doc__ = builder.__doc__
    return compile_call


def _draw_samples(env: Env, shape, dim: int) -> torch.Tensor:
    """Columns (or rows) of random training samples, each scaled to unit norm.  A blank
    sample (a flat patch is 0 once centred) has no direction: it is drawn again."""
    data = env["train_x"].flatten(1)
    count = shape[1] if shape[0] == dim else shape[0]
    index = torch.randint(0, data.shape[0], (count,), generator=env["generator"])
    norms = data.norm(dim=1)
    floor = 1e-6 * norms.max()
    blank = norms[index] <= floor
    for _ in range(100):  # redraws only where needed, so data without blank samples draw as before
        if not bool(blank.any()):
            break
        index[blank] = torch.randint(0, data.shape[0], (int(blank.sum()),), generator=env["generator"])
        blank = norms[index] <= floor
    chosen = data[index]
    chosen = chosen / chosen.norm(dim=1, keepdim=True).clamp_min(1e-12)
    chosen = chosen.to(env["reference"])
    return chosen.T.contiguous() if shape[0] == dim else chosen


def _draw_patches(env: Env, shape, image: tuple[int, ...]) -> torch.Tensor:
    """Filters [out, channels, kh, kw] cut from random training images at random places, each
    scaled to unit norm; of four candidates per filter the largest-norm ones are kept, so that
    few filters start from a blank corner."""
    out, _, kh, kw = shape
    data = env["train_x"].reshape((-1,) + tuple(image))
    generator = env["generator"]
    count = 4 * out
    index = torch.randint(0, data.shape[0], (count,), generator=generator)
    rows = torch.randint(0, image[1] - kh + 1, (count,), generator=generator)
    cols = torch.randint(0, image[2] - kw + 1, (count,), generator=generator)
    patches = torch.stack([data[i, :, r : r + kh, c : c + kw] for i, r, c in zip(index, rows, cols)])
    norms = patches.flatten(1).norm(dim=1)
    chosen = patches[norms.argsort(descending=True)[:out]]
    chosen = chosen / chosen.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    return chosen.to(env["reference"])
