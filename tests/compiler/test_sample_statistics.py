"""The initialisers ``mean(x)`` and ``median(x)``: a decoder bias at the data's mean or geometric median."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import energydsl
from energydsl.compiler import initialisers
from energydsl.errors import SpecError
from energydsl.ops.geometric_median import geometric_median

SPEC = """data synthetic(dim = 6, atoms = 10, count = 120, k = 2, seed = 4)
input x[d]
latent z[10]
param b_mean[d] init mean(x)
param b_dec[d] init median(x)
param D[d, 10]
energy
  recon : 0.5 * sqerr(x, D @ z + b_dec)
  sparse : 0.1 * l1(z)
infer z by fista(steps = 5)
"""


def scipy_median(points: np.ndarray) -> np.ndarray:
    def gradient(m):
        diff = m - points
        return (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(axis=0)

    objective = lambda m: np.linalg.norm(points - m, axis=1).sum()  # noqa: E731
    return minimize(objective, points.mean(axis=0), jac=gradient, method="BFGS", options={"gtol": 1e-10}).x


def test_mean_and_median_of_the_training_samples():
    model = energydsl.load(SPEC)
    rows = model.dataset.x_train.double().numpy()
    np.testing.assert_allclose(model.params["b_mean"].detach().numpy(), rows.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.params["b_dec"].detach().numpy(), scipy_median(rows), rtol=0, atol=1e-5)


def test_they_read_the_samples_as_the_input_holds_them_normalised_and_reshaped():
    spec = SPEC.replace("input x[d]", "input x[1, 3, 2] normalize l2").replace("param b_mean[d]", "param b_mean[1, 3, 2]")
    spec = spec.replace("[d]", "[6]").replace("[d, 10]", "[6, 10]").replace("sqerr(x,", "sqerr(flatten(x),")
    model = energydsl.load(spec)
    rows = model.dataset.x_train.double()
    rows = rows / rows.norm(dim=1, keepdim=True)
    assert model.params["b_mean"].shape == (1, 3, 2)
    torch.testing.assert_close(model.params["b_mean"].detach().flatten(), rows.mean(dim=0).float())
    np.testing.assert_allclose(model.params["b_dec"].detach().numpy(), scipy_median(rows.numpy()), atol=1e-5)


def test_the_median_reads_a_seeded_subsample_of_many_samples(monkeypatch):
    monkeypatch.setattr(initialisers, "MEDIAN_SAMPLES", 40)
    spec = SPEC.replace("param b_mean[d] init mean(x)\n", "")
    model = energydsl.load(spec)
    rows = model.dataset.x_train
    assert rows.shape[0] > 40
    chosen = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:40].sort().values
    expected = geometric_median(rows[chosen]).float()
    torch.testing.assert_close(model.params["b_dec"].detach(), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, geometric_median(rows).float(), atol=1e-4)  # the whole set's differs
    torch.testing.assert_close(energydsl.load(spec).params["b_dec"], model.params["b_dec"], rtol=0, atol=0)


@pytest.mark.parametrize("old, new, message", [
    ("init median(x)", "init median(D)",
     "5:28: median() sums up the training samples of the input 'x' (write median(x))"),
    ("param b_dec[d] init median(x)", "param b_dec[3] init median(x)",
     "5:21: median(x) is shaped like one sample of 'x', [6]; this parameter is [3]"),
    ("param b_mean[d] init mean(x)", "param b_mean[d, 2] init 2 * mean(x)",
     "4:29: mean(x) is shaped like one sample of 'x', [6]; this parameter is [6, 2]"),
    ("init mean(x)", "init mean()", "4:22: mean() needs 1 argument(s)"),
    ("init mean(x)", "init mean(x, x)", "4:30: mean() takes at most 1 argument(s), got 2"),
    ("D @ z + b_dec", "D @ z + mean(x)", "8:34: unknown function 'mean'"),
])  # fmt: skip
def test_misuses_are_located_errors(old, new, message):
    spec = SPEC.replace(old, new, 1)
    assert spec != SPEC
    with pytest.raises(SpecError) as error:
        energydsl.compile_program(spec)
    assert str(error.value).startswith("<spec>:" + message)
