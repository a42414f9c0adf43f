"""The energy term ``l0``: how many units are above their threshold, with a straight-through gradient to
the threshold (JumpReLU); optionally the quadratic penalty toward a target count."""

from __future__ import annotations

from energydsl.errors import SpecError
from energydsl.mechanisms.arguments import DEFAULT_BANDWIDTH
from energydsl.mechanisms.jumprelu import step_function
from energydsl.terms.base import Option, Term, _per_sample_sum


class l0(Term):
    """The number of active units, l0 = Σᵢ 1[vᵢ > θᵢ] per sample: the sparsity penalty of JumpReLU
    sparse auto-encoders (Rajamanoharan et al. 2024), written ``l0(pre, theta)`` on the encoder's
    pre-activations and its thresholds (θ a scalar or one per unit).

    The count is flat almost everywhere, so its gradient is the straight-through estimate of the
    JumpReLU paper, with a rectangle kernel of width ε (``bandwidth``):
    ∂/∂θᵢ 1[vᵢ > θᵢ] ≈ −(1/ε)·1[|vᵢ − θᵢ| < ε/2], and none to v.  The penalty thus raises a threshold
    where pre-activations sit just above it, and leaves the encoder to the reconstruction.

    ``target = L`` makes it the quadratic penalty toward L active units, (2/L)·(l0 − L)² per sample
    (Gemma Scope 2): it pushes the count down above L and up below it, so the run settles near L
    whatever the weight, where the plain count only ever pushes down.
    """

    name = "l0"
    formula = "Σᵢ 1[{v}ᵢ > {theta}ᵢ]"
    arguments = ("v", "theta")
    kinds = ("value", "value")
    convex = False
    options = {
        "bandwidth": Option(DEFAULT_BANDWIDTH, text="ε, the width of the straight-through rectangle kernel"),
        "target": Option(None, text="L, a target count: the penalty becomes (2/L)·(l0 − L)²"),
    }

    def __init__(self, static):
        super().__init__(static)
        target = self.static["target"]
        if target is not None:
            self.formula = f"(2/{target:g})·(Σᵢ 1[{{v}}ᵢ > {{theta}}ᵢ] − {target:g})²"

    def check(self, values, node):
        v, theta = values
        if not v.batched:
            raise SpecError("l0() counts the units of a per-sample value, such as the encoder's pre-activations",
                            node.span)  # fmt: skip
        if not (theta.is_scalar or theta.shape == v.shape):
            raise SpecError(f"l0() thresholds must be a scalar or {v.describe()} like the value, "
                            f"got {theta.describe()}", node.span)  # fmt: skip

    def energy(self, v, theta):
        count = _per_sample_sum(step_function(v, theta, self.static["bandwidth"]))
        target = self.static["target"]
        return count if target is None else (2 / target) * (count - target) ** 2
