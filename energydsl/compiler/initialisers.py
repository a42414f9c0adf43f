"""The functions only an ``init`` or ``mask`` expression may use (registry :data:`INITIALISERS`: random
and constant values, samples of the input and their mean or median, matrices from structures), and the
tensor code behind them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from energydsl.compiler.program import Variable
from energydsl.data.streamed import in_memory
from energydsl.errors import SpecError
from energydsl.expr.compiler import Closure, Env, Value
from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.ops.geometric_median import geometric_median, weighted_mean
from energydsl.registry import Registry


def _default_init(shape: tuple[int, ...]) -> Closure:
    """Vectors start at zero; matrices at N(0, 1/fan_in); kernels at N(0, 1/(in·kh·kw)), the size of one filter."""
    if len(shape) == 1:
        return lambda env: env["reference"].new_zeros(shape)
    std = 1 / math.sqrt(shape[-1] if len(shape) == 2 else math.prod(shape[-3:]))
    return lambda env: torch.randn(shape, generator=env["generator"], dtype=env["reference"].dtype).to(
        env["reference"].device
    ) * std


@dataclass(frozen=True)
class InitTarget:
    """What an initialiser knows of the parameter it fills."""

    shape: tuple[int, ...]
    input_var: Variable | None  # the input, for samples(x)
    # the structure a matrix builder names: structure_argument(node, what, kinds)
    structure_argument: Callable | None = None
    normalize: str | None = None  # how the model normalises each sample of the input ("l2" or None)


class Initialiser:
    """A function only an ``init`` or ``mask`` expression may use; its docstring is its reference entry.

    A new one is a subclass and one ``INITIALISERS.register`` line (or an entry point in the
    ``energydsl.initialisers`` group).
    """

    name: ClassVar[str]
    as_name: ClassVar[bool] = False  # may also be written without parentheses (zeros, I)
    from_structure: ClassVar[bool] = False  # a matrix built from a structure (listed apart)

    @classmethod
    def compile(cls, compiler, node: S.Call, target: InitTarget) -> tuple[Value, Closure]:
        """The value (its shape) and the closure that builds it, for the call ``node``."""
        raise NotImplementedError


INITIALISERS: Registry[type[Initialiser]] = Registry("initialiser", "energydsl.initialisers")


def init_functions(target: InitTarget) -> dict:
    """The initialisers as the expression compiler's extra functions, for one parameter."""
    functions = {}
    for name, entry in INITIALISERS.items():

        def compile_call(compiler, node, entry=entry):
            return entry.compile(compiler, node, target)

        compile_call.as_name = entry.as_name
        functions[name] = compile_call
    return functions


def _scaled(compiler, node, shape, make) -> tuple[Value, Closure]:
    slots = compiler.arguments(node, 1)
    argument = compiler.constant(slots[0]) if slots[0] is not None else 1.0
    return Value(shape), lambda env: make(env) * argument


def _generated(sampler, shape):
    def build(env):
        cpu = sampler(shape, generator=env["generator"], dtype=env["reference"].dtype)
        return cpu.to(env["reference"].device)

    return build


class Normal(Initialiser):
    """``normal(std)``: independent N(0, std²) entries (std = 1 when omitted)."""

    name = "normal"

    @classmethod
    def compile(cls, compiler, node, target):
        return _scaled(compiler, node, target.shape, _generated(torch.randn, target.shape))


class Uniform(Initialiser):
    """``uniform(a)``: independent entries uniform in [−a, a] (a = 1 when omitted)."""

    name = "uniform"

    @classmethod
    def compile(cls, compiler, node, target):
        draw = _generated(torch.rand, target.shape)
        return _scaled(compiler, node, target.shape, lambda env: draw(env) * 2 - 1)


class Samples(Initialiser):
    """``samples(x)``: random training samples of the input, scaled to unit norm, as the columns
    (or rows) of the matrix; for a kernel [out, channels, kh, kw] of an image input, random
    kh×kw patches of the training images (the most contrasted of several draws), unit norm.  From
    samples read from disk (``shards``) it draws from an evenly spread sample of at most 32 MiB."""

    name = "samples"

    @classmethod
    def compile(cls, compiler, node, target):
        shape, input_var = target.shape, target.input_var
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


class _SampleStatistic(Initialiser):
    """One vector that sums up the input's training samples as the model sees them (normalised
    when the input is), shaped like one sample: for a decoder bias, ``param b_dec[d] init median(x)``."""

    @classmethod
    def statistic(cls, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The statistic of ``rows`` (n, d), a float64 vector (d,)."""
        raise NotImplementedError

    @classmethod
    def compile(cls, compiler, node, target):
        input_var = target.input_var
        slots = compiler.arguments(node, 1)
        compiler.required(node, slots, 1)
        if not isinstance(slots[0], S.Name) or slots[0].id != input_var.name:
            raise SpecError(f"{node.func}() sums up the training samples of the input '{input_var.name}'",
                            slots[0].span, hint=f"write {node.func}({input_var.name})")  # fmt: skip
        size = math.prod(input_var.shape)
        if target.shape not in (tuple(input_var.shape), (size,)):
            sample = ", ".join(map(str, input_var.shape))
            raise SpecError(f"{node.func}({input_var.name}) is shaped like one sample of '{input_var.name}', "
                            f"[{sample}]; this parameter is [{', '.join(map(str, target.shape))}]", node.span)  # fmt: skip

        def build(env: Env) -> torch.Tensor:
            rows = in_memory(env["train_x"]).flatten(1)  # samples on disk: a bounded sample of them
            if target.normalize == "l2":  # as the model's input holds them
                rows = rows.to(torch.float64)
                rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return cls.statistic(rows, env["generator"]).reshape(target.shape).to(env["reference"])

        return Value(target.shape), build


class Mean(_SampleStatistic):
    """``mean(x)``: the mean training sample of the input (after its normalisation, if any); of samples
    read from disk (``shards``), the mean of an evenly spread sample of at most 32 MiB."""

    name = "mean"

    @classmethod
    def statistic(cls, rows, generator):
        return weighted_mean(rows)


MEDIAN_SAMPLES = 20_000  # the most training samples the geometric median reads
MEDIAN_TOL = 1e-7  # Weiszfeld stops when a step is below this share of the mean distance to the median


class Median(_SampleStatistic):
    """``median(x)``: the geometric median of the input's training samples (after its
    normalisation, if any): the point m that minimises Σᵢ ‖xᵢ − m‖, robust to outlying samples.
    Weiszfeld's iterations from the mean, in float64, until a step moves m by less than 1e-7 of
    the samples' mean distance to it (at most 500); on at most 20,000 samples, drawn with the
    spec's seed when there are more (of samples read from disk, ``shards``: from an evenly spread sample
    of at most 32 MiB)."""

    name = "median"

    @classmethod
    def statistic(cls, rows, generator):
        if rows.shape[0] > MEDIAN_SAMPLES:
            chosen = torch.randperm(rows.shape[0], generator=generator)[:MEDIAN_SAMPLES].sort().values
            rows = rows[chosen.to(rows.device)]
        return geometric_median(rows, tol=MEDIAN_TOL)


class _Constant(Initialiser):
    """A fixed matrix of the parameter's shape, written as a name or a call without arguments."""

    as_name = True

    @classmethod
    def check(cls, node: S.Call, shape) -> None:
        if node.args or node.kwargs:
            raise SpecError(f"{node.func} takes no arguments: its shape is the parameter's", node.span)

    @classmethod
    def build(cls, env: Env, shape) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def compile(cls, compiler, node, target):
        shape = target.shape
        cls.check(node, shape)
        return Value(shape), lambda env: cls.build(env, shape)


class Zeros(_Constant):
    """Every entry 0."""

    name = "zeros"

    @classmethod
    def build(cls, env, shape):
        return env["reference"].new_zeros(shape)


class Ones(_Constant):
    """Every entry 1."""

    name = "ones"

    @classmethod
    def build(cls, env, shape):
        return env["reference"].new_ones(shape)


class Identity(_Constant):
    """The identity matrix (square parameters only)."""

    name = "I"  # also registered as eye

    @classmethod
    def check(cls, node, shape):
        super().check(node, shape)
        if not (len(shape) == 2 and shape[0] == shape[1]):
            raise SpecError(f"{node.func} is the identity: the parameter must be square", node.span)

    @classmethod
    def build(cls, env, shape):
        return torch.eye(shape[0], dtype=env["reference"].dtype, device=env["reference"].device)


def _matrix(array) -> tuple[Value, Closure]:
    tensor = torch.from_numpy(array)
    return Value(tuple(tensor.shape)), lambda env: tensor.to(env["reference"])


class TreeInhibition(Initialiser):
    """``tree_inhibition(tree)``: 0 between a unit and its ancestors, its descendants and itself,
    1 between units on different branches."""

    name = "tree_inhibition"
    from_structure = True

    @classmethod
    def compile(cls, compiler, node, target):
        slots = compiler.arguments(node, 1, ("tree",))
        compiler.required(node, slots, 1)
        return _matrix(st.tree_inhibition(target.structure_argument(slots[0], node.func, st.TREE_KINDS)))


class GridInhibition(Initialiser):
    """``grid_inhibition(map, radius = r)``: 0 within r steps on the map, 1 beyond;
    ``grid_inhibition(map, sigma = s)``: 1 − exp(−d²/2s²) at distance d.  0 on the diagonal."""

    name = "grid_inhibition"
    from_structure = True

    @classmethod
    def compile(cls, compiler, node, target):
        slots = compiler.arguments(node, 3, ("map", "radius", "sigma"))
        compiler.required(node, slots, 1)
        slot, radius, sigma = slots
        structure = target.structure_argument(slot, node.func)
        if (radius is None) == (sigma is None):
            raise SpecError("grid_inhibition() takes radius = r (0 within r steps, 1 beyond) or sigma = s "
                            "(smooth)", node.span)  # fmt: skip
        radius = compiler.constant(radius) if radius is not None else None
        sigma = compiler.positive(sigma, "sigma") if sigma is not None else None
        return _matrix(st.grid_inhibition(structure, radius, sigma))


INITIALISERS.register(Normal)
INITIALISERS.register(Uniform)
INITIALISERS.register(Samples)
INITIALISERS.register(Mean)
INITIALISERS.register(Median)
INITIALISERS.register(Zeros)
INITIALISERS.register(Ones)
INITIALISERS.register(Identity)
INITIALISERS.register(Identity, "eye")
INITIALISERS.register(TreeInhibition)
INITIALISERS.register(GridInhibition)


def _draw_samples(env: Env, shape, dim: int) -> torch.Tensor:
    """Columns (or rows) of random training samples, each scaled to unit norm.  A blank
    sample (a flat patch is 0 once centred) has no direction: it is drawn again."""
    data = in_memory(env["train_x"]).flatten(1)  # samples on disk: a bounded sample of them
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
    data = in_memory(env["train_x"]).reshape((-1,) + tuple(image))
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
