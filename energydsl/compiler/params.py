"""Parameters: shapes, initial values, constraints and how they learn."""

from __future__ import annotations

from energydsl.compiler.common import _options
from energydsl.compiler.initialisers import InitTarget, _default_init, init_functions
from energydsl.compiler.program import ParamPlan, Variable
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.expr.compiler import Closure, ExprCompiler, Symbol, Value
from energydsl.lang import spec as S
from energydsl.ops.constraints import CONSTRAINTS, Constraint, sort_constraints

LEARN_MODES = ("descent", "ascent", "fixed")
# learning-rate schedules over a phase: the optimizer's rates times a factor of the epoch




class ParamsStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _param(self, decl: S.ParamDecl, input_var: Variable) -> ParamPlan:
        name = decl.name.name
        shape = self._shape(decl.shape)
        init_scope = {k: s for k, s in self.scope.items() if s.role in ("const", "param")}
        unavailable = {k: "an initial value may use constants, earlier parameters and samples(x)"
                       for k in self.scope if k not in init_scope}  # fmt: skip
        later = [p.name.name for p in self.spec.params if p.name.name not in self.scope and p.name.name != name]
        unavailable.update({k: "parameters are initialised in the order they are declared" for k in later})
        unavailable[name] = "a parameter cannot be initialised from itself"
        initialisers = init_functions(InitTarget(shape, input_var, self.structure_argument, self.normalize))
        compiler = ExprCompiler(init_scope, "init", initialisers, unavailable)
        init = self._init(decl, shape, compiler)
        constraints, masks = self._constraints(decl, shape, compiler)
        learn, lr = self._learn(decl)
        lr_scale = 1.0 if decl.lr_scale is None else self.consts.positive(decl.lr_scale, "lr_scale")
        self._declare(decl.name, Symbol("param", Value(shape), lambda env, n=name: env[n]))
        return ParamPlan(name, shape, init, learn, lr, lr_scale, constraints, masks, decl.span)

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
            entry = CONSTRAINTS.get(node.kind)
            if entry is None:
                raise SpecError(f"unknown constraint '{node.kind}'", node.kind_span,
                                hint=did_you_mean(node.kind, CONSTRAINTS.names()) or one_of(CONSTRAINTS.names()))  # fmt: skip
            if node.kind in seen:
                raise SpecError(f"constraint '{node.kind}' is given twice", node.kind_span)
            seen.add(node.kind)
            entry.check_shape(shape, node.kind_span)
            if entry.takes == "mask":
                masks.append(self._mask(node, shape, compiler))
                constraints.append(Constraint(node.kind))
            elif entry.takes == "bound":
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
