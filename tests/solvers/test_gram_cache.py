"""The Gram matrix of a quadratic smooth part and its largest eigenvalue are computed once per parameter state.

Inference on many batches with a fixed dictionary reads H = WᵀW off the energy and computes λ_max(H) on
the first batch only; a change of the parameters (an optimizer step, an assignment, a loaded state)
makes the next batch compute them again.  Counted, not timed: the calls of
:func:`energydsl.solvers.problem.read_hessian` and :func:`energydsl.solvers.problem.largest_eigenvalue`.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch

import energydsl
from energydsl.solvers import problem as problem_module

LASSO = """
model lasso
data synthetic(dim = 16, atoms = 40, k = 4, count = 100, noise = 0.3)
input x[16]
latent z[40]
param W[16, 40] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.05 * l1(z)
infer z by {method}
train optimizer sgd(lr = 0.5) batch 20 epochs 1
"""

POOLS = """
model topographic_small
data synthetic(dim = 24, atoms = 16, count = 64)
input x[24]
latent z[16]
graph M = torus(4, 4)
pools P = windows(M, size = 3, stride = 1, sigma = 1)
param W[24, 16] init samples(x) constrain col_norm == 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : 0.35 * group_l2(z, P)
infer z by fista(steps = 2000, tol = 1e-6)
train optimizer sgd(lr = 0.5) batch 20 epochs 1
"""

SPECS = {
    "fista": LASSO.format(method="fista(steps = 1000, tol = 1e-5)"),
    "lars": LASSO.format(method="lars"),
    "admm": POOLS,  # overlapping pools: fista hands the problem to ADMM
}
EIGENVALUES = {"fista": 1, "lars": 0, "admm": 0}  # λ_max computed on a first call (lars and ADMM need none)


class Counts:
    """How many times H was read off the energy and λ_max computed, since the block began."""

    def __init__(self):
        self.gram = mock.patch.object(problem_module, "read_hessian", wraps=problem_module.read_hessian)
        self.eigen = mock.patch.object(problem_module, "largest_eigenvalue", wraps=problem_module.largest_eigenvalue)

    @contextmanager
    def counting(self):
        with self.gram as gram, self.eigen as eigen:
            yield lambda: (gram.call_count, eigen.call_count)


def load(spec: str, seed: int = 0):
    """The model of ``spec`` with the data's known dictionary (well conditioned: FISTA converges fast)."""
    model = energydsl.load(spec.replace("synthetic(", f"synthetic(seed = {seed}, "))
    with torch.no_grad():
        model.params["W"].copy_(model.dataset.extras["dictionary"])
    return model


def batches(model):
    """Two batches of 12 different samples."""
    return model.dataset.x_test[:12], model.dataset.x_train[:12]


def fresh_codes(spec: str, W: torch.Tensor, x) -> torch.Tensor:
    """The codes of a newly built model (nothing cached) with the dictionary ``W``."""
    model = energydsl.load(spec)
    model.params["W"] = torch.nn.Parameter(W.detach().clone())
    return model.infer(x)


def assert_optimal(model, x, z, spec: str):
    """``z`` has the optimal energy of ``model`` on ``x``: that of a fresh model's codes, to 1e-4 relative.
    (Energies, not codes: a dictionary drawn from the samples can have several optimal codes.)  Codes
    from a Hessian kept for other parameters are far from optimal for these."""
    with torch.no_grad():
        found, fresh = model.energy(x, z), model.energy(x, fresh_codes(spec, model.params["W"].float(), x).to(z))
    torch.testing.assert_close(found, fresh, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", SPECS)
def test_second_batch_pays_no_gram_or_eigenvalue(method):
    model = load(SPECS[method])
    first, second = batches(model)
    with Counts().counting() as counts:
        model.infer(first)
        assert counts() == (1, EIGENVALUES[method])
        z = model.infer(second)
        assert counts() == (1, EIGENVALUES[method])  # nothing more on a new batch
    assert_optimal(model, second, z, SPECS[method])


@pytest.mark.parametrize("method", SPECS)
def test_an_optimizer_step_makes_the_next_batch_recompute(method):
    spec = SPECS[method]
    model = load(spec)
    first, second = batches(model)
    model.infer(first)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.energy(first, model.infer(first)).mean().backward()
    optimizer.step()  # in place: the same tensor, a new version
    model.project_()
    with Counts().counting() as counts:
        z = model.infer(second)
        assert counts() == (1, EIGENVALUES[method])
    assert_optimal(model, second, z, spec)


@pytest.mark.parametrize("change", ["assign", "copy_", "load_state_dict", "double"])
def test_every_change_of_the_dictionary_makes_the_next_batch_recompute(change):
    spec = SPECS["fista"]
    model, other = load(spec), load(spec, seed=7)
    first, second = batches(model)
    model.infer(first)
    W = other.params["W"].detach().clone()
    assert not torch.allclose(W, model.params["W"])
    with torch.no_grad():
        if change == "assign":
            model.params["W"] = torch.nn.Parameter(W)
        elif change == "copy_":
            model.params["W"].copy_(W)
        elif change == "load_state_dict":
            model.load_state_dict(other.state_dict())
        else:
            model.double()
    with Counts().counting() as counts:
        z = model.infer(second)
        assert counts() == (1, 1)
    assert_optimal(model, second, z, spec)


def test_a_hessian_that_differs_by_sample_is_read_again_for_a_batch_of_one():
    """½‖x ⊙ z − x‖² + μ‖z‖₁ has H = diag(x²), the sample's own: a batch of one passes the shared-Hessian
    check with any H, so the kept one is checked on every batch.  The optimum is zᵢ = max(0, 1 − μ / xᵢ²)."""
    model = energydsl.load("""
model scaled
data synthetic(dim = 8, atoms = 8, count = 40)
input x[8]
latent z[8]
energy
  recon  : 0.5 * sqerr(x * z, x)
  sparse : 0.01 * l1(z)
infer z by fista(steps = 2000, tol = 1e-9)
""")
    x = model.dataset.x_test[:3]
    for sample in x:
        z = model.infer(sample[None])
        torch.testing.assert_close(z[0], (1 - 0.01 / sample**2).clamp(min=0), atol=1e-5, rtol=0)
