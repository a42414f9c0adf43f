"""What a sparsity mechanism is: a function of the model's expressions with its own forward rule,
gradient and (where it needs one) state, and the registry :data:`MECHANISMS`.

Encoders of modern sparse auto-encoders differ mostly in the nonlinearity that makes the code
sparse (``topk``, ``batchtopk``, ``jumprelu``, ...).  Each is one module here, registered in
``__init__``; the compiler offers every registered mechanism to the model's expressions
(encoders, lets, the arguments of energy terms), never to constants or initialisers.
"""

from __future__ import annotations

from typing import ClassVar

from energydsl.expr.compiler import Closure, ExprCompiler, Value
from energydsl.lang import spec as S
from energydsl.registry import Registry


class Mechanism:
    """A function a spec calls in a model expression; its docstring is its reference entry.

    A new one is a subclass with ``name``, ``signature`` and :meth:`compile`, and one
    ``MECHANISMS.register`` line (or an entry point in the ``energydsl.mechanisms`` group).
    """

    name: ClassVar[str]
    signature: ClassVar[str]  # as the reference shows it: "topk(v, k)"
    # the code it gives is cut to a few units (an L0 constraint no convex energy states): the optimal
    # codes an encoder is measured against are then a pursuit's, not certified (reporting/amortisation.py)
    l0: ClassVar[bool] = False

    @classmethod
    def compile(cls, compiler: ExprCompiler, node: S.Call) -> tuple[Value, Closure]:
        """Check the call ``node`` (its arguments through ``compiler.arguments`` and ``compiler.compile``)
        and return the value's static type and the closure that computes it.  A mechanism that keeps
        state declares it with ``compiler.declare_state`` and reads it as ``env["state"][name]``."""
        raise NotImplementedError


MECHANISMS: Registry[type[Mechanism]] = Registry("function", "energydsl.mechanisms")


def model_functions() -> dict:
    """The registered mechanisms as the expression compiler's extra functions."""
    return {name: entry.compile for name, entry in MECHANISMS.items()}
