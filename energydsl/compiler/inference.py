"""How the latent is inferred, and the checks each method needs."""

from __future__ import annotations

from energydsl.compiler.common import _options
from energydsl.compiler.program import COMMON_OPTIONS, DEFAULT_STEPS, DEFAULT_TOL, Method, Variable
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.lang import spec as S
from energydsl.solvers import SOLVERS
from energydsl.solvers.prox import uncertified
from energydsl.terms import BoundTerm


class InferenceStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _infer(self, latent: Variable, encoder, terms: list[BoundTerm]) -> tuple[Method, ...]:
        decl = self.spec.infer
        if decl is None:
            methods = (Method("encoder"),) if encoder else (Method("fista"),)
        else:
            if decl.target.name != latent.name:
                raise SpecError(f"'{decl.target.name}' is not the latent", decl.target.span,
                                hint=f"infer {latent.name} by ...")  # fmt: skip
            methods = tuple(self._method(m, i, latent) for i, m in enumerate(decl.methods))
        if any(m.solver.runs_encoder for m in methods) and encoder is None:
            span = next(m.span for m in methods if m.solver.runs_encoder) if decl else None
            raise SpecError("inference by encoder, but the spec declares no encoder", span,
                            hint=f"add 'encoder {latent.name} = ...'")  # fmt: skip
        for method in methods:
            method.solver.check(terms, latent, self.nonneg, method.span)
        for node, method in zip(decl.methods if decl else (), methods):
            if method.gap > 0:
                self._check_certified(node, terms, latent)
        return methods

    def _check_certified(self, node: S.MethodDecl, terms: list[BoundTerm], latent: Variable) -> None:
        """``fista(gap = ...)`` needs a duality gap for the energy inference minimises (without a label)."""
        chosen = self._inference_terms(terms)
        active = [t for t in terms if t.degree > 0 and not t.term.needs_label and (chosen is None or t.name in chosen)]
        reason = uncertified([t for t in active if t.term.smooth], [t for t in active if not t.term.smooth],
                             latent.name)  # fmt: skip
        if reason is not None:
            span = next(kw.span for kw in node.kwargs if kw.name == "gap")
            raise SpecError(f"no duality gap to stop on: {reason}", span, hint="stop on tol = ... instead")

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
        if all(m.name.name in SOLVERS and SOLVERS[m.name.name].runs_encoder for m in decl.methods):
            raise SpecError("'terms' chooses what FISTA minimises, but inference is by the encoder alone",
                            decl.terms[0].span, hint="remove it, or infer by fista(...)")  # fmt: skip
        chosen = {ident.name for ident in decl.terms}
        return tuple(name for name in names if name in chosen)

    def _method(self, node: S.MethodDecl, position: int, latent: Variable) -> Method:
        kind = node.name.name
        if kind not in SOLVERS:
            raise SpecError(f"unknown inference method '{kind}'", node.name.span,
                            hint=did_you_mean(kind, SOLVERS) or one_of(SOLVERS))  # fmt: skip
        solver = SOLVERS[kind]
        previous = self.spec.infer.methods[position - 1].name.name if position > 0 else None
        solver.check_place(node, position, previous)
        if not solver.options:
            return Method(kind, span=node.span)
        options, spans = _options(self.consts, node, solver.options, kind)
        own = {name: value for name, value in options.items() if name not in COMMON_OPTIONS}
        solver.check_options(own, spans, latent, node.span)
        steps = options.get("steps", DEFAULT_STEPS)
        if steps != int(steps) or steps < 1:
            raise SpecError(f"steps must be a whole number >= 1, got {steps:g}", spans["steps"])
        tol = options.get("tol", DEFAULT_TOL)
        if tol < 0:
            raise SpecError(f"tol must be >= 0, got {tol:g}", spans["tol"])
        gap = options.get("gap", 0.0)
        if "gap" in options and not 0 < gap < 1:
            raise SpecError(f"gap is a relative duality gap, above 0 and below 1, got {gap:g}", spans["gap"])
        if "gap" in options and "tol" in options:
            raise SpecError("give tol or gap, not both: gap stops on the certified distance to the optimum, "
                            "tol on the step", spans["tol"])  # fmt: skip
        return Method(kind, int(steps), tol, node.span, tuple(options.items()), gap)
