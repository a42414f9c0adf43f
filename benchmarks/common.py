"""What the performance benchmarks share: the problems of issue 6, exact objectives, timing.

Every benchmark compares its contenders side by side in one process, repeats each
measurement and reports medians, and prints one JSON line.  SPAMS (``pip install
spams-bin``) and scikit-learn are benchmark extras (``pip install -e ".[bench]"``);
a contender whose library is missing is reported as such, not skipped silently.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from energydsl.data.mnist import mnist

LAMBDA = 0.1


def timed(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds over ``repeats`` runs, the last run's result)."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def mnist_lasso_problem(samples: int = 2048, atoms: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(X (samples, 784), D (784, atoms)): MNIST training digits with each digit's mean
    removed, and unit-norm atoms drawn from other digits (the problem of issue 6)."""
    x = mnist().x_train.double()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    X = x[order[:samples]]
    D = x[order[samples : samples + atoms]]
    X, D = X - X.mean(1, keepdim=True), D - D.mean(1, keepdim=True)
    return X.float(), (D / D.norm(dim=1, keepdim=True)).T.contiguous().float()


def lasso_objective(X: torch.Tensor, D: torch.Tensor, Z: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """Per sample ½‖x − Dz‖² + λ‖z‖₁, in float64."""
    X, D, Z = X.double(), D.double(), Z.double()
    return 0.5 * ((X - Z @ D.T) ** 2).sum(1) + lam * Z.abs().sum(1)


def spams_or_none():
    try:
        import spams
    except ImportError:
        return None
    return spams


def spams_lasso(X: torch.Tensor, D: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """The exact lasso codes by SPAMS' LARS (float64), (samples, atoms)."""
    spams = spams_or_none()
    codes = spams.lasso(np.asfortranarray(X.double().numpy().T), D=np.asfortranarray(D.double().numpy()),
                        lambda1=lam, mode=2, numThreads=-1)  # fmt: skip
    return torch.from_numpy(codes.toarray().T)


def exact_held_out_objective(X: torch.Tensor, D: torch.Tensor, lam: float = LAMBDA) -> float:
    """Mean lasso objective of held-out samples under dictionary D, codes solved exactly
    (by energydsl's homotopy, in float64)."""
    from energydsl.ops.homotopy import lasso_homotopy

    D = D.double()
    Z, _ = lasso_homotopy(D.T @ D, -(X.double() @ D), lam)
    return float(lasso_objective(X, D, Z, lam).mean())


def soft_threshold(v: torch.Tensor, tau: float) -> torch.Tensor:
    return v - v.clamp(-tau, tau)


def plain_fista(X: torch.Tensor, D: torch.Tensor, steps: int, lam: float = LAMBDA, prox=soft_threshold) -> torch.Tensor:
    """What a user writes: batched FISTA with a precomputed Gram matrix, a fixed number of
    steps; ``prox(v, τ)`` is the prox of τ·(the penalty), the lasso's by default."""
    H, c = D.T @ D, -(X @ D)
    L = float(torch.linalg.eigvalsh(H.double())[-1])
    z = y = torch.zeros(X.shape[0], D.shape[1], dtype=X.dtype)
    t = 1.0
    for _ in range(steps):
        v = y - (y @ H + c) / L
        z_next = prox(v, lam / L)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y, z, t = z_next + (t - 1) / t_next * (z_next - z), z_next, t_next
    return z


def lasso_model(infer: str, lam: float = LAMBDA):
    """A compiled lasso spec (784 inputs, 400 units) with ``infer z by {infer}``; assign W."""
    import energydsl

    return energydsl.load(f"""
model lasso
data mnist
const lam = {lam}
input x[784]
latent z[400]
param W[784, 400]
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by {infer}
""")


def report(name: str, **fields) -> None:
    print(json.dumps({"benchmark": name, "threads": torch.get_num_threads(), **fields}))
