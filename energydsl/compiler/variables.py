"""The input, label and latent variables."""

from __future__ import annotations

import math

from energydsl.compiler.common import _join
from energydsl.compiler.program import Variable
from energydsl.errors import SpecError, one_of
from energydsl.expr.compiler import Symbol, Value
from energydsl.lang import spec as S
from energydsl.ops import structures as st

NORMALIZATIONS = ("l2",)




class VariablesStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _input(self, sample_shape) -> tuple[Variable, str | None]:
        decl = self._only(self.spec.inputs, "input", True)
        shape = self._observed_shape(decl, sample_shape, "input", "samples")
        normalize = None
        if decl.normalize is not None:
            normalize = decl.normalize.name
            if normalize not in NORMALIZATIONS:
                raise SpecError(f"unknown normalisation '{normalize}'", decl.normalize.span,
                                hint=one_of(NORMALIZATIONS))  # fmt: skip
        variable = Variable(decl.name.name, shape, decl.name.span)
        self._declare(decl.name, Symbol("input", Value(shape, batched=True), lambda env, n=variable.name: env[n]))
        return variable, normalize

    def _observed_shape(self, decl, data_shape: tuple[int, ...], keyword: str, what: str) -> tuple[int, ...]:
        """The shape of an ``input`` or ``target`` declaration, checked against the data's (``what``: the
        data's name for them); a bare new name as its only dimension binds to the data's width."""
        if decl.shape is not None and self._binds_width(decl.shape):
            self._declare_width(decl.shape[0], data_shape)
        shape = data_shape if decl.shape is None else self._shape(decl.shape)
        if math.prod(shape) != math.prod(data_shape):
            dims = ", ".join(map(str, data_shape))
            span = _join(decl.shape[0].span, decl.shape[-1].span)
            raise SpecError(f"{keyword} '{decl.name.name}' has {math.prod(shape)} values per sample, but "
                            f"{self.data_name} gives {what} of shape [{dims}]", span,
                            hint=f"write '{keyword} {decl.name.name}' to take the shape from the data")  # fmt: skip
        return shape

    def _target(self, target_shape: tuple[int, ...] | None) -> Variable | None:
        """``target y[e]``: a transcoder's target, read by lets and terms like the input (never by the
        encoder), as the data give it (no normalisation).  Data with targets and a spec without this
        statement: the targets are ignored, the spec models the inputs alone."""
        decl = self._only(self.spec.targets, "target", False)
        if decl is None:
            return None
        name = decl.name.name
        if target_shape is None:
            raise SpecError(f"target '{name}' is declared, but {self.data_name} gives no targets", decl.span,
                            hint="give paired data, e.g. file(\"pairs.npz\", target = \"y\") or "
                                 "features(..., target_dim = 32)")  # fmt: skip
        shape = self._observed_shape(decl, target_shape, "target", "targets")
        variable = Variable(name, shape, decl.name.span)
        self._declare(decl.name, Symbol("target", Value(shape, batched=True), lambda env, n=name: env[n]))
        return variable

    def _binds_width(self, dims) -> bool:
        """``input x[d]`` with ``d`` a new name: d is the data's width (a flat input), so that
        parameters can be shaped by it (``param D[d, units]``) whatever data the spec is run on."""
        return len(dims) == 1 and isinstance(dims[0], S.Name) and dims[0].id not in self.scope

    def _declare_width(self, node: S.Name, sample_shape) -> None:
        width = math.prod(sample_shape)
        self._declare(S.Ident(name=node.id, span=node.span),
                      Symbol("const", Value((), const=float(width)), lambda env, v=float(width): v))  # fmt: skip
        self.widths[node.id] = width

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
