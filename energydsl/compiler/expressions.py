"""Lets, pools and the encoder: the expressions of the model."""

from __future__ import annotations



from energydsl.lang import spec as S
from energydsl.ops import structures as st
from energydsl.errors import Span, SpecError
from energydsl.expr.compiler import Closure, Env, ExprCompiler, Symbol, Value
from energydsl.ops.pools import FAMILY_BUILDERS, PoolFamily, blocks, family_from_list, maps, pool_from_ranges, unknown_builder
from energydsl.compiler.program import Variable




class ExpressionsStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

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
