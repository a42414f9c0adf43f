"""What every inference method is: the :class:`Solver` entry, the registry, and what it may ask of a batch.

``infer z by fista(steps = 200, tol = 1e-4)`` names a registered solver.  Its entry
carries everything the rest of the system asks of it: the options it takes, where it may
stand in an ``a then b`` chain, its spec-level checks (with their one-line errors), how
it solves a batch, the memory it adds beyond one step, and its line in the reference.
Solvers reach the energy only through :class:`Batch` and the terms' prox interface.

A solver's options are ``steps`` and ``tol``, which the compiler checks and every caller
may override (``model.infer(x, steps=...)``), and its own (``omp(k = 32)``): those it
checks itself (:meth:`Solver.check_options`), and :meth:`Solver.solve` and
:meth:`Solver.memory` receive them as keywords, as the spec wrote them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from energydsl.errors import SpecError
from energydsl.registry import Registry
from energydsl.solvers.problem import Problem

SOLVERS: Registry[Solver] = Registry("inference method", "energydsl.solvers")


@dataclass(frozen=True)
class Convergence:
    """How an iterative method ended on each sample of a batch: whether it stopped at its
    step cap before its tolerance, and the last relative step it measured there."""

    method: str  # as the user knows it: "fista", "ista", "fista (by ADMM)"
    capped: torch.Tensor  # (B,) bool: ran all ``steps`` iterations without reaching ``tol``
    step: torch.Tensor  # (B,) the last relative step measured (ADMM: the larger relative residual; "gap": the gap)
    steps: int
    tol: float
    criterion: str = "tol"  # "gap": stopped on the relative duality gap (``fista(gap = ...)``), ``tol`` its target

    @property
    def count(self) -> int:
        """How many samples stopped at the cap."""
        return int(self.capped.sum())

    def warning(self) -> str | None:
        """The one-line warning for the capped samples, or None when there are none."""
        count, total = self.count, self.capped.numel()
        if count == 0:
            return None
        worst = float(self.step[self.capped].max())
        measure = "gap" if self.criterion == "gap" else "residual" if "ADMM" in self.method else "step"
        return (f"{self.method} stopped at its {self.steps}-step cap on {count} of {total} samples "
                f"({count / total:.1%}) before reaching {self.criterion} {self.tol:g} (worst relative {measure} "
                f"{worst:.2g}); raise 'steps' in the spec's infer line or pass steps= to infer")


@dataclass(frozen=True)
class Batch:
    """One batch's inference, as the model offers it to a solver."""

    encode: Callable[[], torch.Tensor]  # the encoder's code (keeping its graph when training through it)
    problem: Callable[[], Problem]  # min_z of the active terms' energy, parameters frozen
    zeros: Callable[[], torch.Tensor]  # a code of zeros, (B, m)
    steps: int | None = None  # the caller's overrides of an iterative method's options
    tol: float | None = None
    gap: float = 0.0  # the method's target relative duality gap (0: none; stop on tol), override included
    reports: list[Convergence] = field(default_factory=list)  # how each iterative method ended

    def report(self, convergence: Convergence) -> None:
        """Record how an iterative method ended on the batch (the model warns of capped samples)."""
        self.reports.append(convergence)

    def start(self, z: torch.Tensor | None) -> torch.Tensor:
        """Where an iterative method starts: the previous method's code, or zeros."""
        return z.detach() if z is not None else self.zeros()


class Solver:
    """One inference method.  Subclasses set the class attributes and :meth:`solve`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line for the language reference
    options: ClassVar[tuple[str, ...]] = ("steps", "tol")  # what ``name(...)`` accepts (see the module docstring)
    uses_prox: ClassVar[bool] = False  # proximal steps through the terms' prox (the memory estimate, explain)
    runs_encoder: ClassVar[bool] = False  # the spec's encoder: training backpropagates through its code
    exact: ClassVar[bool] = False  # the optimum in finitely many steps (the lasso homotopy)
    # solves from the Gram matrix H and the linear part c read off the energy, H kept across batches while the
    # parameters are unchanged (lars, omp): explain asks it how it treats each term, and counts that setup only
    gram: ClassVar[bool] = False
    summary: ClassVar[str] = ""  # what one step does, for ``energydsl explain``

    def check_place(self, node, position: int, previous: str | None) -> None:
        """Raise :class:`SpecError` where the method cannot stand ``position``-th, after ``previous``."""
        if position > 0 and (position != 1 or previous != "encoder"):
            raise SpecError("only the encoder can be followed by 'then'", node.span,
                            hint="write 'by fista(...)' or 'by encoder then fista(...)'")  # fmt: skip

    def check_options(self, options: dict[str, float], spans: dict, latent, span) -> None:
        """Raise :class:`SpecError` where the method's options as written (``spans`` says where
        each was, ``span`` where the method was) do not suit it or the latent (a ``Variable``).
        The compiler checks ``steps`` and ``tol`` itself; a method with options of its own
        checks them here, a required one included."""

    def check(self, terms, latent, nonneg: bool, span) -> None:
        """Raise :class:`SpecError` where the energy's terms (``BoundTerm``) or the latent (a
        ``Variable``, bounded below by 0 when ``nonneg``) do not suit the method."""

    def solve(self, batch: Batch, z: torch.Tensor | None, steps: int, tol: float, **options) -> torch.Tensor:
        """The code for the batch, from the previous method's code ``z`` (None: nothing before);
        ``options``: the method's own, as written.  An iterative method also gives
        :meth:`Batch.report` its :class:`Convergence`."""
        raise NotImplementedError  # every registered solver defines it

    def memory(self, units: int, size: int, **options) -> dict[str, int]:
        """Bytes the method holds beyond one step's tensors, by part of the memory estimate."""
        return {}

    def explain_term(self, term, latent: str) -> str:
        """How a method with ``gram`` treats one term (``BoundTerm``) that depends on the latent,
        for ``energydsl explain`` (a label-only term's note is added after)."""
        return ""

    def explain(self, latent: str, terms, nonneg: bool, options: dict[str, float]) -> list[str]:
        """Paragraphs on how a method with ``gram`` runs, for ``energydsl explain``: ``terms`` are
        the energy's terms that depend on the latent, ``options`` the method's own."""
        return []
