"""The sparsity mechanisms of model expressions: one module per mechanism, registered here (one line each)."""

from energydsl.mechanisms.base import MECHANISMS, Mechanism, model_functions

__all__ = ["MECHANISMS", "Mechanism", "model_functions"]
