"""Inference reaches the exact optimum: FISTA/ISTA against scikit-learn and cvxpy.

A spec is compiled from inline source, its dictionary is set to a known unit-norm
matrix, and ``model.infer`` is compared per sample with an exact solver on the
same objective, written out independently in float64 numpy.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.linear_model import Lasso

import energydsl
from energydsl.data import Dataset
from energydsl.data.synthetic import synthetic
from energydsl.solvers.fista import fista
from energydsl.solvers.problem import SAFETY, Problem, lipschitz

DIM, ATOMS, LAM = 16, 40, 0.05
BATCH = 12
GAP = 1e-4  # relative objective gap allowed per sample



LASSO_SPEC = """
model lasso
data synthetic(dim = 16, atoms = 40, k = 4, count = 100, noise = 0.3)
const lam = 0.05
const mu = 0.1
input x[16]
latent z[40] {bound}
{extra}
param W[16, 40] init samples(x) constrain col_norm == 1
{params}
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
{terms}
infer z by {method}
"""


def build(method="fista(steps = 1000, tol = 1e-7)", bound="", extra="", params="", terms="", data=None):
    source = LASSO_SPEC.format(method=method, bound=bound, extra=extra, params=params, terms=terms)
    model = energydsl.load(source, data=data)
    dictionary = model.dataset.extras["dictionary"]
    assert torch.allclose(dictionary.norm(dim=0), torch.ones(ATOMS))
    with torch.no_grad():
        model.params["W"].copy_(dictionary)
    x = model.dataset.x_test[:BATCH]
    return model, dictionary.double().numpy(), x


def lasso_objective(W, x, z, lam=LAM):
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * ((x - z @ W.T) ** 2).sum(axis=1) + lam * np.abs(z).sum(axis=1)


def sklearn_lasso(W, x, lam=LAM, positive=False):
    """scikit-learn minimises 1/(2n)‖x − Wz‖² + α‖z‖₁ with n = rows of W: α = λ/n."""
    solver = Lasso(alpha=lam / W.shape[0], fit_intercept=False, positive=positive, tol=1e-14, max_iter=1_000_000)
    return np.stack([solver.fit(W, xi).coef_.copy() for xi in np.asarray(x, dtype=np.float64)])


def relative_gap(value, reference):
    return (value - reference) / reference


def assert_optimal(value, reference, tol=GAP):
    gap = relative_gap(value, reference)
    # |gap|: a reference far above the value would mean the two solved different problems
    assert np.all(np.abs(gap) <= tol), f"relative objective gaps {gap}"


def solve(problem: cp.Problem) -> None:
    problem.solve(solver="CLARABEL")
    assert problem.status == cp.OPTIMAL


# --------------------------------------------------------------------------- lasso


@pytest.fixture(scope="module")
def lasso():
    model, W, x = build()
    reference = sklearn_lasso(W, x.double().numpy())
    return model, W, x, reference


def test_fista_reaches_lasso_optimum(lasso):
    model, W, x, reference = lasso
    z = model.infer(x, steps=1000, tol=1e-7)
    assert z.shape == (BATCH, ATOMS)
    F_ref = lasso_objective(W, x, reference)
    assert_optimal(lasso_objective(W, x, z.numpy()), F_ref)
    # the codes themselves agree (the lasso solution is unique for W in general position)
    np.testing.assert_allclose(z.numpy(), reference, atol=2e-3)
    # and the model's energy is the same objective
    np.testing.assert_allclose(model.energy(x, z).detach().numpy(), lasso_objective(W, x, z.numpy()), rtol=1e-5)


def test_ista_reaches_the_same_optimum_with_more_steps(lasso):
    _, W, x, reference = lasso
    model, _, _ = build(method="ista(steps = 10000, tol = 0)")
    F_ref = lasso_objective(W, x, reference)
    values = {steps: lasso_objective(W, x, model.infer(x, steps=steps, tol=0).numpy()) for steps in (30, 300, 10000)}
    assert_optimal(values[10000], F_ref)
    # ISTA is a descent method: more steps never do worse (float32 noise aside)
    assert np.all(values[30] >= values[300] - 1e-6 * F_ref)
    assert np.all(values[300] >= values[10000] - 1e-6 * F_ref)
    # acceleration pays: with the same 300 steps FISTA is far closer than ISTA
    fista_model, _, _ = build(method="fista(steps = 300, tol = 0)")
    fista_300 = lasso_objective(W, x, fista_model.infer(x, steps=300, tol=0).numpy())
    assert relative_gap(fista_300, F_ref).max() < relative_gap(values[300], F_ref).max()


def test_nonnegative_lasso_matches_sklearn_positive():
    model, W, x = build(bound=">= 0")
    z = model.infer(x, steps=1000, tol=1e-7)
    assert (z >= 0).all()
    reference = sklearn_lasso(W, x.double().numpy(), positive=True)
    assert_optimal(lasso_objective(W, x, z.numpy()), lasso_objective(W, x, reference))
    np.testing.assert_allclose(z.numpy(), reference, atol=2e-3)


@pytest.mark.parametrize("bound", ["", ">= 0"])
def test_samples_that_stop_early_are_still_near_their_optimum(bound):
    """Each sample leaves the batch on its own step criterion; a loose tol still lands close
    (relative step 1e-3 measured up to 1.8e-3 from the optimum in objective here)."""
    model, W, x = build(bound=bound)
    z = model.infer(x, steps=5000, tol=1e-3).numpy()
    reference = sklearn_lasso(W, x.double().numpy(), positive=bool(bound))
    assert_optimal(lasso_objective(W, x, z), lasso_objective(W, x, reference), tol=1e-2)


def test_group_lasso_matches_cvxpy():
    model, W, x = build(extra="pools P = blocks(z, 4)", terms="  group  : mu * group_l2(z, P)")
    z = model.infer(x, steps=2000, tol=1e-8).numpy()
    blocks = [list(range(s, s + 4)) for s in range(0, ATOMS, 4)]

    def objective(zz):
        return lasso_objective(W, x, zz) + 0.1 * sum(np.linalg.norm(zz[:, g], axis=1) for g in blocks)

    reference = []
    for xi in x.double().numpy():
        u = cp.Variable(ATOMS)
        group = sum(cp.norm(u[g], 2) for g in blocks)
        solve(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(xi - W @ u) + LAM * cp.norm1(u) + 0.1 * group)))
        reference.append(u.value)
    assert_optimal(objective(z), objective(np.stack(reference)))
    # whole blocks are zero, as group sparsity should give
    block_norms = np.stack([np.linalg.norm(z[:, g], axis=1) for g in blocks], axis=1)
    assert (block_norms == 0).any()


def test_encoder_then_fista_reaches_the_optimum(lasso):
    _, W, x, reference = lasso
    model, _, _ = build(
        method="encoder then fista(steps = 1000, tol = 1e-7)",
        params="param E[40, 16] init normal(0.3)\nencoder z = shrink(E @ x, 0.05)",
    )
    z_enc = model.encode(x)
    assert (z_enc != 0).any()
    z = model.infer(x)
    assert_optimal(lasso_objective(W, x, z.numpy()), lasso_objective(W, x, reference))

    # one step of refinement is one prox-gradient step from the encoder's code: for the units it
    # leaves non-zero, one − enc = −(∇f(enc) + λ·sign(one))/L with one step size L per sample,
    # and L must be a safe one: λ_max(WᵀW) ≤ L ≤ SAFETY·λ_max(WᵀW) (+1% for float32)
    one = model.infer(x, steps=1).double().numpy()
    enc = z_enc.double().numpy()
    assert np.all(lasso_objective(W, x, one) <= lasso_objective(W, x, enc) + 1e-6)
    grad = (enc @ W.T - x.double().numpy()) @ W
    top = np.linalg.eigvalsh(W.T @ W).max()
    for i in range(BATCH):
        active = np.abs(one[i]) > 1e-3
        moved = np.abs(one[i] - enc[i]) > 1e-3
        steps = -(grad[i] + LAM * np.sign(one[i]))[active & moved] / (one[i] - enc[i])[active & moved]
        assert steps.size >= 3
        L = np.median(steps)
        np.testing.assert_allclose(steps, L, rtol=1e-3)
        assert top * 0.999 <= L <= SAFETY * top * 1.01
        v = enc[i] - grad[i] / L
        np.testing.assert_allclose(one[i], np.sign(v) * np.maximum(np.abs(v) - LAM / L, 0), atol=1e-5)


# --------------------------------------------------------------------------- non-quadratic smooth part


LABELLED_SPEC = """
model labelled
data synthetic(dim = 10)
const lam = 0.05
input x[10]
label y : 3 classes
latent z[16]
param W[10, 16] init normal(0.5)
param C[3, 16] init normal(1.0)
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
  class  : xent(C @ z, y)
infer z by fista(steps = 3000, tol = 1e-9)
"""


@pytest.fixture(scope="module")
def labelled():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 10, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    data = Dataset("toy", x[:30], x[30:], y[:30], y[30:], 3)
    model = energydsl.load(LABELLED_SPEC, data=data)
    return model, x[:8], y[:8]


def labelled_parts(model):
    W = model.params["W"].detach().double().numpy()
    C = model.params["C"].detach().double().numpy()
    return W, C


def labelled_objective(W, C, x, y, z, lam=0.05):
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    logits = z @ C.T
    xent = logsumexp(logits, axis=1) - logits[np.arange(len(y)), np.asarray(y)]
    return 0.5 * ((x - z @ W.T) ** 2).sum(axis=1) + lam * np.abs(z).sum(axis=1) + xent


def test_xent_problem_is_not_quadratic(labelled):
    model, x, y = labelled
    assert model.problem(model.preprocess(x), y, None).quadratic is False
    assert model.problem(model.preprocess(x), None, None).quadratic is True  # no label: no xent


@pytest.mark.slow
def test_fista_with_xent_reaches_the_optimum(labelled):
    """A non-quadratic smooth part (backtracking): compare with cvxpy and check the fixed point."""
    model, x, y = labelled
    W, C = labelled_parts(model)
    z = model.infer(x, y).double().numpy()
    xs = x.double().numpy()
    reference = []
    for xi, yi in zip(xs, y.tolist()):
        u = cp.Variable(16)
        logits = C @ u
        objective = 0.5 * cp.sum_squares(xi - W @ u) + 0.05 * cp.norm1(u) + cp.log_sum_exp(logits) - logits[yi]
        solve(cp.Problem(cp.Minimize(objective)))
        reference.append(u.value)
    assert_optimal(labelled_objective(W, C, xs, y, z), labelled_objective(W, C, xs, y, np.stack(reference)))

    # prox-gradient fixed point: z = prox_{λ/L}(z − ∇f(z)/L), f = recon + xent (gradient in float64)
    logits = z @ C.T
    p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    p[np.arange(len(y)), y.numpy()] -= 1
    grad = (z @ W.T - xs) @ W + p @ C
    L = np.linalg.eigvalsh(W.T @ W).max() + 0.5 * np.linalg.eigvalsh(C.T @ C).max()
    v = z - grad / L
    residual = L * np.linalg.norm(z - np.sign(v) * np.maximum(np.abs(v) - 0.05 / L, 0), axis=1)
    assert residual.max() <= 1e-4 * max(1.0, np.abs(grad).max())


def test_inference_without_label_ignores_xent(labelled):
    model, x, _ = labelled
    W, _ = labelled_parts(model)
    z = model.infer(x).double().numpy()
    reference = sklearn_lasso(W, x.double().numpy())
    assert_optimal(lasso_objective(W, x, z), lasso_objective(W, x, reference))


# --------------------------------------------------------------------------- Lipschitz constant


def test_lipschitz_matches_top_eigenvalue_of_quadratic(lasso):
    model, W, x, _ = lasso
    problem = model.problem(model.preprocess(x), None, None)
    assert problem.quadratic
    estimate = lipschitz(problem, torch.zeros(BATCH, ATOMS))
    assert estimate.shape == (BATCH, 1)
    top = np.linalg.eigvalsh(W.T @ W).max()
    np.testing.assert_allclose(estimate.numpy(), top, rtol=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lipschitz_with_weighted_quadratic_terms(seed):
    """E = ½·2‖x − Wz‖² + 0.3‖z − Bx‖²: Hessian 2WᵀW + 0.6 I."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(12, 20, generator=gen)
    x = torch.randn(6, 12, generator=gen)
    B = torch.randn(20, 12, generator=gen)

    def smooth(z):
        return (x - z @ W.T).pow(2).sum(1) + 0.3 * (z - x @ B.T).pow(2).sum(1)

    problem = Problem(smooth, lambda v, step: v, quadratic=True)
    estimate = lipschitz(problem, torch.randn(6, 20, generator=gen))
    W64 = W.double().numpy()
    top = 2 * np.linalg.eigvalsh(W64.T @ W64).max() + 0.6
    np.testing.assert_allclose(estimate.numpy(), top, rtol=0.01)


def test_lipschitz_is_per_sample_for_non_quadratic(labelled):
    """Each sample's estimate is the top eigenvalue of its own Hessian (block-diagonal batch)."""
    _, x, y = labelled
    data = Dataset("toy", x, x, y, y, 3)
    model = energydsl.load(LABELLED_SPEC.replace("normal(1.0)", "normal(3.0)"), data=data)
    W, C = labelled_parts(model)
    gen = torch.Generator().manual_seed(9)
    z = 0.3 * torch.randn(8, 16, generator=gen)
    estimate = lipschitz(model.problem(model.preprocess(x), y, None), z).numpy().ravel()
    logits = z.double().numpy() @ C.T
    p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    tops = []
    for pi in p:
        hessian = W.T @ W + C.T @ (np.diag(pi) - np.outer(pi, pi)) @ C
        tops.append(np.linalg.eigvalsh(hessian).max())
    assert np.ptp(tops) > 0.3 * np.max(tops)  # the samples really differ
    np.testing.assert_allclose(estimate, tops, rtol=0.01)


def test_fista_function_on_a_handmade_problem():
    """fista() itself, outside any spec: a batch of lasso problems with per-sample λ."""
    data = synthetic(dim=8, atoms=12, k=2, count=10, noise=0.2, seed=3)
    W = data.extras["dictionary"]
    x = data.x_train[:6]
    lams = torch.tensor([[0.01], [0.05], [0.1], [0.2], [0.3], [0.02]])

    def smooth(z):
        return 0.5 * (x - z @ W.T).pow(2).sum(1)

    def prox(v, step, at):
        return torch.sign(v) * torch.clamp(v.abs() - step * lams, min=0)

    z = fista(Problem(smooth, prox, quadratic=True), torch.zeros(6, 12), steps=2000, tol=1e-8)
    W64, xs = W.double().numpy(), x.double().numpy()
    for i in range(6):
        lam = float(lams[i])
        reference = sklearn_lasso(W64, xs[i : i + 1], lam=lam)
        assert_optimal(lasso_objective(W64, xs[i : i + 1], z[i : i + 1].numpy(), lam),
                       lasso_objective(W64, xs[i : i + 1], reference, lam))  # fmt: skip


def test_inference_terms_leave_the_other_terms_out_of_z_star(lasso):
    """`infer z by fista(...) terms recon, sparse`: z* is the lasso optimum even though the
    energy has a third term pulling z towards an encoder's prediction (LISTA's fit term)."""
    _, W, x, reference = lasso
    model, _, _ = build(method="fista(steps = 1000, tol = 1e-7) terms recon, sparse",
                        params="param E[40, 16] init normal(1)", terms="  fit : 10 * sqerr(z, E @ x)")  # fmt: skip
    assert model.program.inference_terms == ("recon", "sparse")
    z = model.infer(x)
    np.testing.assert_allclose(z.numpy(), reference, atol=2e-3)
    # without the restriction the fit term moves z* far from the lasso optimum
    pulled, _, _ = build(params="param E[40, 16] init normal(1)", terms="  fit : 10 * sqerr(z, E @ x)")
    assert np.abs(pulled.infer(x).numpy() - reference).max() > 0.1
    # and the energy still counts every term
    assert set(model.terms(x, z)) == {"recon", "sparse", "fit"}
