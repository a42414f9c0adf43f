"""LISTA's approximation of the optimal codes, beside ISTA and FISTA at the same step count.

For K = 1, 3, 5, 10 learned steps, trains `specs/lista.energy` with `--set T=K` (the
dictionary D is fixed: the same data samples for every K), then measures on held-out
patches the relative error ‖Z_K − Z*‖_F / ‖Z*‖_F, where Z* is the lasso optimum of that
dictionary (FISTA, 5,000 steps, tol 1e-9), for the learned encoder, ISTA and FISTA at K
steps and at 10·K steps (from zero, step 1/L).  Prints one JSON line per K; run by hand:

    python benchmarks/lista.py [--ks 1 3 5 10] [--test 2000]
"""

import argparse
import json
import time

import torch

import energydsl
from energydsl.solvers.fista import fista


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="specs/lista.energy")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    for k in args.ks:
        model = energydsl.load(args.spec, set={"T": k})
        x = model.dataset.x_test[: args.test]
        xp = model.preprocess(x)
        z_star = model.infer(x, steps=5000, tol=1e-9)
        problem = model.problem(xp, None, None)  # the spec's inference terms: recon + sparse

        def error(z):
            return round(((z - z_star).norm() / z_star.norm()).item(), 4)

        def solver(steps, accelerate):
            return error(fista(problem, torch.zeros_like(z_star), steps, tol=0, accelerate=accelerate))

        start = time.perf_counter()
        history = energydsl.train(model)
        row = {"K": k, "lista": error(model.encode(x)),
               "ista_K": solver(k, False), "fista_K": solver(k, True),
               "ista_10K": solver(10 * k, False), "fista_10K": solver(10 * k, True),
               "train_seconds": round(time.perf_counter() - start, 1), "epochs": len(history)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
