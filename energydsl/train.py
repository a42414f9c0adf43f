"""The generic loop, one for every spec.

For each minibatch: infer z* with the parameters frozen (or run the encoder),
take one descent step on the parameters that descend and one ascent step on
those that ascend (both from the same gradient of the batch's mean energy), then
project every parameter onto its constraints.  Phases switch terms on and off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import Dataset
from .model import EnergyModel

EVAL_BATCH = 1024


@dataclass
class Optimizers:
    descent: torch.optim.Optimizer | None
    ascent: torch.optim.Optimizer | None

    def zero_grad(self) -> None:
        for opt in (self.descent, self.ascent):
            if opt is not None:
                opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in (self.descent, self.ascent):
            if opt is not None:
                opt.step()


def make_optimizers(model: EnergyModel) -> Optimizers:
    """One optimizer per direction; each parameter its own group and learning rate."""
    training = model.program.training
    groups: dict[str, list[dict]] = {"descent": [], "ascent": []}
    for plan in model.program.params:
        if plan.learn == "fixed":
            continue
        lr = plan.lr if plan.lr is not None else training.lr * plan.lr_scale
        groups[plan.learn].append({"params": [model.params[plan.name]], "lr": lr})
    return Optimizers(*(_optimizer(training, groups[d], maximize=d == "ascent") for d in ("descent", "ascent")))


def _optimizer(training, groups: list[dict], maximize: bool):
    if not groups:
        return None
    options = dict(training.options)
    if training.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=training.lr, maximize=maximize, **options)
    betas = (options.pop("beta1", 0.9), options.pop("beta2", 0.999))
    return torch.optim.Adam(groups, lr=training.lr, betas=betas, maximize=maximize, **options)


def train_step(model: EnergyModel, optimizers: Optimizers, x, y, terms) -> float:
    """One minibatch of the generic loop; returns the batch's mean energy."""
    xp = model.preprocess(x)
    by_encoder = all(m.kind == "encoder" for m in model.program.methods)
    z = model._infer(xp, y, terms, differentiable=by_encoder)
    loss = model._energy_of(xp, z, y, terms).mean()
    optimizers.zero_grad()
    loss.backward()
    optimizers.step()
    model.project_()
    return loss.item()


def train(
    model: EnergyModel,
    data: Dataset,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    seed: int | None = None,
) -> list[dict]:
    """Train ``model`` on ``data`` through the spec's phases; returns one metrics dict per epoch."""
    training = model.program.training
    generator = torch.Generator().manual_seed(training.seed if seed is None else seed)
    optimizers = make_optimizers(model)
    device = model.device
    x_train = data.x_train.to(device)
    y_train = data.y_train.to(device) if data.y_train is not None and model.program.label else None
    history = []
    for phase in training.phases:
        for _ in range(phase.epochs):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(x_train.shape[0], generator=generator).to(device)
            for batch in order.split(training.batch):
                train_step(model, optimizers, x_train[batch], None if y_train is None else y_train[batch], phase.terms)
            metrics = {"phase": phase.name, "epoch": len(history) + 1, **evaluate(model, data)}
            metrics["seconds"] = round(time.perf_counter() - start, 3)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
    return history


@torch.no_grad()
def evaluate(model: EnergyModel, data: Dataset, split: str = "test") -> dict:
    """Energy and each term, mean L0 of z, relative reconstruction error, test error."""
    x = data.x_test if split == "test" and data.x_test.shape[0] else data.x_train
    labels = data.y_test if x is data.x_test else data.y_train
    labels = labels if model.program.label is not None else None
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, x.shape[0], EVAL_BATCH):
        xb = x[start : start + EVAL_BATCH].to(model.device)
        yb = None if labels is None else labels[start : start + EVAL_BATCH].to(model.device)
        for key, value in _batch_metrics(model, xb, yb).items():
            sums[key] = sums.get(key, 0.0) + value
    count = x.shape[0]
    metrics = {key: value / count for key, value in sums.items() if not key.startswith("_")}
    if "_input_energy" in sums:
        metrics["recon_error"] = sums["_recon"] / max(sums["_input_energy"], 1e-30)
    return {key: round(value, 6) for key, value in metrics.items()}


def _batch_metrics(model: EnergyModel, x, y) -> dict[str, float]:
    """Sums over the batch (divided by the sample count by the caller)."""
    xp = model.preprocess(x)
    z = model._infer(xp)  # labels are unknown at test time
    env = model._env(xp, z, y)
    out: dict[str, float] = {}
    total = torch.zeros(x.shape[0], device=x.device)
    for term in model._active(None, y is not None):
        energy = term.energy(env)
        total += energy
        out[f"term.{term.name}"] = energy.sum().item()
    out["energy"] = total.sum().item()
    out["l0"] = (z != 0).sum().item()
    recon = model.program.reconstruction
    if recon is not None:
        out["_recon"] = (recon.energy(env) / recon.weight).sum().item() if recon.weight else 0.0
        out["_input_energy"] = (xp.flatten(1) ** 2).sum().item()
    if y is not None and model.program.classifier is not None:
        logits = model.program.classifier.args[0](env)
        out["test_error"] = (logits.argmax(dim=1) != y).sum().item()
    return out
