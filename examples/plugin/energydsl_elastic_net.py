"""An energy term defined outside energydsl: the elastic net, with its exact prox.

    elastic_net(v, gamma) = ‖v‖₁ + (γ/2)‖v‖²

Its prox has a closed form: soft-threshold, then shrink,

    prox_{τ·elastic_net}(v) = sign(v) · max(|v| − τ, 0) / (1 + τγ).

Installed with this folder's pyproject.toml, the term is registered through the
``energydsl.terms`` entry point group, and any spec can write ``elastic_net(z, gamma)``.
"""

import torch

from energydsl.errors import SpecError
from energydsl.terms import ProxTerm


class ElasticNet(ProxTerm):
    """The elastic net ‖v‖₁ + (γ/2)‖v‖² (Zou & Hastie 2005): sparse codes that share weight among
    correlated atoms; its prox is a soft-threshold followed by a shrink by 1/(1 + τγ)."""

    name = "elastic_net"  # the word a spec writes, and the entry point's name
    formula = "(‖{v}‖₁ + ({gamma}/2)‖{v}‖²)"
    arguments = ("v", "gamma")
    kinds = ("value", "value")

    def check(self, values, node):
        v, gamma = values
        if not v.batched:
            raise SpecError("elastic_net() needs a per-sample value such as the latent", node.span)
        if gamma.batched or gamma.shape != () or gamma.const is None or gamma.const < 0:
            raise SpecError("elastic_net(v, gamma) needs a constant gamma >= 0", node.span)

    def energy(self, v, gamma):
        v = v.flatten(1)
        return v.abs().sum(dim=1) + 0.5 * gamma * (v * v).sum(dim=1)

    def prox(self, v, tau, gamma):
        return torch.sign(v) * torch.clamp(v.abs() - tau, min=0) / (1 + tau * gamma)
