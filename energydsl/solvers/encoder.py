"""Inference by the spec's own encoder: one forward pass (a learned, amortised inference)."""

from __future__ import annotations

from energydsl.errors import SpecError
from energydsl.solvers.base import Batch, Solver


class Encoder(Solver):
    name = "encoder"
    description = "The spec's encoder, one forward pass; 'encoder then fista(...)' starts FISTA from its prediction"
    options = ()
    runs_encoder = True

    def check_place(self, node, position, previous):
        if position > 0:
            raise SpecError("the encoder can only start the inference", node.span,
                            hint="write 'by encoder then fista(...)'")  # fmt: skip

    def solve(self, batch: Batch, z, steps, tol):
        return batch.encode()
