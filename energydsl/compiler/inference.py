"""How the latent is inferred, and the checks each method needs."""

from __future__ import annotations



from energydsl.lang import spec as S
from energydsl.errors import Span, SpecError, did_you_mean, one_of
from energydsl.compiler.common import _options
from energydsl.terms import BoundTerm
from energydsl.compiler.program import Variable, Method
from energydsl.compiler.program import DEFAULT_STEPS, DEFAULT_TOL

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



def _check_proximable(terms: list[BoundTerm], latent: Variable, methods) -> None:
    """FISTA needs the exact prox of the sum of the nonsmooth terms in z."""
    groups = []
    for term in terms:
        if term.term.smooth or term.degree == 0:
            continue
        if term.first_arg != latent.name:
            raise SpecError(f"term '{term.name}' is nonsmooth in '{latent.name}' and FISTA has no prox for it",
                            term.span, hint=f"apply it to '{latent.name}' itself, or infer by encoder")  # fmt: skip
        if term.term.prox_kind == "group":
            groups.append(term)
        if not term.term.convex and any(m.kind == "fista" for m in methods):
            raise SpecError("inhibition makes the energy nonconvex, where FISTA's momentum can climb",
                            term.span, hint="infer by ista(...), whose steps always decrease the energy")  # fmt: skip
    if len(groups) > 1:
        raise SpecError("FISTA composes the prox of one group term only", groups[1].span)


def _check_lasso(terms: list[BoundTerm], latent: Variable, span: Span | None) -> None:
    """lars solves ½zHzᵀ + c·z + λ‖z‖₁ (+ z ≥ 0): quadratic smooth terms, l1 terms of the latent."""
    from energydsl.solvers.stepsize import DENSE_GRAM_MAX_UNITS  # stepsize imports infer, which imports this module
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
            if not term.term.lasso or term.first_arg != latent.name:
                raise SpecError(f"lars solves l1 penalties of '{latent.name}' only, not '{term.name}'",
                                term.span, hint="infer by fista(...)")  # fmt: skip
            l1_terms += 1
    if l1_terms == 0:
        raise SpecError(f"lars follows the lasso path down to the l1 weight, but no term is l1({latent.name})",
                        span, hint="infer by fista(...)")  # fmt: skip
