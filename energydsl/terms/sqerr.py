"""The energy term ``sqerr``: squared error ‖a − b‖², summed over each sample."""

from __future__ import annotations

from energydsl.errors import SpecError
from energydsl.terms.base import Term, _per_sample_sum


class sqerr(Term):
    """Squared error ‖a − b‖², summed over each sample.

    Reconstruction is ``0.5 * sqerr(x, W @ z)``; code prediction (PSD) is
    ``alpha * sqerr(z, G * tanh(W @ x + d))``.
    """

    name = "sqerr"
    formula = "‖{a} − {b}‖²"
    arguments = ("a", "b")
    kinds = ("value", "value")
    role = "reconstruction"
    squares = True

    def check(self, values, node):
        a, b = values
        if a.shape != b.shape:
            raise SpecError(f"sqerr() compares {a.describe()} with {b.describe()}: the shapes differ", node.span)
        if not (a.batched or b.batched):
            raise SpecError("sqerr() needs a per-sample value (an input, the latent, or an expression of them)",
                            node.span)  # fmt: skip

    def is_quadratic(self, values):
        return all(v.degree <= 1 for v in values)

    def energy(self, a, b):
        return _per_sample_sum((a - b) ** 2)

    def reconstruction(self, a, b):
        return a, b
