"""Per-iteration cost of the compiled spec's FISTA vs hand-written batched FISTA.

Same lasso problem for both: MNIST digits (mean removed), 400 unit-norm atoms
drawn from the data, lambda = 0.1, a fixed number of iterations (no early stop).
The hand-written loop is what a user would write with a precomputed Gram matrix;
the compiled one differentiates the spec's smooth energy with autograd.
Prints one JSON line; run by hand:  python benchmarks/infer_overhead.py
"""

import json
import statistics
import time

import torch

import energydsl
from energydsl.data import load_data

SPEC = """
model lasso
data mnist
const lam = 0.1
input x[784]
latent z[400]
param W[784, 400] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by fista(steps = 100, tol = 0)
"""


def hand_written_fista(x, W, lam, steps):
    gram, wx = W.T @ W, x @ W
    L = torch.linalg.matrix_norm(gram, ord=2)
    z = y = torch.zeros(x.shape[0], W.shape[1])
    t = 1.0
    for _ in range(steps):
        v = y - (y @ gram - wx) / L
        z_next = torch.sign(v) * torch.clamp(v.abs() - lam / L, min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = z_next + (t - 1) / t_next * (z_next - z)
        z, t = z_next, t_next
    return z


def objective(x, W, z, lam):
    return (0.5 * ((x - z @ W.T) ** 2).sum(1) + lam * z.abs().sum(1)).mean().item()


def main(repeats=3, steps=100):
    torch.manual_seed(0)
    model = energydsl.load(SPEC)
    data = load_data("mnist")
    x = data.x_train[:2048]
    x = x - x.mean(dim=1, keepdim=True)
    W = model.params["W"].detach()
    timings = {"compiled": [], "hand_written": []}
    results = {}
    for _ in range(repeats):
        start = time.perf_counter()
        results["compiled"] = model.infer(x, steps=steps, tol=0)
        timings["compiled"].append(time.perf_counter() - start)
        start = time.perf_counter()
        results["hand_written"] = hand_written_fista(x, W, 0.1, steps)
        timings["hand_written"].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    print(json.dumps({
        "benchmark": "infer_overhead",
        "samples": x.shape[0],
        "atoms": W.shape[1],
        "iterations": steps,
        "compiled_ms_per_iteration": round(1000 * medians["compiled"] / steps, 3),
        "hand_written_ms_per_iteration": round(1000 * medians["hand_written"] / steps, 3),
        "ratio": round(medians["compiled"] / medians["hand_written"], 2),
        "objective_compiled": round(objective(x, W, results["compiled"], 0.1), 6),
        "objective_hand_written": round(objective(x, W, results["hand_written"], 0.1), 6),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
