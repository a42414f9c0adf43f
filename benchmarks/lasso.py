"""Lasso inference: energydsl vs SPAMS (LARS) vs scikit-learn vs hand-written torch FISTA.

The problem of issue 6: 2,048 MNIST digits (each digit's mean removed), 400
unit-norm atoms drawn from other digits, λ = 0.1, float32 inputs.  The reference
optimum is SPAMS' LARS in float64 (exact); every contender is reported with its
median time and its relative objective gap Σ F(z) / Σ F(z*) − 1.

energydsl solves it through the public API — ``energydsl.load(spec)``, the
dictionary assigned to ``model.params["W"]``, ``model.infer(x, tol=...)`` — by
FISTA at several tolerances (its ``tol`` bounds the last step, not the
objective), and exactly by ``infer z by lars`` (the homotopy, energydsl/ops/homotopy.py).
Run by hand:  python benchmarks/lasso.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import (
    LAMBDA,
    lasso_model,
    lasso_objective,
    mnist_lasso_problem,
    plain_fista,
    report,
    spams_lasso,
    spams_or_none,
    timed,
)


def sklearn_codes(X: torch.Tensor, D: torch.Tensor, algorithm: str) -> torch.Tensor:
    from sklearn.decomposition import sparse_encode

    # sparse_encode scales the squared error by 1 / n_features for these two algorithms
    codes = sparse_encode(X.numpy(), D.T.numpy(), algorithm=algorithm, alpha=LAMBDA, max_iter=5000)
    return torch.from_numpy(codes)


def main() -> None:
    warnings.filterwarnings("ignore", module="sklearn")  # per-sample convergence chatter
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, D = mnist_lasso_problem()
    optimum = lasso_objective(X, D, spams_lasso(X, D)).sum() if spams_or_none() else None
    contenders = {}
    if spams_or_none() is not None:
        contenders["spams_lars"] = lambda: spams_lasso(X, D)
    model = lasso_model("fista(steps = 5000, tol = 1e-4)")
    with torch.no_grad():
        model.params["W"].copy_(D)
    for tol in (1e-4, 1e-5, 1e-6):
        contenders[f"energydsl_tol_{tol:g}"] = lambda tol=tol: model.infer(X, tol=tol)
    homotopy = lasso_model("lars")
    with torch.no_grad():
        homotopy.params["W"].copy_(D)
    homotopy.infer(X[:2])  # numba compiles its kernels on the first call (once per install: cached on disk)
    contenders["energydsl_lars"] = lambda: homotopy.infer(X)
    contenders["torch_fista_650_iterations"] = lambda: plain_fista(X, D, 650)
    contenders["sklearn_lasso_cd"] = lambda: sklearn_codes(X, D, "lasso_cd")
    contenders["sklearn_lasso_lars"] = lambda: sklearn_codes(X, D, "lasso_lars")
    results = {}
    for name, solve in contenders.items():
        repeats = 1 if name.startswith("sklearn") else args.repeats  # 10 s and more each
        seconds, Z = timed(solve, repeats)
        gap = float(lasso_objective(X, D, Z).sum() / optimum - 1) if optimum is not None else None
        results[name] = {"seconds": round(seconds, 3), "relative_gap": gap,
                         "nonzeros_per_sample": round(float((Z != 0).sum(1).double().mean()), 1)}  # fmt: skip
    report("lasso", samples=X.shape[0], atoms=D.shape[1], lam=LAMBDA, repeats=args.repeats, **results)


if __name__ == "__main__":
    main()
