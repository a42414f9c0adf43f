"""Spec → :class:`Program`: every semantic check, and the closures that compute.

The program holds no tensors: it is what ``energydsl check`` validates and what
:class:`~energydsl.model.EnergyModel` instantiates.  Checks run in declaration
order, so a name is known from its declaration on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import spec as S
from . import structures as st
from .constraints import (
    DESCRIPTIONS,
    KERNEL_KINDS,
    MATRIX_KINDS,
    NORM_KINDS,
    SQUARE_KINDS,
    Constraint,
    sort_constraints,
)
from .data import DataError, describe_source
from .dictionary import DEFAULT_FORGET
from .errors import WHOLE_SPEC, Span, SpecError, did_you_mean, one_of
from .expr import FUNCTIONS, Closure, Env, ExprCompiler, Symbol, Value
from .pools import FAMILY_BUILDERS, PoolFamily, blocks, family_from_list, maps, pool_from_ranges, unknown_builder
from .terms import TERMS, Term, inhibition

INFER_METHODS = ("fista", "ista", "lars", "encoder")
INFER_OPTIONS = ("steps", "tol")
# One line per inference method and optimizer, for the language reference (reference.py).
INFER_DESCRIPTIONS = {
    "fista": (
        "Proximal gradient with momentum and adaptive restart, through the exact prox of the nonsmooth terms; "
        "stops when every sample's step is at most tol times its code's norm"
    ),
    "ista": "Proximal gradient without momentum: every step lowers the energy, as inhibition terms need",
    "lars": (
        "The exact lasso solution by homotopy (LARS-lasso), one Cholesky update per atom that joins or "
        "leaves the active set; for l1 terms (and z >= 0) beside a reconstruction, no options"
    ),
    "encoder": "The spec's encoder, one forward pass; 'encoder then fista(...)' starts FISTA from its prediction",
}
OPTIMIZER_DESCRIPTIONS = {
    "sgd": "Stochastic gradient descent (torch.optim.SGD), with optional momentum",
    "adam": "Adam (torch.optim.Adam) with betas (beta1, beta2)",
    "bcd": ("Online dictionary learning (Mairal et al. 2010): block-coordinate descent on the "
            "reconstruction of every sample seen, one dictionary column at a time; old statistics weigh "
            f"(1 − 1/t)^forget at step t (default forget = {DEFAULT_FORGET:g}). Every learned parameter must be the "
            "dictionary D of one sqerr(x, D @ z) term, with col_norm, nonneg or mask constraints"),
}
STRUCTURES = {
    "grid": ("rows", "cols"),
    "torus": ("rows", "cols"),
    "chain": ("length",),
    "tree": ("branching", "depth", "edges", "file", "root"),
}
OPTIMIZERS = {
    "sgd": ("lr", "momentum", "weight_decay", "nesterov"),
    "adam": ("lr", "beta1", "beta2", "weight_decay"),
    "bcd": ("forget",),  # online dictionary learning (energydsl.dictionary): no learning rate
}
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "bcd": 1.0}
# the constraints that optimizer bcd can apply to one column at a time
BCD_CONSTRAINTS = ("col_norm", "nonneg", "mask")
LEARN_MODES = ("descent", "ascent", "fixed")
# learning-rate schedules over a phase: the optimizer's rates times a factor of the epoch
SCHEDULES = {
    "constant": "the optimizer's learning rates throughout the phase",
    "cosine": "rates times ½(1 + cos(π·k/N)) in the phase's epoch k of N: from the full rate down towards 0",
}
NORMALIZATIONS = ("l2",)
DEFAULT_STEPS, DEFAULT_TOL = 200, 1e-4


# ---------------------------------------------------------------- the program


@dataclass(frozen=True)
class DataCall:
    name: str
    args: tuple = ()
    kwargs: tuple[tuple[str, object], ...] = ()

    def text(self) -> str:
        items = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(items)})" if items else self.name


@dataclass(frozen=True)
class Variable:
    name: str
    shape: tuple[int, ...]  # a latent is always a vector here: its values, stored flat
    span: Span
    layout: tuple[int, ...] | None = None  # an image latent's [maps, rows, cols] (channel-major storage)


@dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]
    init: Closure  # Env (with "init:target" etc.) -> tensor or float
    learn: str  # descent | ascent | fixed
    lr: float | None  # explicit learning rate, else base lr * lr_scale
    lr_scale: float
    constraints: tuple[Constraint, ...]
    masks: tuple[Closure, ...]  # one per "mask" constraint, same order
    span: Span


@dataclass(frozen=True)
class BoundTerm:
    """A term of the energy with its weight and compiled arguments."""

    name: str
    term: Term
    weight: float
    args: tuple[Closure, ...]
    degree: float  # in the latent: 0 means constant in z
    quadratic: bool
    first_arg: str | None  # the first argument's name, when it is a plain name
    span: Span

    def energy(self, env: Env) -> torch.Tensor:
        return self.weight * self.term.energy(*(arg(env) for arg in self.args))


@dataclass(frozen=True)
class Method:
    kind: str  # fista | ista | lars | encoder
    steps: int = DEFAULT_STEPS
    tol: float = DEFAULT_TOL
    span: Span | None = None

    def __str__(self) -> str:
        if self.kind in ("encoder", "lars"):
            return self.kind
        return f"{self.kind}(steps = {self.steps}, tol = {self.tol:g})"


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    terms: tuple[str, ...]
    schedule: str = "constant"  # how the learning rates move over the phase's epochs
    lr_scale: float = 1.0  # every learning rate times this during the phase


@dataclass(frozen=True)
class Training:
    optimizer: str
    options: dict
    lr: float
    batch: int
    seed: int
    phases: tuple[Phase, ...]
    decoders: tuple[tuple[str, str], ...] = ()  # optimizer bcd: (parameter, its sqerr term)

    def settings(self) -> dict:
        """The optimizer's settings as the user would write them (bcd has no learning rate)."""
        return dict(self.options) if self.optimizer == "bcd" else {"lr": self.lr, **self.options}


@dataclass
class Program:
    spec: S.Spec
    name: str
    constants: dict[str, float]
    data: DataCall
    sample_shape: tuple[int, ...]  # as the data gives it
    input: Variable
    normalize: str | None
    label: Variable | None  # shape (classes,)
    latent: Variable
    nonneg: bool
    params: list[ParamPlan]
    structures: dict[str, st.Structure]
    pools: dict[str, PoolFamily]
    lets: dict[str, Closure]
    encoder: Closure | None
    terms: list[BoundTerm]
    methods: tuple[Method, ...]
    training: Training
    inference_terms: tuple[str, ...] | None = None  # what FISTA minimises (None: every term)

    @property
    def classes(self) -> int | None:
        return self.label.shape[0] if self.label else None

    @property
    def reconstruction(self) -> BoundTerm | None:
        """The first ``sqerr(x, ...)`` term: what 'reconstruction error' measures."""
        for term in self.terms:
            if term.term.name == "sqerr" and term.first_arg == self.input.name:
                return term
        return None

    @property
    def classifier(self) -> BoundTerm | None:
        return next((t for t in self.terms if t.term.name == "xent"), None)


def compile_spec(
    spec: S.Spec,
    overrides: Mapping[str, object] | None = None,
    data: S.Call | None = None,
    data_info: tuple[tuple[int, ...], int | None] | None = None,
) -> Program:
    """Check ``spec`` and compile it; ``data_info`` skips asking the data source."""
    try:
        return _Compiler(spec, dict(overrides or {}), data, data_info).run()
    except SpecError as error:
        raise error.located(spec.path, spec.source) from None
    except RecursionError:
        raise SpecError("an expression is nested too deeply", WHOLE_SPEC, path=spec.path) from None


# ---------------------------------------------------------------- the checker


class _Compiler:
    def __init__(self, spec: S.Spec, overrides: dict, data: S.Call | None, data_info):
        self.spec = spec
        self.overrides = overrides
        self.data_node = data
        self.data_info = data_info
        self.scope: dict[str, Symbol] = {}
        self.declared: dict[str, Span] = {}
        self.consts = ExprCompiler(self.scope, "const")

    def run(self) -> Program:
        spec = self.spec
        constants = self._constants()
        data = self._data()
        sample_shape, data_classes = self._data_info(data)
        input_var, normalize = self._input(sample_shape)
        label = self._label(data_classes)
        latent, nonneg = self._latent()
        self.structures = {decl.name.name: self._structure(decl, latent) for decl in spec.graphs}
        params = [self._param(decl, input_var) for decl in spec.params]
        later_lets = {d.name.name: "lets are computed in the order they are declared" for d in spec.lets}
        model = ExprCompiler(self.scope, "model", unavailable=later_lets)
        lets = {decl.name.name: self._let(decl, model, latent) for decl in spec.lets}
        pools = self._pools(latent)
        encoder = self._encoder(latent, model)
        terms = self._terms(model, latent, pools, label)
        inference_terms = self._inference_terms(terms)
        chosen = [t for t in terms if inference_terms is None or t.name in inference_terms]
        methods = self._infer(latent, encoder, chosen)
        training = self._training(terms)
        if training.optimizer == "bcd":
            training = replace(training, decoders=self._decoders(params, latent))
        return Program(
            spec=spec,
            name=spec.name.name if spec.name else _stem(spec.path),
            constants=constants,
            data=data,
            sample_shape=sample_shape,
            input=input_var,
            normalize=normalize,
            label=label,
            latent=latent,
            nonneg=nonneg,
            params=params,
            structures=self.structures,
            pools=pools,
            lets=lets,
            encoder=encoder,
            terms=terms,
            methods=methods,
            training=training,
            inference_terms=inference_terms,
        )

    # ------------------------------------------------------------ names

    def _declare(self, ident: S.Ident, symbol: Symbol | None = None) -> None:
        if ident.name in self.declared:
            first = self.declared[ident.name]
            raise SpecError(f"'{ident.name}' is already declared (line {first.line})", ident.span)
        if ident.name in ("I", "eye", "zeros", "ones"):
            raise SpecError(f"'{ident.name}' is a built-in name", ident.span, hint="choose another name")
        self.declared[ident.name] = ident.span
        if symbol is not None:
            self.scope[ident.name] = symbol

    # ------------------------------------------------------------ constants and data

    def _constants(self) -> dict[str, float]:
        names = [decl.name.name for decl in self.spec.consts]
        for name in self.overrides:
            if name not in names:
                hint = did_you_mean(name, names) or (one_of(names) if names else "this spec has no constants")
                raise SpecError(f"--set: unknown constant '{name}'", hint=hint)
        values = {}
        for decl in self.spec.consts:
            name = decl.name.name
            if name in self.overrides:
                value = _override_value(name, self.overrides[name])
            else:
                value = self.consts.constant(decl.value)
            values[name] = value
            self._declare(decl.name, Symbol("const", Value((), const=value), lambda env, v=value: v))
        return values

    def _data(self) -> DataCall:
        node = self.data_node or (self.spec.data.call if self.spec.data else None)
        if node is None:
            raise SpecError("no data: add a line such as 'data mnist', or pass --data", WHOLE_SPEC)
        seen = set()
        for kw in node.kwargs:
            if kw.name in seen:
                raise SpecError(f"argument '{kw.name}' is given twice", kw.span)
            seen.add(kw.name)
        args = tuple(self._data_argument(a) for a in node.args)
        kwargs = tuple((kw.name, self._data_argument(kw.value)) for kw in node.kwargs)
        self._data_span = node.span
        return DataCall(node.func, args, kwargs)

    def _data_argument(self, node: S.Expr):
        if isinstance(node, S.String):
            return node.value
        if isinstance(node, S.Name) and node.id not in self.scope:
            return node.id  # a bare word such as whiten = zca
        value = self.consts.constant(node)
        return int(value) if value == int(value) and abs(value) < 2**53 else value

    def _data_info(self, data: DataCall):
        if self.data_info is not None:
            self.data_name = "the data"  # given as tensors: the spec's data line may not describe it
            return tuple(self.data_info[0]), self.data_info[1]
        self.data_name = f"the data {data.text()}"  # messages about the data name its source
        base = spec_dir(self.spec.path)
        try:
            return describe_source(data.name, data.args, dict(data.kwargs), base_dir=base)
        except DataError as error:
            if self.data_node is not None:
                raise  # from --data (or data=): no line of the spec to point at
            raise SpecError(str(error), self._data_span) from None

    # ------------------------------------------------------------ variables

    def _only(self, decls, what: str, required: bool):
        noun = what if what == "encoder" else f"{what} variable"
        if len(decls) > 1:
            raise SpecError(f"only one {noun} is supported (the first is at line {decls[0].span.line})",
                            decls[1].span)  # fmt: skip
        if required and not decls:
            hint = f"add a line such as '{what} {_EXAMPLES[what]}'"
            raise SpecError(f"the spec declares no {noun}", WHOLE_SPEC, hint=hint)
        return decls[0] if decls else None

    def _shape(self, dims: tuple[S.Expr, ...]) -> tuple[int, ...]:
        return tuple(self.consts.integer(d, "a size") for d in dims)

    def _input(self, sample_shape) -> tuple[Variable, str | None]:
        decl = self._only(self.spec.inputs, "input", True)
        shape = sample_shape if decl.shape is None else self._shape(decl.shape)
        if math.prod(shape) != math.prod(sample_shape):
            dims = ", ".join(map(str, sample_shape))
            span = _join(decl.shape[0].span, decl.shape[-1].span)
            raise SpecError(f"input '{decl.name.name}' has {math.prod(shape)} values per sample, but "
                            f"{self.data_name} gives samples of shape [{dims}]", span,
                            hint=f"write 'input {decl.name.name}' to take the shape from the data")  # fmt: skip
        normalize = None
        if decl.normalize is not None:
            normalize = decl.normalize.name
            if normalize not in NORMALIZATIONS:
                raise SpecError(f"unknown normalisation '{normalize}'", decl.normalize.span,
                                hint=one_of(NORMALIZATIONS))  # fmt: skip
        variable = Variable(decl.name.name, shape, decl.name.span)
        self._declare(decl.name, Symbol("input", Value(shape, batched=True), lambda env, n=variable.name: env[n]))
        return variable, normalize

    def _label(self, data_classes: int | None) -> Variable | None:
        decl = self._only(self.spec.labels, "label", False)
        if decl is None:
            return None
        if data_classes is None:
            raise SpecError(f"label '{decl.name.name}' is declared, but {self.data_name} has no labels", decl.span)
        classes = data_classes
        if decl.classes is not None:
            classes = self.consts.integer(decl.classes, "the number of classes", 2)
            if classes < data_classes:
                raise SpecError(f"{classes} classes declared, but {self.data_name} has labels up to "
                                f"{data_classes - 1} (class indices must be below {classes})",
                                decl.classes.span)  # fmt: skip
        variable = Variable(decl.name.name, (classes,), decl.name.span)
        self._declare(decl.name, Symbol("label", Value((), batched=True), lambda env, n=variable.name: env[n]))
        return variable

    def _latent(self) -> tuple[Variable, bool]:
        decl = self._only(self.spec.latents, "latent", True)
        shape = self._shape(decl.shape)
        if len(shape) not in (1, 3):
            raise SpecError("the latent is a vector, e.g. z[400], or code maps [maps, rows, cols], e.g. z[16, 28, 28]",
                            decl.span)  # fmt: skip
        units = math.prod(shape)
        if units > st.MAX_UNITS:  # its pools and structures are built when the spec is checked
            raise SpecError(f"a latent of more than {st.MAX_UNITS:,} units is too large",
                            _join(decl.shape[0].span, decl.shape[-1].span))  # fmt: skip
        nonneg = decl.lower_bound is not None
        if nonneg and self.consts.constant(decl.lower_bound) != 0:
            raise SpecError("a latent can only be bounded below by 0 ('>= 0')", decl.lower_bound.span)
        layout = shape if len(shape) == 3 else None
        variable = Variable(decl.name.name, (units,), decl.name.span, layout)
        if layout is None:
            read = lambda env, n=variable.name: env[n]
        else:  # stored flat for inference and pools; read as maps by the image operators
            read = lambda env, n=variable.name: env[n].unflatten(1, layout)
        self._declare(decl.name, Symbol("latent", Value(shape, batched=True, degree=1), read))
        return variable, nonneg

    # ------------------------------------------------------------ structures

    def _structure(self, decl: S.GraphDecl, latent: Variable) -> st.Structure:
        node, name = decl.value, decl.name.name
        if not isinstance(node, S.Call) or node.func not in STRUCTURES:
            func = node.func if isinstance(node, S.Call) else None
            hint = (did_you_mean(func, STRUCTURES) if func else None) or one_of(STRUCTURES)
            span = node.func_span if isinstance(node, S.Call) else node.span
            raise SpecError(f"unknown structure '{func}'" if func else "expected a structure", span, hint=hint)
        slots = self.consts.arguments(node, len(STRUCTURES[node.func]), STRUCTURES[node.func])
        try:
            structure = self._build_structure(name, node, slots, latent)
        except st.StructureError as error:
            raise SpecError(str(error), decl.value.span) from None
        _check_structure_size(node, structure.size, latent)  # a tree from edges or a file
        self._declare(decl.name, Symbol("graph", Value(()), lambda env: None))
        return structure

    def _build_structure(self, name: str, node: S.Call, slots, latent: Variable) -> st.Structure:
        """The structure; when the arguments give its size, that is checked before it is built."""
        integer = self.consts.integer
        if node.func in ("grid", "torus"):
            self.consts.required(node, slots, 2)
            rows, cols = integer(slots[0], "the number of rows"), integer(slots[1], "the number of columns")
            _check_structure_size(node, rows * cols, latent)
            builder = st.grid if node.func == "grid" else st.torus
            return builder(name, rows, cols)
        if node.func == "chain":
            self.consts.required(node, slots, 1)
            length = integer(slots[0], "the length")
            _check_structure_size(node, length, latent)
            return st.chain(name, length)
        branching, depth, edges, path, root = slots
        root = 0 if root is None else integer(root, "the root", 0)
        given = [n for n in (branching, edges, path) if n is not None]
        if len(given) != 1 or (branching is None) != (depth is None):
            raise SpecError("tree() takes either branching and depth, or edges = [[parent, child], ...], "
                            "or file = \"tree.gml\"", node.span)  # fmt: skip
        if branching is not None:
            branching, depth = integer(branching, "the branching"), integer(depth, "the depth", 0)
            _check_structure_size(node, st.tree_units(branching, depth), latent)
            return st.balanced_tree(name, branching, depth)
        if edges is not None:
            return st.tree_from_edges(name, self._edges(edges), root)
        if not isinstance(path, S.String):
            raise SpecError('file = expects a path in quotes, e.g. file = "tree.gml"', path.span)
        return st.tree_from_file(name, spec_dir(self.spec.path) / path.value, root)

    def _edges(self, node: S.Expr) -> list[tuple[int, int]]:
        if not isinstance(node, S.ListExpr):
            raise SpecError("edges = expects a list of [parent, child] pairs", node.span)
        edges = []
        for item in node.items:
            if not isinstance(item, S.ListExpr) or len(item.items) != 2:
                raise SpecError("each edge is a pair [parent, child]", item.span)
            edges.append(tuple(self.consts.integer(n, "a node", 0) for n in item.items))
        return edges

    def structure_argument(self, node: S.Expr | None, what: str, kinds=("grid", "torus", "chain", "tree")):
        """The structure named by ``node`` (a pool family or matrix argument)."""
        if not isinstance(node, S.Name) or node.id not in self.structures:
            label = node.id if isinstance(node, S.Name) else None
            hint = (did_you_mean(label, self.structures) if label else None) or (
                one_of(self.structures) if self.structures else "declare one with 'graph T = tree(2, 5)'")
            raise SpecError(f"{what} needs the name of a structure", node.span if node else None, hint=hint)
        structure = self.structures[node.id]
        if structure.kind not in kinds:
            raise SpecError(f"{what} needs a {' or '.join(kinds)}, '{node.id}' is a {structure.kind}", node.span)
        return structure

    # ------------------------------------------------------------ parameters

    def _param(self, decl: S.ParamDecl, input_var: Variable) -> ParamPlan:
        name = decl.name.name
        shape = self._shape(decl.shape)
        init_scope = {k: s for k, s in self.scope.items() if s.role in ("const", "param")}
        unavailable = {k: "an initial value may use constants, earlier parameters and samples(x)"
                       for k in self.scope if k not in init_scope}  # fmt: skip
        later = [p.name.name for p in self.spec.params if p.name.name not in self.scope and p.name.name != name]
        unavailable.update({k: "parameters are initialised in the order they are declared" for k in later})
        unavailable[name] = "a parameter cannot be initialised from itself"
        initialisers = {**_initialisers(shape, input_var), **self._matrix_builders(shape)}
        compiler = ExprCompiler(init_scope, "init", initialisers, unavailable)
        init = self._init(decl, shape, compiler)
        constraints, masks = self._constraints(decl, shape, compiler)
        learn, lr = self._learn(decl)
        lr_scale = 1.0 if decl.lr_scale is None else self.consts.positive(decl.lr_scale, "lr_scale")
        self._declare(decl.name, Symbol("param", Value(shape), lambda env, n=name: env[n]))
        return ParamPlan(name, shape, init, learn, lr, lr_scale, constraints, masks, decl.span)

    def _matrix_builders(self, shape) -> dict:
        """``tree_inhibition(T)``, ``grid_inhibition(G, radius)``: matrices from structures."""

        def matrix(compiler, node, array):
            tensor = torch.from_numpy(array)
            return Value(tuple(tensor.shape)), lambda env: tensor.to(env["reference"])

        def tree_inhibition(compiler, node):
            """``tree_inhibition(tree)``: 0 between a unit and its ancestors, its descendants and itself,
            1 between units on different branches."""
            slots = compiler.arguments(node, 1, ("tree",))
            compiler.required(node, slots, 1)
            return matrix(compiler, node, st.tree_inhibition(self.structure_argument(slots[0], node.func, ("tree",))))

        def grid_inhibition(compiler, node):
            """``grid_inhibition(map, radius = r)``: 0 within r steps on the map, 1 beyond;
            ``grid_inhibition(map, sigma = s)``: 1 − exp(−d²/2s²) at distance d.  0 on the diagonal."""
            slots = compiler.arguments(node, 3, ("map", "radius", "sigma"))
            compiler.required(node, slots, 1)
            slot, radius, sigma = slots
            structure = self.structure_argument(slot, node.func)
            if (radius is None) == (sigma is None):
                raise SpecError("grid_inhibition() takes radius = r (0 within r steps, 1 beyond) or sigma = s "
                                "(smooth)", node.span)  # fmt: skip
            radius = compiler.constant(radius) if radius is not None else None
            sigma = compiler.positive(sigma, "sigma") if sigma is not None else None
            return matrix(compiler, node, st.grid_inhibition(structure, radius, sigma))

        return {"tree_inhibition": tree_inhibition, "grid_inhibition": grid_inhibition}

    def _init(self, decl: S.ParamDecl, shape, compiler: ExprCompiler) -> Closure:
        if decl.init is None:
            return _default_init(shape)
        value, fn = compiler.compile(decl.init)
        if value.shape not in ((), shape) or value.batched:
            dims = ", ".join(map(str, shape))
            raise SpecError(f"the initial value has shape {value.describe()}, but '{decl.name.name}' is [{dims}]",
                            decl.init.span)  # fmt: skip
        return fn

    def _constraints(self, decl: S.ParamDecl, shape, compiler: ExprCompiler):
        constraints, masks, seen = [], [], set()
        for node in decl.constraints:
            if node.kind not in DESCRIPTIONS:
                raise SpecError(f"unknown constraint '{node.kind}'", node.kind_span,
                                hint=did_you_mean(node.kind, DESCRIPTIONS) or one_of(DESCRIPTIONS))  # fmt: skip
            if node.kind in seen:
                raise SpecError(f"constraint '{node.kind}' is given twice", node.kind_span)
            seen.add(node.kind)
            self._check_constraint_shape(node, shape)
            if node.kind == "mask":
                masks.append(self._mask(node, shape, compiler))
                constraints.append(Constraint("mask"))
            elif node.kind in NORM_KINDS:
                if node.compare is None:
                    raise SpecError(f"'{node.kind}' needs a bound, e.g. '{node.kind} <= 1'", node.span)
                bound = self.consts.positive(node.value, f"the bound of {node.kind}")
                constraints.append(Constraint(node.kind, node.compare, bound))
            else:
                if node.compare is not None:
                    raise SpecError(f"'{node.kind}' takes no bound", node.span)
                constraints.append(Constraint(node.kind))
        order = sort_constraints(constraints)
        return tuple(order), tuple(masks)

    @staticmethod
    def _check_constraint_shape(node: S.ConstraintDecl, shape) -> None:
        dims = ", ".join(map(str, shape))
        if node.kind in MATRIX_KINDS and len(shape) != 2:
            hint = "for the filters of a kernel, write filter_norm" if len(shape) >= 4 and "norm" in node.kind else None
            raise SpecError(f"'{node.kind}' needs a matrix, this parameter is [{dims}]", node.kind_span, hint=hint)
        if node.kind in KERNEL_KINDS and len(shape) < 4:
            raise SpecError(f"'{node.kind}' needs a kernel [out, channels, kh, kw] (or a locally connected one), "
                            f"this parameter is [{dims}]", node.kind_span)  # fmt: skip
        if node.kind in SQUARE_KINDS and shape[0] != shape[1]:
            raise SpecError(f"'{node.kind}' needs a square matrix, this parameter is [{dims}]", node.kind_span)

    @staticmethod
    def _mask(node: S.ConstraintDecl, shape, compiler: ExprCompiler) -> Closure:
        value, fn = compiler.compile(node.value)
        if value.shape != shape:
            dims = ", ".join(map(str, shape))
            raise SpecError(f"the mask has shape {value.describe()}, the parameter [{dims}]", node.value.span)
        return fn

    def _learn(self, decl: S.ParamDecl) -> tuple[str, float | None]:
        if decl.learn is None:
            return "descent", None
        mode = decl.learn.mode
        if mode.name not in LEARN_MODES:
            raise SpecError(f"unknown learning mode '{mode.name}'", mode.span,
                            hint=did_you_mean(mode.name, LEARN_MODES) or one_of(LEARN_MODES))  # fmt: skip
        options, spans = _options(self.consts, decl.learn, ("lr",), f"learn {mode.name}")
        if mode.name == "fixed" and options:
            raise SpecError("a fixed parameter has no learning rate", spans["lr"])
        lr = options.get("lr")
        if lr is not None and lr <= 0:
            raise SpecError(f"lr must be positive, got {lr:g}", spans["lr"])
        return mode.name, lr

    # ------------------------------------------------------------ model expressions

    def _let(self, decl: S.LetDecl, model: ExprCompiler, latent: Variable) -> Closure:
        if isinstance(decl.value, S.Recurrent):  # a recurrence over the latent's state, from zero (LISTA)
            value, fn = self._recurrence(decl.value, latent, model)
        else:
            value, fn = model.compile(decl.value)
        key = "let:" + decl.name.name

        def cached(env: Env):
            if key not in env.cache:
                env.cache[key] = fn(env)
            return env.cache[key]

        self._declare(decl.name, Symbol("let", value, cached))
        return cached

    def _pools(self, latent: Variable) -> dict[str, PoolFamily]:
        families: dict[str, PoolFamily] = {}
        for decl in self.spec.pools:
            if isinstance(decl, S.PoolDecl):
                if decl.variable.name != latent.name:
                    raise SpecError(f"pools group units of the latent '{latent.name}', not '{decl.variable.name}'",
                                    decl.variable.span)  # fmt: skip
                family = pool_from_ranges(decl, latent.shape[0], self.consts.integer)
            else:
                family = self._family(decl, latent, families)
            families[decl.name.name] = family
            self._declare(decl.name, Symbol("pools", Value(()), lambda env: None))
        return families

    def _family(self, decl: S.PoolsDecl, latent: Variable, families) -> PoolFamily:
        node, name = decl.value, decl.name.name
        if isinstance(node, S.ListExpr):
            return family_from_list(name, node, families)
        if not isinstance(node, S.Call) or node.func not in FAMILY_BUILDERS:
            if isinstance(node, S.Call):
                raise unknown_builder(node)
            raise SpecError("expected a pool family such as blocks(z, 4) or [a, b]", node.span)
        slots = self.consts.arguments(node, len(FAMILY_BUILDERS[node.func]), FAMILY_BUILDERS[node.func])
        self.consts.required(node, slots, 2 if node.func != "subtrees" else 1)
        if node.func == "blocks":
            if not isinstance(slots[0], S.Name) or slots[0].id != latent.name:
                raise SpecError(f"blocks() groups units of the latent: its first argument is '{latent.name}'",
                                slots[0].span)  # fmt: skip
            return blocks(name, latent.shape[0], self.consts.integer(slots[1], "the block size"))
        if node.func == "maps":
            if not isinstance(slots[0], S.Name) or slots[0].id != latent.name:
                raise SpecError(f"maps() groups the code maps of the latent: its first argument is '{latent.name}'",
                                slots[0].span)  # fmt: skip
            if latent.layout is None:
                raise SpecError(f"maps() needs code maps, e.g. 'latent {latent.name}[16, 28, 28]'; "
                                f"'{latent.name}' is a vector", slots[0].span)  # fmt: skip
            size = self.consts.integer(slots[1], "the number of maps per pool")
            window = self.consts.integer(slots[2], "the window") if slots[2] is not None else 1
            stride = self.consts.integer(slots[3], "the stride") if slots[3] is not None else window
            if window > min(latent.layout[1:]):
                raise SpecError(f"a window of {window}x{window} does not fit {latent.layout[1]}x{latent.layout[2]} "
                                "code maps", slots[2].span)  # fmt: skip
            return maps(name, latent.layout, size, window, stride)
        return self._structured_family(name, node, slots)

    def _structured_family(self, name: str, node: S.Call, slots) -> PoolFamily:
        weights = None
        if node.func == "windows":
            structure = self.structure_argument(slots[0], "windows()", ("grid", "torus"))
            size = self.consts.integer(slots[1], "the window size")
            stride = self.consts.integer(slots[2], "the stride") if slots[2] is not None else 1
            if size > min(structure.shape):
                raise SpecError(f"windows of {size}x{size} do not fit a {structure.shape[0]}x{structure.shape[1]} map",
                                slots[1].span)  # fmt: skip
            sigma = self.consts.positive(slots[3], "sigma") if slots[3] is not None else None
            members, weights = st.windows(structure, size, stride, sigma)
        elif node.func == "neighborhoods":
            structure = self.structure_argument(slots[0], "neighborhoods()")
            members = st.neighborhoods(structure, self.consts.integer(slots[1], "the radius", 0))
        else:
            structure = self.structure_argument(slots[0], "subtrees()", ("tree",))
            members = st.subtrees(structure)
        names = tuple(f"{name}[{i}]" for i in range(len(members)))
        weights = tuple(weights) if weights is not None else None
        return PoolFamily(name, structure.size, names, tuple(members), weights)

    def _encoder(self, latent: Variable, model: ExprCompiler) -> Closure | None:
        decl = self._only(self.spec.encoders, "encoder", False)
        if decl is None:
            return None
        if decl.target.name != latent.name:
            raise SpecError(f"an encoder computes the latent '{latent.name}', not '{decl.target.name}'",
                            decl.target.span)  # fmt: skip
        if isinstance(decl.value, S.Recurrent):
            value, fn = self._recurrence(decl.value, latent, model)
        else:
            without_latent = {k: s for k, s in self.scope.items() if k != latent.name}
            reason = "a plain encoder cannot read the latent it computes; write recurrent(T) { ... } to iterate"
            value, fn = ExprCompiler(without_latent, "model", unavailable={latent.name: reason}).compile(decl.value)
            self._check_latent_shaped(value, latent, decl.value.span, "the encoder")
        if latent.layout is not None:  # code maps are stored flat, as inference keeps them
            return lambda env: fn(env).flatten(1)
        return fn

    def _recurrence(self, node: S.Recurrent, latent: Variable, model: ExprCompiler) -> tuple[Value, Closure]:
        """``recurrent(T) { body }``: inside the body the latent's name is the previous state."""
        value, fn = model.recurrent(node, latent.name, self.scope[latent.name].value)
        self._check_latent_shaped(value, latent, node.span, "the recurrence")
        return value, fn

    def _check_latent_shaped(self, value: Value, latent: Variable, span: Span, what: str) -> None:
        if value.shape != self.scope[latent.name].value.shape or not value.batched:
            raise SpecError(f"{what} gives {value.describe()}, but '{latent.name}' is "
                            f"{self.scope[latent.name].value.describe()}", span)  # fmt: skip

    # ------------------------------------------------------------ energy

    def _terms(self, model: ExprCompiler, latent: Variable, pools, label) -> list[BoundTerm]:
        if not self.spec.energy:
            raise SpecError("the spec has no energy block", WHOLE_SPEC,
                            hint="add 'energy' followed by terms such as 'recon : 0.5 * sqerr(x, W @ z)'")  # fmt: skip
        terms, seen = [], {}
        for decl in self.spec.energy:
            if decl.name.name in seen:
                raise SpecError(f"term '{decl.name.name}' is already defined (line {seen[decl.name.name]})",
                                decl.name.span)  # fmt: skip
            seen[decl.name.name] = decl.span.line
            terms.append(self._term(decl, model, latent, pools, label))
        return terms

    def _term(self, decl: S.TermDecl, model: ExprCompiler, latent, pools, label) -> BoundTerm:
        weight, call = self._split_weight(decl.value)
        cls = TERMS[call.func]
        slots = model.arguments(call, len(cls.arguments), cls.arguments)
        model.required(call, slots, len(cls.arguments))
        static, values, closures = {}, [], []
        for kind, node in zip(cls.kinds, slots):
            if kind == "pools":
                static["pools"] = self._pool_argument(node, pools)
            elif kind == "structure":
                static["structure"] = self.structure_argument(node, f"{call.func}()", ("tree",))
            elif kind == "label":
                closures.append(self._label_argument(node, label))
                static["classes"] = label.shape[0]
            else:
                value, fn = model.compile(node)
                values.append(value)
                closures.append(fn)
        term = cls(static)
        term.check(values, call)
        degree = max((v.degree for v in values), default=0)
        first_arg = slots[0].id if isinstance(slots[0], S.Name) else None
        if weight < 0:
            raise SpecError(f"the weight of term '{decl.name.name}' is negative ({weight:g})", decl.value.span,
                            hint="an energy term must have a weight >= 0")  # fmt: skip
        return BoundTerm(decl.name.name, term, weight, tuple(closures), degree,
                         term.is_quadratic(values), first_arg, decl.span)  # fmt: skip

    def _split_weight(self, node: S.Expr) -> tuple[float, S.Call]:
        """``lam * 0.5 * l1(z)`` → (0.5·lam, the l1 call)."""
        factors: list[tuple[S.Expr, bool]] = []  # (factor, divides)

        def flatten(n: S.Expr, divides: bool = False):
            if isinstance(n, S.BinOp) and n.op == "*" and not divides:
                flatten(n.left)
                flatten(n.right)
            elif isinstance(n, S.BinOp) and n.op == "/" and not divides:
                flatten(n.left)
                factors.append((n.right, True))
            else:
                factors.append((n, divides))

        flatten(node)
        calls = [f for f, divides in factors if isinstance(f, S.Call) and f.func in TERMS and not divides]
        if len(calls) != 1:
            raise self._not_a_term(node, calls, factors)
        weight = 1.0
        for factor, divides in factors:
            if factor is calls[0]:
                continue
            value = self.consts.constant(factor)
            if divides and value == 0:
                raise SpecError("division by zero", factor.span)
            weight = weight / value if divides else weight * value
        return weight, calls[0]

    @staticmethod
    def _not_a_term(node: S.Expr, calls, factors) -> SpecError:
        if len(calls) > 1:
            return SpecError("a term holds one energy function; split it into two named terms", calls[1].span)
        if isinstance(node, S.Neg):
            return SpecError("a term's weight must be >= 0", node.span, hint="an energy term cannot be negated")
        for factor, _ in factors:
            if isinstance(factor, S.Call) and factor.func not in TERMS and factor.func not in FUNCTIONS:
                hint = did_you_mean(factor.func, TERMS) or one_of(TERMS)
                return SpecError(f"unknown energy term '{factor.func}'", factor.func_span, hint=hint)
        return SpecError("a term is 'weight * function(...)' with a function from the registry", node.span,
                         hint=one_of(TERMS))  # fmt: skip

    def _pool_argument(self, node: S.Expr, pools) -> PoolFamily:
        if not isinstance(node, S.Name) or node.id not in pools:
            label = node.id if isinstance(node, S.Name) else None
            hint = (did_you_mean(label, pools) if label else None) or (
                one_of(pools) if pools else "declare one with 'pools P = blocks(z, 4)'"
            )
            raise SpecError("expected the name of a pool family", node.span, hint=hint)
        return pools[node.id]

    def _label_argument(self, node: S.Expr, label: Variable | None) -> Closure:
        if label is None:
            raise SpecError("this term needs a label, and the spec declares none", node.span,
                            hint="add a line such as 'label y : 10 classes'")  # fmt: skip
        if not isinstance(node, S.Name) or node.id != label.name:
            raise SpecError(f"expected the label '{label.name}' here", node.span)
        return lambda env, n=label.name: env[n]

    # ------------------------------------------------------------ inference and training

    def _infer(self, latent: Variable, encoder, terms: list[BoundTerm]) -> tuple[Method, ...]:
        decl = self.spec.infer
        if decl is None:
            methods = (Method("encoder"),) if encoder else (Method("fista"),)
        else:
            if decl.target.name != latent.name:
                raise SpecError(f"'{decl.target.name}' is not the latent", decl.target.span,
                                hint=f"infer {latent.name} by ...")  # fmt: skip
            methods = tuple(self._method(m, i) for i, m in enumerate(decl.methods))
        if any(m.kind == "encoder" for m in methods) and encoder is None:
            span = next(m.span for m in methods if m.kind == "encoder") if decl else None
            raise SpecError("inference by encoder, but the spec declares no encoder", span,
                            hint=f"add 'encoder {latent.name} = ...'")  # fmt: skip
        if any(m.kind in ("fista", "ista") for m in methods):
            _check_proximable(terms, latent, methods)
        if any(m.kind == "lars" for m in methods):
            _check_lasso(terms, latent, next(m.span for m in methods if m.kind == "lars"))
        return methods

    def _inference_terms(self, terms: list[BoundTerm]) -> tuple[str, ...] | None:
        """The terms named by ``infer ... terms a, b``, in energy order."""
        decl = self.spec.infer
        if decl is None or decl.terms is None:
            return None
        names = tuple(t.name for t in terms)
        for ident in decl.terms:
            if ident.name not in names:
                raise SpecError(f"inference names unknown term '{ident.name}'", ident.span,
                                hint=did_you_mean(ident.name, names) or one_of(names))  # fmt: skip
        if all(m.name.name == "encoder" for m in decl.methods):
            raise SpecError("'terms' chooses what FISTA minimises, but inference is by the encoder alone",
                            decl.terms[0].span, hint="remove it, or infer by fista(...)")  # fmt: skip
        chosen = {ident.name for ident in decl.terms}
        return tuple(name for name in names if name in chosen)

    def _method(self, node: S.MethodDecl, position: int) -> Method:
        kind = node.name.name
        if kind not in INFER_METHODS:
            raise SpecError(f"unknown inference method '{kind}'", node.name.span,
                            hint=did_you_mean(kind, INFER_METHODS) or one_of(INFER_METHODS))  # fmt: skip
        if kind == "encoder":
            if position > 0:
                raise SpecError("the encoder can only start the inference", node.span,
                                hint="write 'by encoder then fista(...)'")  # fmt: skip
            return Method("encoder", span=node.span)
        if kind == "lars":
            if position > 0:
                raise SpecError("lars follows the lasso path from z = 0, so nothing can start it", node.span,
                                hint="write 'by lars' alone, or 'by encoder then fista(...)'")  # fmt: skip
            if node.args or node.kwargs:
                raise SpecError("lars is exact, so it takes no options (no steps, no tol)",
                                (node.args or node.kwargs)[0].span, hint="write 'by lars'")  # fmt: skip
            return Method("lars", span=node.span)
        if position > 0 and (position != 1 or self.spec.infer.methods[0].name.name != "encoder"):
            raise SpecError("only the encoder can be followed by 'then'", node.span,
                            hint="write 'by fista(...)' or 'by encoder then fista(...)'")  # fmt: skip
        options, spans = _options(self.consts, node, INFER_OPTIONS, kind)
        steps = options.get("steps", DEFAULT_STEPS)
        if steps != int(steps) or steps < 1:
            raise SpecError(f"steps must be a whole number >= 1, got {steps:g}", spans["steps"])
        tol = options.get("tol", DEFAULT_TOL)
        if tol < 0:
            raise SpecError(f"tol must be >= 0, got {tol:g}", spans["tol"])
        return Method(kind, int(steps), tol, node.span)

    def _training(self, terms: list[BoundTerm]) -> Training:
        decl = self.spec.train or S.TrainDecl(span=Span(line=1, column=1, end_line=1, end_column=2))
        optimizer, options, lr = "adam", {}, DEFAULT_LR["adam"]
        if decl.optimizer is not None:
            optimizer, options, lr = self._optimizer(decl.optimizer)
        batch = self.consts.integer(decl.batch, "the batch size") if decl.batch else 64
        seed = self.consts.integer(decl.seed, "the seed", 0) if decl.seed else 0
        all_terms = tuple(t.name for t in terms)
        if decl.phases and decl.epochs is not None:
            raise SpecError("with phases, give epochs per phase", decl.epochs.span)
        if not decl.phases:
            epochs = self.consts.integer(decl.epochs, "epochs", 0) if decl.epochs else 10
            return Training(optimizer, options, lr, batch, seed, (Phase("train", epochs, all_terms),))
        phases, names = [], set()
        for phase in decl.phases:
            if phase.name.name in names:
                raise SpecError(f"phase '{phase.name.name}' is given twice", phase.name.span)
            names.add(phase.name.name)
            if phase.epochs is None:
                raise SpecError(f"phase '{phase.name.name}' needs 'epochs N'", phase.span)
            epochs = self.consts.integer(phase.epochs, "epochs", 0)
            active = all_terms
            if phase.terms is not None:
                for ident in phase.terms:
                    if ident.name not in all_terms:
                        raise SpecError(f"phase '{phase.name.name}' names unknown term '{ident.name}'", ident.span,
                                        hint=did_you_mean(ident.name, all_terms) or one_of(all_terms))  # fmt: skip
                active = tuple(t for t in all_terms if t in {i.name for i in phase.terms})
            lr_scale = self._phase_lr_scale(phase, optimizer)
            phases.append(Phase(phase.name.name, epochs, active, self._schedule(phase), lr_scale))
        return Training(optimizer, options, lr, batch, seed, tuple(phases))

    def _decoders(self, params: list[ParamPlan], latent: Variable) -> tuple[tuple[str, str], ...]:
        """Optimizer bcd's (parameter, term) pairs: every learned parameter must be the
        dictionary D of exactly one term ``w * sqerr(target, D @ z)``."""
        optimizer = self.spec.train.optimizer
        decoders = {}
        for decl in self.spec.energy:
            _, call = self._split_weight(decl.value)
            decoded = call.args[1] if call.func == "sqerr" and len(call.args) == 2 else None
            if (isinstance(decoded, S.BinOp) and decoded.op == "@" and isinstance(decoded.left, S.Name)
                    and isinstance(decoded.right, S.Name) and decoded.right.id == latent.name):  # fmt: skip
                decoders.setdefault(decoded.left.id, []).append(decl)
        for plan in params:
            if plan.learn == "fixed":
                continue
            if plan.learn == "ascent" or len(decoders.get(plan.name, ())) != 1:
                found = "is learned by ascent" if plan.learn == "ascent" else (
                    f"decodes {len(decoders[plan.name])} terms" if plan.name in decoders else "is not a decoder")
                raise SpecError(f"optimizer bcd learns dictionaries only: parameter '{plan.name}' {found}",
                                optimizer.func_span, hint=f"bcd needs one term 'sqerr(x, {plan.name} @ "
                                f"{latent.name})' per learned parameter; fix the others with 'learn fixed'")  # fmt: skip
            unsupported = [c.kind for c in plan.constraints if c.kind not in BCD_CONSTRAINTS]
            if unsupported or len(plan.shape) != 2:
                what = f"constraint '{unsupported[0]}'" if unsupported else f"shape {list(plan.shape)}"
                raise SpecError(f"optimizer bcd updates one column at a time; parameter '{plan.name}' has {what}",
                                plan.span, hint=f"bcd takes matrices with {', '.join(BCD_CONSTRAINTS)} constraints")  # fmt: skip
        return tuple((plan.name, decoders[plan.name][0].name.name) for plan in params if plan.learn != "fixed")

    def _phase_lr_scale(self, phase: S.PhaseDecl, optimizer: str) -> float:
        if phase.lr_scale is None:
            return 1.0
        if optimizer == "bcd":
            raise SpecError(f"phase '{phase.name.name}': optimizer bcd has no learning rate to scale",
                            phase.lr_scale.span, hint="remove 'lr_scale' from the phase")  # fmt: skip
        return self.consts.positive(phase.lr_scale, "lr_scale")

    @staticmethod
    def _schedule(phase: S.PhaseDecl) -> str:
        if phase.schedule is None:
            return "constant"
        if phase.schedule.name not in SCHEDULES:
            raise SpecError(f"unknown schedule '{phase.schedule.name}'", phase.schedule.span,
                            hint=did_you_mean(phase.schedule.name, SCHEDULES) or one_of(SCHEDULES))  # fmt: skip
        return phase.schedule.name

    def _optimizer(self, node: S.Call):
        if node.func not in OPTIMIZERS:
            raise SpecError(f"unknown optimizer '{node.func}'", node.func_span,
                            hint=did_you_mean(node.func, OPTIMIZERS) or one_of(OPTIMIZERS))  # fmt: skip
        options, spans = _options(self.consts, node, OPTIMIZERS[node.func], node.func)
        lr = options.pop("lr", DEFAULT_LR[node.func])
        if lr <= 0:
            raise SpecError(f"lr must be positive, got {lr:g}", spans["lr"])
        for key, value in options.items():
            if value < 0 or (key in ("beta1", "beta2", "momentum") and value >= 1):
                limit = "in [0, 1)" if key in ("beta1", "beta2", "momentum") else ">= 0"
                raise SpecError(f"{key} must be {limit}, got {value:g}", spans[key])
        if "nesterov" in options:
            options["nesterov"] = bool(options["nesterov"])
        return node.func, options, lr


# ---------------------------------------------------------------- helpers

_EXAMPLES = {"input": "x[784]", "latent": "z[256]", "label": "y : 10 classes", "encoder": "z = relu(E @ x)"}


def _check_structure_size(node: S.Call, units: int, latent: Variable) -> None:
    if units != latent.shape[0]:
        count = f"{units}" if units <= st.MAX_UNITS else f"more than {st.MAX_UNITS:,}"
        raise SpecError(f"{node.func}(...) has {count} units, but the latent '{latent.name}' has {latent.shape[0]}",
                        node.span)  # fmt: skip


def _stem(path: str) -> str:
    return Path(path).stem if path not in ("<spec>", "") else "model"


def spec_dir(path: str) -> Path:
    return Path(path).parent if path not in ("<spec>", "") else Path.cwd()


def _override_value(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"--set {name}: expected a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise SpecError(f"--set {name}: expected a finite number, got {value!r}")
    return number


def _options(consts: ExprCompiler, node, allowed: tuple[str, ...], what: str):
    """Keyword options such as ``fista(steps = 200, tol = 1e-4)``, all constants.

    Returns the values and, for messages, where each was written.
    """
    if node.args:
        raise SpecError(f"{what}: options are given by name, e.g. {what}({allowed[0]} = ...)", node.args[0].span)
    options, spans = {}, {}
    for kw in node.kwargs:
        if kw.name not in allowed:
            raise SpecError(f"{what} has no option '{kw.name}'", kw.span,
                            hint=did_you_mean(kw.name, allowed) or one_of(allowed))  # fmt: skip
        if kw.name in options:
            raise SpecError(f"option '{kw.name}' is given twice", kw.span)
        options[kw.name] = consts.constant(kw.value)
        spans[kw.name] = kw.span
    return options, spans


def _join(first: Span, last: Span) -> Span:
    return Span(line=first.line, column=first.column, end_line=last.end_line, end_column=last.end_column)


def _check_proximable(terms: list[BoundTerm], latent: Variable, methods) -> None:
    """FISTA needs the exact prox of the sum of the nonsmooth terms in z."""
    groups = []
    for term in terms:
        if term.term.smooth or term.degree == 0:
            continue
        if term.first_arg != latent.name:
            raise SpecError(f"term '{term.name}' is nonsmooth in '{latent.name}' and FISTA has no prox for it",
                            term.span, hint=f"apply it to '{latent.name}' itself, or infer by encoder")  # fmt: skip
        if not isinstance(term.term, (inhibition,)) and term.term.name not in ("l1",):
            groups.append(term)
        if isinstance(term.term, inhibition) and any(m.kind == "fista" for m in methods):
            raise SpecError("inhibition makes the energy nonconvex, where FISTA's momentum can climb",
                            term.span, hint="infer by ista(...), whose steps always decrease the energy")  # fmt: skip
    if len(groups) > 1:
        raise SpecError("FISTA composes the prox of one group term only", groups[1].span)


def _check_lasso(terms: list[BoundTerm], latent: Variable, span: Span | None) -> None:
    """lars solves ½zHzᵀ + c·z + λ‖z‖₁ (+ z ≥ 0): quadratic smooth terms, l1 terms of the latent."""
    from .stepsize import DENSE_GRAM_MAX_UNITS  # stepsize imports infer, which imports this module
    if latent.shape[0] > DENSE_GRAM_MAX_UNITS:
        raise SpecError(f"lars needs the dense Gram matrix of the latent, but it has {latent.shape[0]:,} units "
                        f"(at most {DENSE_GRAM_MAX_UNITS:,})", span, hint="infer by fista(...)")  # fmt: skip
    l1_terms = 0
    for term in terms:
        if term.degree == 0:
            continue
        if term.term.smooth and not term.quadratic:
            raise SpecError(f"lars needs every smooth term to be quadratic in '{latent.name}', "
                            f"and '{term.name}' is not", term.span, hint="infer by fista(...)")  # fmt: skip
        if not term.term.smooth:
            if term.term.name != "l1" or term.first_arg != latent.name:
                raise SpecError(f"lars solves l1 penalties of '{latent.name}' only, not '{term.name}'",
                                term.span, hint="infer by fista(...)")  # fmt: skip
            l1_terms += 1
    if l1_terms == 0:
        raise SpecError(f"lars follows the lasso path down to the l1 weight, but no term is l1({latent.name})",
                        span, hint="infer by fista(...)")  # fmt: skip


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
