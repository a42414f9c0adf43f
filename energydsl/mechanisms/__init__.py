"""The sparsity mechanisms of model expressions: one module per mechanism, registered here (one line each)."""

from energydsl.mechanisms.base import MECHANISMS, Mechanism, model_functions
from energydsl.mechanisms.batchtopk import BatchTopK
from energydsl.mechanisms.jumprelu import JumpReLU
from energydsl.mechanisms.step import Step
from energydsl.mechanisms.topk import TopK

MECHANISMS.register(TopK)
MECHANISMS.register(BatchTopK)
MECHANISMS.register(JumpReLU)
MECHANISMS.register(Step)

__all__ = ["MECHANISMS", "Mechanism", "model_functions"]
