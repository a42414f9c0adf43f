"""optimizer sgd: stochastic gradient descent (torch.optim.SGD), with optional momentum."""

from __future__ import annotations

import torch

from energydsl.optim.base import Optimizer, learned_values


class SGD(Optimizer):
    name = "sgd"
    options = {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
    unit_options = ("momentum",)
    description = "Stochastic gradient descent (torch.optim.SGD), with optional momentum"

    def make(self, groups, options, lr, maximize, column_projection):
        return torch.optim.SGD(groups, lr=lr, maximize=maximize, **options)

    def state_values(self, shapes, options):
        return learned_values(shapes) if options.get("momentum", 0) > 0 else 0  # momentum_buffer


sgd = SGD()
