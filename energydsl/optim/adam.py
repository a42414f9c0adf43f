"""optimizer adam: Adam (torch.optim.Adam) with betas (beta1, beta2)."""

from __future__ import annotations

import torch

from energydsl.optim.base import Optimizer, learned_values


class Adam(Optimizer):
    name = "adam"
    options = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}
    unit_options = ("beta1", "beta2")
    description = "Adam (torch.optim.Adam) with betas (beta1, beta2)"

    def make(self, groups, options, lr, maximize, column_projection):
        options = dict(options)
        betas = (options.pop("beta1", self.options["beta1"]), options.pop("beta2", self.options["beta2"]))
        # fused: one kernel per parameter instead of about ten passes over it, 6x faster on the CPU for a
        # 4,096 x 512 matrix (which matters where the rest of a step costs little: sparse codes)
        return torch.optim.Adam(groups, lr=lr, betas=betas, maximize=maximize, fused=_fusable(groups), **options)

    def state_values(self, shapes, options):
        return 2 * learned_values(shapes)  # exp_avg, exp_avg_sq


def _fusable(groups) -> bool:
    """Whether torch's fused Adam takes these parameters: floating point, on the CPU or a CUDA device."""
    params = [p for group in groups for p in group["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


adam = Adam()
