"""PSD: how many FISTA iterations the encoder's prediction saves.

Takes a trained PSD run (``energydsl run specs/psd.energy``) and, on held-out patches, runs
FISTA on the spec's energy from two starts — zero and the encoder's prediction
G·tanh(W x + d) — counting the iterations until the mean energy is within a relative gap
of the optimum (FISTA, 2,000 iterations).  FISTA without early stopping is deterministic,
so the energy after k iterations is read from runs of k iterations.  Prints one JSON line
per gap; run by hand:

    python benchmarks/psd_warm_start.py runs/psd [--test 2000] [--max 200]
"""

import argparse
import json

import torch

import energydsl
from energydsl.solvers.fista import fista


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", help="a trained PSD run directory")
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--max", type=int, default=200, help="most iterations to try")
    args = parser.parse_args()
    model = energydsl.load_run(args.run)
    x = energydsl.api.run_dataset(args.run, model).x_test[: args.test]
    problem = model.problem(model.preprocess(x), None, None)
    starts = {"from_zero": torch.zeros(x.shape[0], *model.program.latent.shape), "from_encoder": model.encode(x)}

    def energy(z) -> float:
        return model.energy(x, z).mean().item()

    with torch.no_grad():
        optimum = energy(fista(problem, starts["from_zero"], 2000, tol=0))
        curves = {name: [energy(start)] + [energy(fista(problem, start, k, tol=0)) for k in range(1, args.max + 1)]
                  for name, start in starts.items()}  # fmt: skip
    for gap in (1e-2, 1e-3, 1e-4, 1e-5):
        row = {"relative_gap": gap, "optimum": round(optimum, 6)}
        for name, curve in curves.items():
            row[name] = next((k for k, e in enumerate(curve) if (e - optimum) <= gap * abs(optimum)), None)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
