"""What every optimizer is: the :class:`Optimizer` entry, and the registry.

A spec writes ``optimizer NAME(OPTIONS)`` in its train block; NAME is the key of an
entry in :data:`OPTIMIZERS`, and the entry carries everything the rest of the system
asks of that optimizer: its options and their defaults, its default learning rate
(or none), its line in the reference docs, its spec-level checks, how to build the
torch optimizer, the state it keeps (for the memory estimate) and its line in
``energydsl explain``.  Entries are instances; the DSL word, the registry key and
``Optimizer.name`` are the same string.  This layer knows nothing of the compiler:
what a check needs from the spec is handed to it as plain data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from energydsl.errors import Span, SpecError
from energydsl.registry import Registry

# project(D, j): column j of the matrix D onto its parameter's constraints, in place
ColumnProjection = Callable[[torch.Tensor, int], None]


class Optimizer:
    """One optimizer of the language.  Subclasses set the class attributes and :meth:`make`."""

    name: ClassVar[str]
    # option → default, in the order the reference shows them; "lr" is there exactly when the
    # optimizer has a learning rate, and its value is the default learning rate
    options: ClassVar[dict[str, float | bool]]
    unit_options: ClassVar[tuple[str, ...]] = ()  # options that must lie in [0, 1); the others are >= 0
    description: ClassVar[str]  # for the language reference: one sentence, no final period

    # ------------------------------------------------------------ what the compiler asks

    @property
    def has_lr(self) -> bool:
        """Whether the optimizer has a learning rate (to set, to scale per phase, to schedule)."""
        return "lr" in self.options

    @property
    def default_lr(self) -> float | None:
        return self.options.get("lr")

    def check_options(self, values: dict, spans: dict[str, Span]) -> dict:
        """The spec's option values (``lr`` taken out), checked; returns them as the optimizer takes them."""
        for key, value in values.items():
            if value < 0 or (key in self.unit_options and value >= 1):
                limit = "in [0, 1)" if key in self.unit_options else ">= 0"
                raise SpecError(f"{key} must be {limit}, got {value:g}", spans[key])
        return {k: bool(v) if isinstance(self.options[k], bool) else v for k, v in values.items()}

    def check_parameters(self, plans: Sequence, decoders: dict[str, list[str]], latent: str,
                         span: Span) -> tuple[tuple[str, str], ...]:  # fmt: skip
        """Refuse the parameters the optimizer cannot learn; returns the (parameter, term) pairs it
        needs at training time (none for a gradient optimizer).

        ``plans``: the compiler's parameter plans (``name``, ``shape``, ``learn``, ``constraints``
        with their ``kind``, ``span``); ``decoders``: for each parameter D, the energy terms of the
        form ``sqerr(target, D @ latent)``; ``span``: where the optimizer is named."""
        return ()

    # ------------------------------------------------------------ training

    def make(self, groups: list[dict], options: dict, lr: float, maximize: bool,
             column_projection: Callable[[torch.Tensor], ColumnProjection]) -> torch.optim.Optimizer:  # fmt: skip
        """The torch optimizer for one direction: ``groups`` are torch parameter groups (one per
        parameter, with its ``lr`` and ``base_lr``), ``options`` the spec's checked options, ``lr``
        the spec's learning rate; ``column_projection(D)`` gives D's per-column projection."""
        raise NotImplementedError

    # ------------------------------------------------------------ reporting

    def state_values(self, shapes: Sequence[tuple[int, ...]], options: dict) -> int:
        """Values the optimizer keeps for learned parameters of these shapes (memory estimate)."""
        return 0

    def explain_step(self, latent: str) -> str | None:
        """The training step in words for ``energydsl explain``; None: the generic gradient step."""
        return None


def learned_values(shapes: Sequence[tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", "energydsl.optimizers")
