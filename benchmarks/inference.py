"""The inference loop at the hardware limit: compiled spec vs the same loop by hand, and
the share of an iteration spent in its matrix product.

Same lasso problem for all (``lasso.py``: 2,048 MNIST digits, 400 unit-norm atoms,
λ = 0.1), a fixed number of iterations (no early stop):

- compiled: ``model.infer`` of a spec, setup included (the Gram matrix read off the
  energy, the exact λ_max);
- by hand, plain: batched FISTA with a precomputed Gram matrix, what a user writes;
- by hand, same loop: the compiled loop's algorithm (FISTA with adaptive restart)
  written directly;
- matmul share: the time of one bare (B, m) @ (m, m) product times the iterations,
  over the compiled loop's time — the fraction of the hardware limit it reaches.

Medians of ``--repeats`` runs, interleaved.  Prints one JSON line.
Run by hand:  python benchmarks/inference.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import LAMBDA, lasso_model, lasso_objective, mnist_lasso_problem, plain_fista, report


def restarting_fista(X, D, steps):
    """FISTA with per-sample gradient restart (O'Donoghue & Candès), as energydsl runs it."""
    H, c = D.T @ D, -(X @ D)
    L = float(torch.linalg.eigvalsh(H.double())[-1])
    z = y = torch.zeros(X.shape[0], D.shape[1])
    t = torch.ones(X.shape[0], 1)
    for _ in range(steps):
        v = y - (y @ H + c) / L
        z_next = v - v.clamp(-LAMBDA / L, LAMBDA / L)
        restart = ((y - z_next) * (z_next - z)).sum(1, keepdim=True) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(restart, 0.0, (t - 1) / t_next)
        t = torch.where(restart, 1.0, t_next)
        y, z = z_next + momentum * (z_next - z), z_next
    return z


def bare_products(X, D, steps):
    H, y = D.T @ D, torch.zeros(X.shape[0], D.shape[1])
    c = -(X @ D)
    for _ in range(steps):
        v = torch.addmm(c, y, H)
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X, D = mnist_lasso_problem()
    model = lasso_model("fista(steps = 100, tol = 0)")
    with torch.no_grad():
        model.params["W"].copy_(D)
    contenders = {
        "compiled": lambda: model.infer(X, steps=args.steps, tol=0),
        "by_hand_plain": lambda: plain_fista(X, D, args.steps),
        "by_hand_same_loop": lambda: restarting_fista(X, D, args.steps),
        "matrix_products_alone": lambda: bare_products(X, D, args.steps),
    }
    seconds = {name: [] for name in contenders}
    codes = {}
    for _ in range(args.repeats):  # interleaved, so that load drifts hit every contender alike
        for name, solve in contenders.items():
            start = time.perf_counter()
            codes[name] = solve()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    per_iteration = {f"{name}_ms_per_iteration": round(1000 * median[name] / args.steps, 3) for name in median}
    report("inference", samples=X.shape[0], atoms=D.shape[1], iterations=args.steps, repeats=args.repeats,
           **per_iteration,
           compiled_over_same_loop=round(median["compiled"] / median["by_hand_same_loop"], 3),
           compiled_over_plain=round(median["compiled"] / median["by_hand_plain"], 3),
           matmul_share_of_compiled=round(median["matrix_products_alone"] / median["compiled"], 3),
           objective_compiled=round(float(lasso_objective(X, D, codes["compiled"]).mean()), 6),
           objective_by_hand=round(float(lasso_objective(X, D, codes["by_hand_same_loop"]).mean()), 6))  # fmt: skip


if __name__ == "__main__":
    main()
