"""When to infer by lars and when by fista: both on the issue-6 lasso across λ.

The homotopy's cost grows with the number of nonzeros (one path step per atom that
joins or leaves, each O(atoms · nonzeros)); FISTA's with the iterations that the
dictionary's conditioning and the tolerance demand.  For each λ: the mean number of
nonzeros, lars' time, and FISTA's time and objective gap at tol 1e-4 and 1e-5
(against lars, which is exact).  Medians of ``--repeats`` runs, side by side.
Run by hand:  python benchmarks/lars_vs_fista.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from common import lasso_model, lasso_objective, mnist_lasso_problem, report, timed

LAMBDAS = (0.02, 0.05, 0.1, 0.2, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, D = mnist_lasso_problem()
    results = {}
    for lam in LAMBDAS:
        exact, fista = lasso_model("lars", lam), lasso_model("fista(steps = 20000, tol = 1e-4)", lam)
        with torch.no_grad():
            exact.params["W"].copy_(D)
            fista.params["W"].copy_(D)
        seconds, Z = timed(lambda exact=exact: exact.infer(X), args.repeats)
        optimum = lasso_objective(X, D, Z, lam).sum()
        row = {"nonzeros": round(float((Z != 0).sum(1).double().mean()), 1), "lars_seconds": round(seconds, 3)}
        for tol in (1e-4, 1e-5):
            seconds, Z = timed(lambda fista=fista, tol=tol: fista.infer(X, tol=tol), args.repeats)
            row[f"fista_{tol:g}_seconds"] = round(seconds, 3)
            row[f"fista_{tol:g}_gap"] = float(lasso_objective(X, D, Z, lam).sum() / optimum - 1)
        results[f"lam_{lam:g}"] = row
    report("lars_vs_fista", samples=X.shape[0], atoms=D.shape[1], repeats=args.repeats, **results)


if __name__ == "__main__":
    main()
