"""DrSAE training throughput: energydsl's generic loop vs the same model written in PyTorch.

``specs/drsae.energy`` in its joint phase (reconstruction, sparsity and the
classifier; 400 units, T = 11, batch 64, Adam, the constraints projected after
every step) against a hand-written module and loop doing exactly the same
arithmetic.  Each contender trains ``--steps`` minibatches of the same MNIST
training digits; samples per second are medians of ``--repeats`` interleaved runs.
Prints one JSON line.  Run by hand:  python benchmarks/drsae_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import report

import energydsl
from energydsl.training.loop import make_optimizers, train_step

SPEC = Path(__file__).resolve().parent.parent / "specs" / "drsae.energy"
JOINT = ("recon", "sparse", "class")


class HandWrittenDrSAE(torch.nn.Module):
    """Rolfe & LeCun (2013), the spec's constants, initialised from the compiled model."""

    def __init__(self, params: dict[str, torch.Tensor], lam: float, steps: int):
        super().__init__()
        self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone()) for k, v in params.items()})
        self.lam, self.steps = lam, steps

    def loss(self, x, y):
        p = self.p
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        drive = x @ p["E"].T - p["b"]
        z = torch.zeros(x.shape[0], p["S"].shape[0])
        for _ in range(self.steps):
            z = torch.relu(drive + z @ p["S"].T)
        recon = 0.5 * ((x - z @ p["D"].T) ** 2).sum(1)
        logits = (z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ p["C"].T
        return (recon + self.lam * z.abs().sum(1) + F.cross_entropy(logits, y, reduction="none")).mean()

    @torch.no_grad()
    def project(self, T: int):
        p = self.p
        p["D"].mul_((1 / p["D"].norm(dim=0, keepdim=True).clamp_min(1e-30)).clamp(max=1))
        p["E"].mul_((1.25 / (T - 1) / p["E"].norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1))
        p["C"].mul_((5 / p["C"].norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = energydsl.load(SPEC)
    constants = model.program.constants
    batch = model.program.training.batch
    x_all, y_all = model.dataset.x_train, model.dataset.y_train
    hand = HandWrittenDrSAE(dict(model.params), constants["lam"], int(constants["T"]))
    lr = model.program.training.lr
    hand_optimizer = torch.optim.Adam([{"params": [p], "lr": lr * (10 if k == "C" else 1)} for k, p in hand.p.items()])
    spec_optimizers = make_optimizers(model)

    def batches():
        for k in range(args.steps):
            rows = slice(k * batch, (k + 1) * batch)
            yield x_all[rows], y_all[rows]

    def run_energydsl():
        for x, y in batches():
            train_step(model, spec_optimizers, x, y, JOINT)

    def run_by_hand():
        for x, y in batches():
            hand_optimizer.zero_grad(set_to_none=True)
            hand.loss(x, y).backward()
            hand_optimizer.step()
            hand.project(int(constants["T"]))

    seconds = {"energydsl": [], "by_hand": []}
    for _ in range(args.repeats):
        for name, run in (("energydsl", run_energydsl), ("by_hand", run_by_hand)):
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: args.steps * batch / statistics.median(values) for name, values in seconds.items()}
    report("drsae_throughput", steps=args.steps, batch=batch, repeats=args.repeats,
           energydsl_samples_per_second=round(rate["energydsl"]), by_hand_samples_per_second=round(rate["by_hand"]),
           ratio=round(rate["energydsl"] / rate["by_hand"], 3))  # fmt: skip


if __name__ == "__main__":
    main()
