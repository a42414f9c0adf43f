"""PSD: how many FISTA iterations the encoder's prediction saves.

Trains `specs/psd.energy` (or loads a trained run with --run DIR), then on held-out
patches runs FISTA on the spec's energy to a fixed tolerance from two starts — zero and
the encoder's prediction G·tanh(W x + d) — and counts the iterations (prox calls; the
smooth part is quadratic, so there is one per iteration).  Both must reach the same
energy.  Prints one JSON line per tolerance; run by hand:

    python benchmarks/psd_warm_start.py [--run runs/psd] [--test 2000]
"""

import argparse
import dataclasses
import json

import torch

import energydsl
from energydsl.infer import fista


def iterations(model, x, start, tol) -> tuple[int, float]:
    """FISTA iterations from ``start`` until every sample's step is below tol·‖z‖, and the mean energy."""
    problem = model._problem(model.preprocess(x), None, None)
    calls = 0

    def counted(v, step, at):
        nonlocal calls
        calls += 1
        return problem.prox(v, step, at)

    z = fista(dataclasses.replace(problem, prox=counted), start, steps=20000, tol=tol)
    return calls, model.energy(x, z).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="specs/psd.energy")
    parser.add_argument("--run", help="a trained PSD run directory (default: train the spec first)")
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    if args.run:
        model = energydsl.load_run(args.run)
        x = energydsl.api.run_dataset(args.run, model).x_test[: args.test]
    else:
        model = energydsl.load(args.spec)
        energydsl.train(model)
        x = model.dataset.x_test[: args.test]
    with torch.no_grad():
        for tol in (1e-2, 1e-3, 1e-4):
            cold, cold_energy = iterations(model, x, torch.zeros(x.shape[0], *model.program.latent.shape), tol)
            warm, warm_energy = iterations(model, x, model.encode(x), tol)
            print(json.dumps({"tol": tol, "from_zero": cold, "from_encoder": warm, "saved": round(1 - warm / cold, 3),
                              "energy_from_zero": round(cold_energy, 6), "energy_from_encoder": round(warm_energy, 6)}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
