"""Orthogonal matching pursuit (``infer z by omp(k = ...)``, energydsl/ops/pursuit.py).

The signed pursuit is checked against scikit-learn's ``orthogonal_mp_gram`` (same supports,
same codes); the nonnegative one against what it must be: scipy's NNLS when k leaves the
support free, the brute-force optimum for k = 1, and on its own support the NNLS optimum,
with no atom left that could lower the energy when it stops short of k.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from sklearn.linear_model import orthogonal_mp_gram

import energydsl
import energydsl.ops.pursuit as pursuit
from energydsl.errors import NumericalError
from energydsl.ops.pursuit import omp_gram, orthogonal_matching_pursuit
from energydsl.reporting.explain import explain


def random_problem(seed: int, dim: int = 30, atoms: int = 60, samples: int = 40, coherent: bool = False,
                   positive: bool = False):  # fmt: skip
    """(D, X): unit-norm atoms (coherent ones share a common direction) and signals, float64.
    ``positive``: atoms and signals of uniform entries in [0, 1], as nonnegative data are; their
    NNLS often drops an atom on the way."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand if positive else torch.randn
    D = draw(dim, atoms, generator=generator, dtype=torch.float64)
    if coherent:
        D += 2 * torch.randn(dim, 1, generator=generator, dtype=torch.float64)
    D /= D.norm(dim=0)
    return D, draw(samples, dim, generator=generator, dtype=torch.float64)


def energy(D, X, Z) -> torch.Tensor:
    return ((X - Z @ D.T) ** 2).sum(1)


def sklearn_omp(D, X, k) -> torch.Tensor:
    codes = orthogonal_mp_gram((D.T @ D).numpy(), (X @ D).numpy().T, n_nonzero_coefs=k)
    return torch.from_numpy(codes.T.copy())


# --------------------------------------------------------------------------- signed


@pytest.mark.parametrize("coherent", [False, True])
@pytest.mark.parametrize("k", [1, 4, 12])
def test_same_supports_and_codes_as_sklearn(k, coherent):
    D, X = random_problem(seed=k, coherent=coherent)
    Z = orthogonal_matching_pursuit(D, X, k)
    reference = sklearn_omp(D, X, k)
    assert torch.equal(Z != 0, reference != 0)
    assert (Z != 0).sum(1).eq(k).all()
    assert torch.allclose(Z, reference, atol=1e-6, rtol=0)


def test_atoms_of_any_norm_compete_by_direction():
    """Scaling atom j by sⱼ picks the same atoms and divides its coefficient by sⱼ."""
    D, X = random_problem(seed=3)
    scales = torch.linspace(0.1, 10, D.shape[1], dtype=torch.float64)
    Z = orthogonal_matching_pursuit(D * scales, X, 6)
    assert torch.allclose(Z * scales, sklearn_omp(D, X, 6), atol=1e-6, rtol=0)


def test_k_one_is_the_best_single_atom_by_brute_force():
    D, X = random_problem(seed=4, dim=8, atoms=12)
    D = D * torch.linspace(0.5, 2, 12, dtype=torch.float64)
    for nonneg in (False, True):
        Z = orthogonal_matching_pursuit(D, X, 1, nonneg)
        best = brute_force(D, X, 1, nonneg)
        assert torch.allclose(energy(D, X, Z), best, rtol=1e-12)


def test_a_sample_stops_when_its_residual_is_zero():
    D, _ = random_problem(seed=5)
    truth = torch.zeros(3, D.shape[1], dtype=torch.float64)
    truth[0, [3, 17]] = torch.tensor([1.5, -0.7], dtype=torch.float64)  # two atoms, then nothing left
    truth[1, 8] = 2.0
    X = truth @ D.T  # and the third sample is x = 0
    Z = orthogonal_matching_pursuit(D, X, 10)
    assert torch.allclose(Z, truth, atol=1e-12)


def test_a_repeated_atom_is_never_chosen_twice():
    D, X = random_problem(seed=6, dim=10, atoms=12)
    D = torch.cat([D, D[:, :6], torch.zeros(10, 1, dtype=torch.float64)], dim=1)  # 6 copies and an atom of norm 0
    Z = orthogonal_matching_pursuit(D, X, 10)
    assert Z.isfinite().all() and (Z != 0).sum(1).le(10).all()
    assert (Z[:, :6] != 0).logical_and(Z[:, 12:18] != 0).sum() == 0  # an atom and its copy never both
    assert torch.allclose(energy(D, X, Z), energy(D[:, :12], X, sklearn_omp(D[:, :12], X, 10)), rtol=1e-9)


def test_blocks_of_samples_give_the_same_codes(monkeypatch):
    D, X = random_problem(seed=7, samples=50)
    whole = omp_gram(D.T @ D, X @ D, 5)
    monkeypatch.setattr(pursuit, "BLOCK_BYTES", 1)
    monkeypatch.setattr(pursuit, "BLOCK_SAMPLES", 8)  # 7 blocks, the last one short
    assert torch.equal(omp_gram(D.T @ D, X @ D, 5), whole)


def test_float32_in_float32_out():
    D, X = random_problem(seed=8)
    Z = orthogonal_matching_pursuit(D.float(), X.float(), 5)
    assert Z.dtype == torch.float32
    assert torch.allclose(Z.double(), sklearn_omp(D.float().double(), X.float().double(), 5), atol=1e-5)


# --------------------------------------------------------------------------- nonnegative


def brute_force(D, X, k, nonneg) -> torch.Tensor:
    """The best energy over every support of at most k atoms (NNLS or least squares on each)."""
    best = energy(D, X, torch.zeros(X.shape[0], D.shape[1], dtype=D.dtype))
    for size in range(1, k + 1):
        for support in itertools.combinations(range(D.shape[1]), size):
            A = D[:, support].numpy()
            for i, x in enumerate(X.numpy()):
                residual = nnls(A, x)[1] ** 2 if nonneg else np.linalg.lstsq(A, x)[1].sum()
                best[i] = min(float(best[i]), residual)
    return best


def counting_drops(monkeypatch) -> list[int]:
    """How many samples lost an atom from their support, call by call."""
    calls, drop = [], pursuit._drop
    monkeypatch.setattr(pursuit, "_drop", lambda s, *rest: calls.append(s.rows.numel()) or drop(s, *rest))
    return calls


@pytest.mark.parametrize("positive", [False, True])
def test_nonneg_with_every_atom_allowed_is_nnls(positive, monkeypatch):
    """k = m leaves Lawson–Hanson's active set free: the codes are scipy's NNLS (unique here, as
    the dictionary has more rows than atoms)."""
    drops = counting_drops(monkeypatch)
    D, X = random_problem(seed=9, dim=20, atoms=12, samples=60, positive=positive)
    Z = orthogonal_matching_pursuit(D, X, 12, nonneg=True)
    reference = torch.from_numpy(np.stack([nnls(D.numpy(), x)[0] for x in X.numpy()]))
    assert torch.allclose(Z, reference, atol=1e-9, rtol=0)
    if positive:
        assert drops, "no atom left a support: the test does not reach the Lawson–Hanson step back"


def test_nonneg_codes_are_nnls_on_their_support_and_stop_only_when_they_must(monkeypatch):
    drops = counting_drops(monkeypatch)
    D, X = random_problem(seed=10, dim=12, atoms=40, samples=60, positive=True)
    k = 8
    Z = orthogonal_matching_pursuit(D, X, k, nonneg=True)
    assert (Z >= 0).all() and (Z != 0).sum(1).le(k).all()
    assert drops, "no atom left a support: the test does not reach the Lawson–Hanson step back"
    correlations = (X - Z @ D.T) @ D  # minus the gradient of ½‖x − Dz‖²
    for z, x, c in zip(Z, X, correlations):
        support = z.nonzero().squeeze(1)
        on_support, _ = nnls(D[:, support].numpy(), x.numpy())
        assert np.allclose(z[support].numpy(), on_support, atol=1e-9)
        if support.numel() < k:  # it stopped short of k: no atom can lower the energy any more
            assert c.max() <= 1e-9


def test_nonneg_never_beats_brute_force_and_finds_planted_codes():
    D, X = random_problem(seed=11, dim=8, atoms=10, samples=12)
    Z = orthogonal_matching_pursuit(D, X, 2, nonneg=True)
    best = brute_force(D, X, 2, nonneg=True)
    assert (energy(D, X, Z) >= best - 1e-12).all() and (energy(D, X, Z) > best + 1e-6).any()  # greedy
    D, _ = random_problem(seed=12, dim=40, atoms=10)  # nearly orthogonal atoms: OMP recovers 2-sparse codes
    planted = torch.zeros(12, 10, dtype=torch.float64)
    planted[torch.arange(12), torch.arange(12) % 10] = 1.0
    planted[torch.arange(12), (torch.arange(12) + 3) % 10] = 0.5
    Z = orthogonal_matching_pursuit(D, planted @ D.T, 2, nonneg=True)
    assert torch.allclose(Z, planted, atol=1e-9)


# --------------------------------------------------------------------------- in a spec

OMP_SPEC = """
model codes
data synthetic(dim = 16, atoms = 40, k = 4, count = 100, noise = 0.3)
input x[16]
latent z[40] {bound}
param W[16, 40] init normal(1) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.1 * l1(z)
infer z by {method}
train
  optimizer sgd(lr = 0.3)
  batch 25
  epochs 3
"""


def spec_model(method="omp(k = 3) terms recon", bound=""):
    return energydsl.load(OMP_SPEC.format(method=method, bound=bound))


@pytest.mark.parametrize("bound", ["", ">= 0"])
def test_infer_by_omp_gives_k_sparse_codes_of_the_energy(bound):
    model = spec_model(bound=bound)
    assert str(model.program.methods[0]) == "omp(k = 3)"
    x = model.dataset.x_test[:20]
    z = model.infer(x)
    assert z.shape == (20, 40) and (z != 0).sum(1).le(3).all() and (z != 0).sum(1).eq(3).any()
    if bound:
        assert (z >= 0).all()
    W = model.params["W"].detach().double()
    expected = orthogonal_matching_pursuit(W, x.double(), 3, nonneg=bool(bound))
    assert torch.allclose(z.double(), expected, atol=1e-4)
    # the l1 term is left out of the inference, not of the energy
    assert torch.allclose(model.terms(x, z)["recon"], 0.5 * energy(W, x.double(), z.double()).float(), rtol=1e-5)
    assert torch.equal(model.infer(x, steps=1, tol=0.5), z)  # omp has neither: the overrides leave it alone


def test_omp_refuses_a_hessian_that_differs_per_sample():
    spec = OMP_SPEC.replace("sqerr(x, W @ z)", "sqerr(x, x * (W @ z))").format(method="omp(k = 3) terms recon",
                                                                               bound="")  # fmt: skip
    model = energydsl.load(spec)
    with pytest.raises(NumericalError, match="share one Hessian"):
        model.infer(model.dataset.x_test[:8])


@pytest.mark.slow  # several seconds of training
def test_training_with_omp_lowers_the_energy():
    model = spec_model()
    x = model.dataset.x_test
    before = model.terms(x, model.infer(x))["recon"].mean().item()
    energydsl.train(model)
    after = model.terms(x, model.infer(x))["recon"].mean().item()
    assert after < before


@pytest.mark.parametrize(("method", "message"), [
    ("omp(k = 2.5)", "omp's k must be a whole number >= 1, got 2.5"),
    ("omp(k = 0)", "omp's k must be a whole number >= 1, got 0"),
    ("omp(steps = 3)", "omp has no option 'steps'"),
    ("encoder then omp(k = 3) terms recon", "omp builds each code from z = 0"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(method, message):
    with pytest.raises(energydsl.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_model(method)


def test_explain_describes_the_pursuit():
    text = explain(spec_model().program)
    assert "Inference  z by omp(k = 3)" in text
    assert "Orthogonal matching pursuit" in text and "omp setup, once per batch (Gram matrix)" in text
    assert "enter the pursuit" in text
