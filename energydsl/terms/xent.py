"""The energy term ``xent``: cross-entropy of a classifier: −log softmax(logits)_y."""

from __future__ import annotations

import torch.nn.functional as F

from energydsl.errors import SpecError
from energydsl.terms.base import Term


class xent(Term):
    """Cross-entropy of a classifier: −log softmax(logits)_y.

    Used as ``xent(C @ normalize(z), y)``; at inference with no label it is left out.
    """

    name = "xent"
    formula = "−log softmax({logits})[{label}]"
    arguments = ("logits", "label")
    kinds = ("value", "label")
    needs_label = True
    role = "classifier"

    def check(self, values, node):
        (logits,) = values
        classes = self.static["classes"]
        if not logits.batched or logits.shape != (classes,):
            raise SpecError(f"xent() needs {classes} logits per sample (one per class), "
                            f"got {logits.describe()}", node.span)  # fmt: skip

    def energy(self, logits, label):
        return F.cross_entropy(logits, label, reduction="none")
