"""Parameters: shapes, initial values, constraints and how they learn."""

from __future__ import annotations


import torch

from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.ops.constraints import DESCRIPTIONS, KERNEL_KINDS, MATRIX_KINDS, NORM_KINDS, SQUARE_KINDS, Constraint, sort_constraints
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.expr.compiler import Closure, ExprCompiler, Symbol, Value
from energydsl.compiler.common import _options
from energydsl.compiler.program import Variable, ParamPlan
from energydsl.compiler.initialisers import _default_init, _initialisers

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
