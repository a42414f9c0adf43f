"""Lets, pools and the encoder: the expressions of the model."""

from __future__ import annotations

from energydsl.compiler.pools import POOL_FAMILIES, family_from_list, pool_from_ranges, unknown_builder
from energydsl.compiler.program import Variable
from energydsl.errors import Span, SpecError
from energydsl.expr.compiler import Closure, Env, ExprCompiler, Symbol, Value
from energydsl.expr.syntax import names_read
from energydsl.lang import spec as S
from energydsl.ops.pools import PoolFamily


class ExpressionsStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _let(self, decl: S.LetDecl, model: ExprCompiler, latent: Variable) -> Closure:
        if isinstance(decl.value, S.Recurrent):  # a recurrence over the latent's state, from zero (LISTA)
            value, fn = self._recurrence(decl.value, latent, model)
        else:
            value, fn = model.compile(decl.value)
        key = "let:" + decl.name.name
        compute = fn if value.degree else (lambda env: env.latent_free(key, fn))  # degree 0: no latent in it

        def cached(env: Env):
            if key not in env.cache:
                env.cache[key] = compute(env)
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
        if not isinstance(node, S.Call) or node.func not in POOL_FAMILIES:
            if isinstance(node, S.Call):
                raise unknown_builder(node)
            raise SpecError("expected a pool family such as blocks(z, 4) or [a, b]", node.span)
        entry = POOL_FAMILIES[node.func]
        slots = self.consts.arguments(node, len(entry.arguments), entry.arguments)
        self.consts.required(node, slots, entry.required)
        return entry.build(self, name, node, slots, latent)

    def _encoder(self, latent: Variable, model: ExprCompiler) -> Closure | None:
        """The encoder's closure; sets ``self.sparse_codes`` when it returns sparse codes."""
        self.sparse_codes = False
        decl = self._only(self.spec.encoders, "encoder", False)
        if decl is None:
            return None
        if decl.target.name != latent.name:
            raise SpecError(f"an encoder computes the latent '{latent.name}', not '{decl.target.name}'",
                            decl.target.span)  # fmt: skip
        hidden = self._target_readers()
        visible = {name: symbol for name, symbol in self.scope.items() if name not in hidden}
        model = model.with_scope(visible, {**model.unavailable, **hidden})
        if isinstance(decl.value, S.Recurrent):
            value, fn = self._recurrence(decl.value, latent, model)
        else:
            without_latent = {k: s for k, s in model.scope.items() if k != latent.name}
            reason = "a plain encoder cannot read the latent it computes; write recurrent(T) { ... } to iterate"
            value, fn = model.with_scope(without_latent, {**model.unavailable, latent.name: reason}).compile(decl.value)
            self._check_latent_shaped(value, latent, decl.value.span, "the encoder")
            self.sparse_codes = value.sparse
        if latent.layout is not None:  # code maps are stored flat, as inference keeps them
            return lambda env: fn(env).flatten(1)
        return fn

    def _target_readers(self) -> dict[str, str]:
        """A transcoder's target and the lets that read it (through other lets too), each with why an
        encoder may not read it: the code comes from the input alone, the target is what it explains."""
        target = next((decl.name.name for decl in self.spec.targets), None)
        if target is None:
            return {}
        readers = {target: f"the encoder computes the code from the input alone; '{target}' is the target, "
                           "which the energy reconstructs from the code"}  # fmt: skip
        for decl in self.spec.lets:
            through = sorted(names_read(decl.value) & readers.keys() - {target})
            if target in names_read(decl.value) or through:
                how = f" through the let '{through[0]}'" if target not in names_read(decl.value) else ""
                readers[decl.name.name] = f"the let '{decl.name.name}' reads the target '{target}'{how}, and the " \
                                          "encoder computes the code from the input alone"  # fmt: skip
        return readers

    def _recurrence(self, node: S.Recurrent, latent: Variable, model: ExprCompiler) -> tuple[Value, Closure]:
        """``recurrent(T) { body }``: inside the body the latent's name is the previous state."""
        value, fn = model.recurrent(node, latent.name, self.scope[latent.name].value)
        self._check_latent_shaped(value, latent, node.span, "the recurrence")
        return value, fn

    def _check_latent_shaped(self, value: Value, latent: Variable, span: Span, what: str) -> None:
        if value.shape != self.scope[latent.name].value.shape or not value.batched:
            raise SpecError(f"{what} gives {value.describe()}, but '{latent.name}' is "
                            f"{self.scope[latent.name].value.describe()}", span)  # fmt: skip
