"""The energy: named, weighted terms from the registry."""

from __future__ import annotations

from energydsl.compiler.program import BoundTerm, Variable
from energydsl.errors import WHOLE_SPEC, SpecError, SpecWarning, did_you_mean, one_of
from energydsl.expr.compiler import Closure, ExprCompiler
from energydsl.expr.functions import FUNCTIONS
from energydsl.lang import spec as S
from energydsl.ops.pools import PoolFamily
from energydsl.ops.structures import TREE_KINDS
from energydsl.terms import TERMS, VaryingWeight


class EnergyStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _terms(self, model: ExprCompiler, latent: Variable, pools, label) -> list[BoundTerm]:
        if not self.spec.energy:
            raise SpecError("the spec has no energy block", WHOLE_SPEC,
                            hint="add 'energy' followed by terms such as 'recon : 0.5 * sqerr(x, W @ z)'")  # fmt: skip
        terms, seen = [], {}
        self._pooled: list = []  # (pool family, its argument, the term's function) of every group term
        for decl in self.spec.energy:
            if decl.name.name in seen:
                raise SpecError(f"term '{decl.name.name}' is already defined (line {seen[decl.name.name]})",
                                decl.name.span)  # fmt: skip
            seen[decl.name.name] = decl.span.line
            terms.append(self._term(decl, model, latent, pools, label))
        if not any(t.term.prox_kind == "separable" and t.first_arg == latent.name for t in terms):
            for family, node, func in self._pooled:  # with an l1 term, units outside the pools are still penalised
                self._warn_unpooled(family, node, latent, func)
        return terms

    def _term(self, decl: S.TermDecl, model: ExprCompiler, latent, pools, label) -> BoundTerm:
        weight, varying, call = self._split_weight(decl.value)
        cls = TERMS[call.func]
        options = self._term_options(cls, call)
        arguments = call.model_copy(update={"kwargs": tuple(kw for kw in call.kwargs if kw.name not in options)})
        slots = model.arguments(arguments, len(cls.arguments), cls.arguments)
        model.required(call, slots, len(cls.arguments))
        static, values, closures = {"units": latent.shape[0], **options}, [], []
        for kind, node in zip(cls.kinds, slots):
            if kind == "pools":
                static["pools"] = self._pool_argument(node, pools)
                self._pooled.append((static["pools"], node, call.func))
            elif kind == "structure":
                static["structure"] = self.structure_argument(node, f"{call.func}()", TREE_KINDS)
            elif kind == "label":
                closures.append(self._label_argument(node, label))
                static["classes"] = label.shape[0]
            else:
                value, fn = model.compile(node)
                values.append(value)
                # an "affine" argument that is a per-sample W @ u + c reaches the term unevaluated
                closures.append(value.affine if kind == "affine" and value.affine is not None else fn)
        term = cls(static)
        term.check(values, call)
        degree = max((v.degree for v in values), default=0)
        first_arg = slots[0].id if isinstance(slots[0], S.Name) else None
        unit_weights = self._unit_weights(slots[0], latent, model) if cls.lasso and first_arg is None else None
        if unit_weights is not None:
            first_arg = latent.name
        self._check_weight_sign(decl.name.name, weight, varying, decl.value.span)
        return BoundTerm(decl.name.name, term, weight, tuple(closures), degree,
                         term.is_quadratic(values), first_arg, decl.span, varying, unit_weights)  # fmt: skip

    @staticmethod
    def _unit_weights(node, latent, model: ExprCompiler):
        """For ``l1(z * w)`` or ``l1(w * z)``, w free of the latent and one value per unit (or one for all,
        e.g. ``col_norm(D)``): the closure of w, so that the l1 norm is a per-unit threshold |wᵢ| on z
        itself (FISTA's prox, the certificate); else None."""
        if not (isinstance(node, S.BinOp) and node.op == "*"):
            return None
        for this, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(this, S.Name) and this.id == latent.name:
                value, fn = model.compile(other)
                if value.degree == 0 and not value.batched and (value.is_scalar or value.shape == latent.shape):
                    return fn
        return None

    def _term_options(self, cls, call: S.Call) -> dict:
        """The term's keyword options (:class:`~energydsl.terms.base.Option`), each evaluated as a
        constant and checked against its kind; defaults for those not written."""
        if not cls.options:
            return {}  # unknown keywords are reported with the arguments
        names = tuple(cls.arguments) + tuple(cls.options)
        if len(call.args) > len(cls.arguments):
            raise SpecError(f"{call.func}() takes {len(cls.arguments)} argument(s), got {len(call.args)}",
                            call.args[len(cls.arguments)].span,
                            hint=f"options are written by name: {', '.join(f'{o} = ...' for o in cls.options)}")  # fmt: skip
        written: dict[str, S.Expr] = {}
        for kw in call.kwargs:
            if kw.name not in names:
                raise SpecError(f"{call.func}() has no argument or option '{kw.name}'", kw.span,
                                hint=did_you_mean(kw.name, names) or one_of(names))  # fmt: skip
            if kw.name in written:
                raise SpecError(f"{call.func}() got '{kw.name}' twice", kw.span)
            if kw.name in cls.options:
                written[kw.name] = kw.value
        values = {}
        for name, option in cls.options.items():
            if name in written:
                values[name] = self._option_value(f"{call.func}()'s option '{name}'", option, written[name])
            elif option.required:
                raise SpecError(f"{call.func}() needs the option '{name}'", call.span,
                                hint=f"write it by name after the arguments: {name} = ...")  # fmt: skip
            else:
                values[name] = option.default
        return values

    def _option_value(self, what: str, option, node: S.Expr):
        if option.kind != "wholes":
            return self._option_number(what, option, node, whole=option.kind == "whole")
        if not isinstance(node, S.ListExpr) or not node.items:
            raise SpecError(f"{what} is a list of whole numbers, such as [64, 256]", node.span)
        return tuple(self._option_number(what, option, item, whole=True) for item in node.items)

    def _option_number(self, what: str, option, node: S.Expr, whole: bool) -> float | int:
        value, _ = self.consts.compile(node)
        if value.const is None:
            raise SpecError(f"{what} must be a compile-time constant (a number or a const)", node.span)
        number = self.consts.constant(node)
        if whole and number != int(number):
            raise SpecError(f"{what} must be a whole number, got {number:g}", node.span)
        if option.positive and number <= 0:
            raise SpecError(f"{what} must be positive, got {number:g}", node.span)
        return int(number) if whole else number

    def _split_weight(self, node: S.Expr) -> tuple[float, VaryingWeight | None, S.Call]:
        """``lam * 0.5 * l1(z)`` → (0.5·lam, None, the l1 call); when a ramp moves ``lam``,
        (0.5, lam's changing factor, the l1 call)."""
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
        weight, varying = 1.0, []
        for factor, divides in factors:
            if factor is calls[0]:
                continue
            value, fn = self.weights.compile(factor)
            if value.const is None:  # constants a ramp moves, or a mistake that _varying_weight reports
                varying.append((factor, fn, divides))
                continue
            value = self.weights.constant(factor)
            if divides and value == 0:
                raise SpecError("division by zero", factor.span)
            weight = weight / value if divides else weight * value
        return weight, self._varying_weight(varying), calls[0]

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

    def _warn_unpooled(self, family: PoolFamily, node: S.Expr, latent: Variable, term: str) -> None:
        """A warning when some units of the latent are in no pool of ``family`` (and no
        separable term such as l1 penalises every unit): a group term over it leaves them
        unpenalised, which is rarely meant."""
        covered = set().union(*map(set, family.members)) if family.members else set()
        left = [unit for unit in range(family.size) if unit not in covered]
        if not left:
            return
        ranges = _ranges(left)
        shown = ", ".join(ranges[:4]) + (f", ... ({len(left)} units)" if len(ranges) > 4 else "")
        noun = "unit" if len(left) == 1 else "units"
        verb = "is" if len(left) == 1 else "are"
        self.warnings.append(SpecWarning(
            f"{noun} {shown} of '{latent.name}' {verb} in no pool of '{family.name}': {term} leaves "
            f"{'it' if len(left) == 1 else 'them'} unpenalised", node.span,
            hint=f"add {'it' if len(left) == 1 else 'them'} to a pool, or an l1 term on '{latent.name}'"))

    def _label_argument(self, node: S.Expr, label: Variable | None) -> Closure:
        if label is None:
            raise SpecError("this term needs a label, and the spec declares none", node.span,
                            hint="add a line such as 'label y : 10 classes'")  # fmt: skip
        if not isinstance(node, S.Name) or node.id != label.name:
            raise SpecError(f"expected the label '{label.name}' here", node.span)
        return lambda env, n=label.name: env[n]


def _ranges(units: list[int]) -> list[str]:
    """[1, 2, 3, 7, 9, 10] → ['1-3', '7', '9-10'] (sorted, distinct units)."""
    spans = [[units[0], units[0]]]
    for unit in units[1:]:
        if unit == spans[-1][1] + 1:
            spans[-1][1] = unit
        else:
            spans.append([unit, unit])
    return [str(a) if a == b else f"{a}-{b}" for a, b in spans]
