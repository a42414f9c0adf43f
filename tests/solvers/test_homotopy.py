"""The lasso homotopy (``infer z by lars``) returns the exact optimum.

Exactness is checked by the optimality conditions themselves, written out in
float64: with g = c + zH the gradient of the smooth part, every unit with zᵢ ≠ 0
has gᵢ = −λ·sign(zᵢ) and every unit with zᵢ = 0 has |gᵢ| ≤ λ (gᵢ ≥ −λ under
z ≥ 0).  The objective is also compared with cvxpy's.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import energydsl
import energydsl.ops.homotopy
from energydsl.errors import NumericalError
from energydsl.ops.homotopy import lasso_homotopy
from energydsl.reporting.explain import explain


def random_lasso(seed: int, dim: int = 30, atoms: int = 50, samples: int = 16, coherent: bool = False):
    """(W, X, H, c): unit-norm atoms (coherent ones share a common direction) and signals."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(dim, atoms, generator=generator, dtype=torch.float64)
    if coherent:  # like digits: every atom leans on one direction, so H is ill-conditioned
        W += 3 * torch.randn(dim, 1, generator=generator, dtype=torch.float64)
    W /= W.norm(dim=0)
    X = torch.randn(samples, dim, generator=generator, dtype=torch.float64)
    return W, X, W.T @ W, -(X @ W)


def assert_kkt(z, H, c, lam, nonneg=False, tol=1e-9):
    g = c.double() + z.double() @ H.double()
    on = z != 0
    assert torch.allclose(g[on], -lam * torch.sign(z[on].double()), atol=tol * lam, rtol=0)
    if nonneg:
        assert (z >= 0).all()
        assert (g[~on] >= -lam * (1 + tol)).all()
    else:
        assert (g[~on].abs() <= lam * (1 + tol)).all()


def cvxpy_objective(W, X, lam, nonneg=False) -> np.ndarray:
    values = []
    for x in X.numpy():
        z = cp.Variable(W.shape[1], nonneg=nonneg)
        problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - W.numpy() @ z) + lam * cp.norm1(z)))
        problem.solve(solver="CLARABEL")
        values.append(problem.value)
    return np.array(values)


def objective(W, X, Z, lam) -> np.ndarray:
    return (0.5 * ((X - Z @ W.T) ** 2).sum(1) + lam * Z.abs().sum(1)).numpy()


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("coherent", [False, True])
@pytest.mark.parametrize("lam", [0.02, 0.3])
def test_homotopy_meets_the_optimality_conditions(nonneg, coherent, lam):
    W, X, H, c = random_lasso(seed=int(coherent), coherent=coherent)
    z, finished = lasso_homotopy(H, c, lam, nonneg)
    assert finished.all()
    assert z.dtype == torch.float64 and z.shape == c.shape
    assert_kkt(z, H, c, lam, nonneg)
    # cvxpy's interior point is accurate to about 1e-8: the homotopy is never above it
    reference = cvxpy_objective(W, X, lam, nonneg)
    assert np.all(objective(W, X, z, lam) <= reference + 1e-7 * np.abs(reference))


def test_atoms_leave_the_path_on_coherent_dictionaries():
    """The signed lasso path on an ill-conditioned dictionary drops atoms on the way: the
    Givens downdate of the factor is exercised, and the end point is still optimal."""
    _, _, H, c = random_lasso(seed=2, dim=20, atoms=60, samples=32, coherent=True)
    z, finished = lasso_homotopy(H, c, 0.01)
    assert finished.all()
    assert_kkt(z, H, c, 0.01, tol=1e-8)
    # a path without departures takes one step per final nonzero; one that needs more had
    # an atom leave, so the downdate ran
    nonzeros = (z != 0).sum(1)
    within = [bool(lasso_homotopy(H, c[i : i + 1], 0.01, max_steps=int(nonzeros[i]))[1]) for i in range(8)]
    assert not all(within), "no sample's path dropped an atom: the test does not reach the downdate"
    assert any(within), "no sample's path took one step per nonzero: the step count is off"


def test_penalty_above_every_correlation_gives_zero():
    _, _, H, c = random_lasso(seed=3)
    z, finished = lasso_homotopy(H, c, float(c.abs().max()) * 1.01)
    assert finished.all() and (z == 0).all()


def test_duplicate_atoms_are_handled():
    """An atom identical to an active one cannot join (its pivot is 0); the optimum is unchanged."""
    W, X, _, _ = random_lasso(seed=4, atoms=20)
    W = torch.cat([W, W[:, :5]], dim=1)  # atoms 20..24 repeat atoms 0..4
    H, c = W.T @ W, -(X @ W)
    z, finished = lasso_homotopy(H, c, 0.05)
    assert finished.all()
    assert_kkt(z, H, c, 0.05, tol=1e-8)
    reference = cvxpy_objective(W, X, 0.05)
    assert np.all(objective(W, X, z, 0.05) <= reference + 1e-7 * np.abs(reference))


def test_float32_input_comes_back_float32_and_exact_to_its_rounding():
    _, _, H, c = random_lasso(seed=5)
    z, _ = lasso_homotopy(H.float(), c.float(), 0.1)
    assert z.dtype == torch.float32
    assert_kkt(z, H.float(), c.float(), 0.1, tol=1e-5)


# --------------------------------------------------------------------------- in a spec

LARS_SPEC = """
model lasso
data synthetic(dim = 16, atoms = 40, k = 4, count = 100, noise = 0.3)
const lam = 0.05
input x[16]
latent z[40] {bound}
param W[16, 40] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by {method}
train
  optimizer sgd(lr = 0.1)
  batch 25
  epochs 1
"""


def spec_model(method="lars", bound=""):
    model = energydsl.load(LARS_SPEC.format(method=method, bound=bound))
    x = model.dataset.x_test[:20]
    W = model.params["W"].detach()
    return model, x, W.T @ W, -(x @ W)


@pytest.mark.parametrize("bound", ["", ">= 0"])
def test_infer_by_lars_is_exact_and_fista_agrees(bound):
    model, x, H, c = spec_model(bound=bound)
    z = model.infer(x)
    assert_kkt(z, H, c, 0.05, nonneg=bool(bound), tol=1e-4)  # H, c in float32
    fista_model, _, _, _ = spec_model("fista(steps = 5000, tol = 1e-7)", bound)
    fista_model.params["W"].data.copy_(model.params["W"])
    # the codes can differ where atoms repeat (samples(x) may draw a sample twice): compare energies
    lars_energy, fista_energy = model.energy(x, z).detach(), model.energy(x, fista_model.infer(x)).detach()
    assert torch.allclose(lars_energy, fista_energy, rtol=1e-6)
    assert lars_energy.sum() <= fista_energy.sum() * (1 + 1e-7)


def test_a_path_that_stops_early_is_finished_by_fista(monkeypatch):
    """Where a path hits its step limit, FISTA takes over from its last point."""
    model, x, H, c = spec_model()
    exact = model.energy(x, model.infer(x)).detach()
    cut_short = lambda H, c, lam, nonneg: lasso_homotopy(H, c, lam, nonneg, max_steps=2)
    monkeypatch.setattr(energydsl.ops.homotopy, "lasso_homotopy", cut_short)
    z = model.infer(x)
    assert torch.allclose(model.energy(x, z).detach(), exact, rtol=1e-6)
    assert_kkt(z, H, c, 0.05, tol=3e-3)  # FISTA's finest float32 tolerance, not exact


def test_lars_refuses_a_hessian_that_differs_per_sample():
    spec = LARS_SPEC.replace("sqerr(x, W @ z)", "sqerr(x, x * (W @ z))").format(method="lars", bound="")
    model = energydsl.load(spec)
    with pytest.raises(NumericalError, match="share one Hessian"):
        model.infer(model.dataset.x_test[:8])


def test_training_with_lars_lowers_the_energy(tmp_path):
    model, x, _, _ = spec_model()
    before = model.energy(x, model.infer(x)).mean().item()
    energydsl.train(model, out=tmp_path / "run")
    after = model.energy(x, model.infer(x)).mean().item()
    assert after < before


def test_explain_describes_the_homotopy():
    model, _, _, _ = spec_model()
    text = explain(model.program)
    assert "Inference  z by lars" in text
    assert "LARS-lasso homotopy" in text and "lars setup, once per batch (Gram matrix)" in text
