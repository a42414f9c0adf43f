"""Small helpers shared by the compiler's stages."""

from __future__ import annotations

import math
from pathlib import Path

from energydsl.errors import Span, SpecError, did_you_mean, one_of
from energydsl.expr.compiler import ExprCompiler

_EXAMPLES = {"input": "x[784]", "latent": "z[256]", "label": "y : 10 classes", "encoder": "z = relu(E @ x)"}


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
