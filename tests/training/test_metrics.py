"""The held-out metrics: FVU and explained variance, L0, dense and unused units, firing density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import energydsl
from energydsl.training.metrics import DENSE_ABOVE, Spread, evaluate, held_out

# z = relu(E @ x + b), x̂ = D @ z: with E, b and D set by hand the reconstruction is known.
KNOWN = """
data synthetic(dim = 6, atoms = 8, count = 500, k = 3, seed = 1)
input x[6]
latent z[4]
param D[6, 4]
param E[4, 6]
param b[4]
encoder z = relu(E @ x + b)
energy
  recon : 0.5 * sqerr(x, D @ z)
infer z by encoder
"""


@pytest.fixture
def known():
    """Unit 0 passes x0's positive part, unit 1 never fires, unit 2 fires on about 5 % of the
    samples (x2 above its 95th percentile), unit 3 passes x3's positive part; D halves them."""
    model = energydsl.load(KNOWN)
    x = model.dataset.x_test.double().numpy()
    threshold = float(np.quantile(x[:, 2], 0.95))
    E, b, D = torch.zeros(4, 6), torch.tensor([0.0, -1.0, -threshold, 0.0]), torch.zeros(6, 4)
    E[0, 0] = E[2, 2] = E[3, 3] = 1.0
    D[0, 0] = D[2, 2] = D[3, 3] = 0.5
    with torch.no_grad():
        for name, value in (("E", E), ("b", b), ("D", D)):
            model.params[name].copy_(value)
    z = np.maximum(x @ E.double().numpy().T + b.double().numpy(), 0)
    return model, x, z, z @ D.double().numpy().T


def test_fvu_and_explained_variance_against_numpy(known):
    model, x, z, estimate = known
    metrics = evaluate(model, model.dataset)
    fvu = ((x - estimate) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert 0.5 < fvu < 1  # a reconstruction that explains some variance, not all
    assert metrics["fvu"] == pytest.approx(fvu, abs=2e-6)
    assert metrics["explained_variance"] == pytest.approx(1 - fvu, abs=2e-6)
    assert metrics["l0"] == pytest.approx((z != 0).sum(axis=1).mean(), abs=1e-6)


def test_dense_unused_and_density_against_numpy(known):
    model, x, z, _ = known
    result = held_out(model, model.dataset)
    density = (z != 0).mean(axis=0)
    assert np.allclose(result.density.numpy(), density)
    assert 0 < density[2] <= DENSE_ABOVE < density[0]  # the fixture's unit 2 is rare, unit 0 dense
    assert result.metrics["units.dense"] == (density > DENSE_ABOVE).sum() == 2
    assert result.metrics["units.unused"] == (density == 0).sum() == 1
    assert result.metrics["units.dead"] == 0  # the tracker's, not the held-out set's: nothing trained yet


def test_the_held_out_mean_in_one_pass_keeps_its_precision():
    """Batches of uneven size, and a mean 10⁶ times the spread (as in language-model activations):
    the merged Σ‖x − x̄‖² matches the two-pass value."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)) + 1e6
    spread = Spread()
    for part in np.array_split(x, [7, 300, 301, 777]):
        spread.add(torch.from_numpy(part))
    assert spread.count == 1000
    assert np.allclose(spread.mean.numpy(), x.mean(axis=0), rtol=0, atol=1e-9)
    assert spread.squares == pytest.approx(((x - x.mean(axis=0)) ** 2).sum(), rel=1e-9)


def test_metrics_of_a_spec_without_a_reconstruction_have_no_fvu():
    spec = KNOWN.replace("recon : 0.5 * sqerr(x, D @ z)", "sparse : l1(z)")
    metrics = evaluate(energydsl.load(spec), energydsl.load(spec).dataset)
    assert "fvu" not in metrics and "explained_variance" not in metrics
    assert {"l0", "units.dead", "units.dense", "units.unused"} <= metrics.keys()
