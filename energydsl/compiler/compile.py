"""Spec → :class:`Program`: every semantic check, and the closures that compute.

The program holds no tensors: it is what ``energydsl check`` validates and what
:class:`~energydsl.model.EnergyModel` instantiates.  Checks run in declaration
order, so a name is known from its declaration on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from energydsl.compiler.common import _EXAMPLES, _override_value, _stem
from energydsl.compiler.energy import EnergyStage
from energydsl.compiler.expressions import ExpressionsStage
from energydsl.compiler.inference import InferenceStage
from energydsl.compiler.params import ParamsStage
from energydsl.compiler.program import DataCall, Program, Variable
from energydsl.compiler.roles import Roles, find_roles
from energydsl.compiler.schedules import SchedulesStage
from energydsl.compiler.structures import StructuresStage
from energydsl.compiler.training import TrainingStage
from energydsl.compiler.variables import VariablesStage
from energydsl.errors import WHOLE_SPEC, Span, SpecError, SpecWarning, UserError, did_you_mean, one_of
from energydsl.expr.compiler import ExprCompiler, Symbol, Value
from energydsl.lang import spec as S
from energydsl.mechanisms import model_functions

BOOLEANS = {"true": True, "false": False}  # the two bare words a data argument reads as a flag
# the data's sample shape and classes (None: unlabelled), and the shape of its targets (None, or left out:
# no targets), as energydsl.data.describe_source answers
Shape = tuple[int, ...]
DataInfo = tuple[Shape, int | None] | tuple[Shape, int | None, Shape | None]
# names the language or the model's evaluations (EnergyModel.env) give a meaning of their own
BUILT_IN_NAMES = ("I", "eye", "zeros", "ones", "dead", "state", "training", "reference", "batch_size")


def compile_spec(
    spec: S.Spec,
    overrides: Mapping[str, object] | None = None,
    data: S.Call | None = None,
    data_info: DataInfo | None = None,
    *,
    describe_data: Callable[[DataCall], DataInfo] | None = None,
) -> Program:
    """Check ``spec`` and compile it.

    The compiler never reads data: the data's (sample shape, classes[, target shape]) is ``data_info`` or,
    without it, what ``describe_data`` answers for the data call (``data``, or the spec's
    ``data`` line, with its constants evaluated).  A :class:`~energydsl.errors.UserError`
    from ``describe_data`` about the spec's own data line is reported at that line.
    """
    if data_info is None and describe_data is None:
        raise TypeError("compile_spec needs the data's description: data_info or describe_data")
    try:
        program = Compiler(spec, dict(overrides or {}), data, data_info, describe_data).run()
    except SpecError as error:
        raise error.located(spec.path, spec.source) from None
    except RecursionError:
        raise SpecError("an expression is nested too deeply", WHOLE_SPEC, path=spec.path) from None
    program.warnings = tuple(warning.located(spec.path, spec.source) for warning in program.warnings)
    return program


def _described(info: DataInfo) -> tuple[Shape, int | None, Shape | None]:
    """(sample shape, classes, target shape) from a data description, whose target shape may be left out."""
    sample_shape, classes, *rest = info
    target_shape = rest[0] if rest else None
    return tuple(sample_shape), classes, None if target_shape is None else tuple(target_shape)


# ---------------------------------------------------------------- the checker


class Compiler(SchedulesStage, VariablesStage, StructuresStage, ParamsStage, ExpressionsStage, EnergyStage,
               InferenceStage, TrainingStage):
    """One spec's compilation.  Each stage (a mixin in its own module: schedules, variables,
    structures, params, expressions, energy, inference, training) checks and compiles one kind of
    declaration; they share the state set here and in :meth:`run`: ``spec``, ``consts`` (the
    compiler of constant expressions), ``weights`` (of terms' weights, which may read ramped
    constants), ``scope`` (name → symbol, filled as names are declared, through :meth:`_declare`),
    ``schedules`` (the ramps, by constant), ``structures`` and ``nonneg``."""

    def __init__(self, spec: S.Spec, overrides: dict, data: S.Call | None, data_info, describe_data=None):
        self.spec = spec
        self.overrides = overrides
        self.data_node = data
        self.data_info = data_info
        self.describe_data = describe_data
        self.scope: dict[str, Symbol] = {}
        self.declared: dict[str, Span] = {}
        self.consts = ExprCompiler(self.scope, "const")
        self.weights = ExprCompiler(self.scope, "weight")
        self.schedules: dict = {}  # filled with the constants (SchedulesStage)
        self.warnings: list[SpecWarning] = []  # filled by the stages
        self.widths: dict[str, int] = {}  # names bound to the data's width by 'input x[d]'

    def run(self) -> Program:
        spec = self.spec
        self._not_empty()
        constants = self._constants()
        data = self._data()
        sample_shape, data_classes, target_shape = self._data_info(data)
        input_var, normalize = self._input(sample_shape)
        self.normalize = normalize  # what initialisers that read the input's samples apply to them
        target = self._target(target_shape)
        label = self._label(data_classes)
        latent, nonneg = self._latent()
        self.nonneg = nonneg  # what the inference methods' checks need to know of the latent
        self.structures = {decl.name.name: self._structure(decl, latent) for decl in spec.graphs}
        params = [self._param(decl, input_var) for decl in spec.params]
        later_lets = {d.name.name: "lets are computed in the order they are declared" for d in spec.lets}
        model = ExprCompiler(self.scope, "model", model_functions(), later_lets)
        lets = {decl.name.name: self._let(decl, model, latent) for decl in spec.lets}
        pools = self._pools(latent)
        encoder = self._encoder(latent, model)
        terms = self._terms(model, latent, pools, label)
        inference_terms = self._inference_terms(terms)
        chosen = [t for t in terms if inference_terms is None or t.name in inference_terms]
        methods = self._infer(latent, encoder, chosen)
        roles = self._roles(terms, params, input_var, target, latent)
        training = self._training(terms, params, latent, roles, methods)
        return Program(
            spec=spec,
            name=spec.name.name if spec.name else _stem(spec.path),
            constants=constants,
            data=data,
            sample_shape=sample_shape,
            input=input_var,
            normalize=normalize,
            target=target,
            label=label,
            latent=latent,
            nonneg=nonneg,
            params=params,
            structures=self.structures,
            pools=pools,
            lets=lets,
            encoder=encoder,
            sparse_codes=self.sparse_codes,
            terms=terms,
            methods=methods,
            training=training,
            inference_terms=inference_terms,
            roles=roles,
            activity=self._activity(model, latent, training),
            states=tuple(model.states),
            schedules=tuple(self.schedules.values()),
            warnings=tuple(self.warnings),
        )

    def _not_empty(self) -> None:
        spec = self.spec
        if spec.name or spec.data or spec.infer or spec.train or any(
                getattr(spec, field) for field in ("consts", "inputs", "labels", "latents", "params", "graphs",
                                                   "lets", "pools", "encoders", "energy")):
            return
        what = "has only comments and blank lines" if spec.source.strip() else "is empty"
        raise SpecError(f"the spec file {what}", WHOLE_SPEC,
                        hint="a spec needs at least 'data', 'input', 'latent' and 'energy' statements")

    def _roles(self, terms, params, input_var: Variable, target: Variable | None, latent: Variable) -> Roles:
        reconstructed = (target or input_var).name  # a transcoder's reconstruction is of its target
        reconstruction = next((t for t in terms if t.term.role == "reconstruction" and t.first_arg == reconstructed),
                              None)  # fmt: skip
        classifier = next((t for t in terms if t.term.role == "classifier"), None)
        return find_roles(self.spec, terms, reconstruction, classifier, {p.name: p.shape for p in params},
                          input_var.name, math.prod(input_var.shape), latent.name, latent.shape[0], self.consts)  # fmt: skip

    # ------------------------------------------------------------ names

    def _declare(self, ident: S.Ident, symbol: Symbol | None = None) -> None:
        if ident.name in self.declared:
            first = self.declared[ident.name]
            raise SpecError(f"'{ident.name}' is already declared (line {first.line})", ident.span)
        if ident.name in BUILT_IN_NAMES:
            raise SpecError(f"'{ident.name}' is a built-in name", ident.span, hint="choose another name")
        self.declared[ident.name] = ident.span
        if symbol is not None:
            self.scope[ident.name] = symbol

    # ------------------------------------------------------------ constants and data

    def _constants(self) -> dict[str, float]:
        """Each constant's value (declared, or --set); a ramped one is declared as changing, so that
        no other constant reads it, and then reads its schedule (see :mod:`.schedules`)."""
        names = [decl.name.name for decl in self.spec.consts]
        for name in self.overrides:
            if name not in names:
                hint = did_you_mean(name, names) or (one_of(names) if names else "this spec has no constants")
                raise SpecError(f"--set: unknown constant '{name}'", hint=hint)
        ramps = self._ramp_declarations()
        values = {}
        for decl in self.spec.consts:
            name = decl.name.name
            if name in self.overrides:
                value = _override_value(name, self.overrides[name])
            else:
                value = self.consts.constant(decl.value)
            values[name] = value
            fixed = Symbol("const", Value((), const=value), lambda env, v=value: v)
            self._declare(decl.name, self._ramped_symbol(ramps[name]) if name in ramps else fixed)
        self.schedules = self._schedules(ramps, values)
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
            return BOOLEANS.get(node.id, node.id)  # a bare word such as whiten = zca, or nonneg = true
        value = self.consts.constant(node)
        return int(value) if value == int(value) and abs(value) < 2**53 else value

    def _data_info(self, data: DataCall):
        if self.data_info is not None:
            self.data_name = "the data"  # given as tensors: the spec's data line may not describe it
            return _described(self.data_info)
        self.data_name = f"the data {data.text()}"  # messages about the data name its source
        try:
            return _described(self.describe_data(data))
        except SpecError:
            raise
        except UserError as error:  # a DataError: the data line's arguments or files
            if self.data_node is not None:
                raise  # from --data (or data=): no line of the spec to point at
            raise SpecError(str(error), self._data_span) from None

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
