"""Tests for the ``features`` source: superposed activations with their ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import energydsl
from energydsl.data import DataError, Description, describe_source, load_data


def feature_data(**kwargs):
    return load_data("features", kwargs=kwargs)


def dense_test_codes(data) -> torch.Tensor:
    codes = data.extras["codes_test"]
    assert codes.is_sparse and codes.is_coalesced() and codes.dtype == torch.float32
    return codes.to_dense()


def test_samples_are_codes_times_dictionary_plus_bias():
    data = feature_data(dim=16, features=40, count=2000, bias=2.5, magnitude_std=0.3, test=0.25)
    dictionary, bias = data.extras["dictionary"], data.extras["bias"]
    assert data.x_train.shape == (1500, 16) and data.x_test.shape == (500, 16)
    assert data.x_train.dtype == torch.float32 and data.y_train is None and data.num_classes is None
    assert dictionary.shape == (16, 40) and dictionary.dtype == torch.float32
    torch.testing.assert_close(dictionary.norm(dim=0), torch.ones(40))
    assert bias.norm().item() == pytest.approx(2.5, rel=1e-6)
    codes = dense_test_codes(data)
    assert codes.shape == (500, 40) and (codes >= 0).all()
    torch.testing.assert_close(data.x_test, codes @ dictionary.T + bias, atol=1e-5, rtol=1e-5)
    assert sorted(data.extras) == ["bias", "codes_test", "dictionary", "probabilities"]


def test_firing_probabilities_follow_zipf_linear_or_constant():
    ranks = np.arange(1, 11)
    zipf = 1 / ranks**1.5
    expected = {
        "zipf": 0.05 + 0.35 * (zipf - zipf[-1]) / (zipf[0] - zipf[-1]),
        "linear": np.linspace(0.4, 0.05, 10),
        "constant": np.full(10, 0.4),
    }
    for firing, probabilities in expected.items():
        data = feature_data(dim=4, features=10, count=10, firing=firing, exponent=1.5, max_prob=0.4, min_prob=0.05)
        np.testing.assert_allclose(data.extras["probabilities"].numpy(), probabilities, rtol=1e-6)


def test_firing_probabilities_match_saelens_when_installed():
    firing = pytest.importorskip("sae_lens.synthetic.firing_probabilities")
    data = feature_data(dim=4, features=300, count=10, exponent=0.7, max_prob=0.25, min_prob=0.002)
    theirs = firing.zipfian_firing_probabilities(300, exponent=0.7, max_prob=0.25, min_prob=0.002)
    np.testing.assert_allclose(data.extras["probabilities"].numpy(), theirs.numpy(), rtol=1e-5)


def firing_rates_within(codes: torch.Tensor, probabilities: torch.Tensor, sigmas: float = 4.5) -> bool:
    """Each feature's firing rate within ``sigmas`` binomial standard deviations of its probability."""
    n = codes.shape[0]
    rates = (codes != 0).double().mean(dim=0)
    p = probabilities.double()
    return bool(((rates - p).abs() <= sigmas * torch.sqrt(p * (1 - p) / n) + 1e-12).all())


@pytest.mark.parametrize("extra", [{}, {"correlation_rank": 3, "correlation_scale": 0.3}])
def test_each_feature_fires_at_its_rate_with_or_without_correlation(extra):
    # max_prob 0.5 puts the first features on the dense path, the others on the sparse one
    data = feature_data(dim=8, features=30, count=20000, max_prob=0.5, min_prob=0.01, test=0.9, **extra)
    assert firing_rates_within(dense_test_codes(data), data.extras["probabilities"])


def firing_correlation(codes: torch.Tensor) -> torch.Tensor:
    """The correlation matrix of the features' firing indicators, zero on the diagonal."""
    correlation = torch.corrcoef((codes != 0).double().T)
    return correlation * ~torch.eye(codes.shape[1], dtype=torch.bool)


def test_correlated_firing_follows_one_shared_factor():
    kwargs = {"dim": 8, "features": 20, "count": 20000, "firing": "constant", "test": 0.5}
    independent = firing_correlation(dense_test_codes(feature_data(**kwargs)))
    codes = dense_test_codes(feature_data(**kwargs, correlation_rank=1, correlation_scale=1.0))
    correlated = firing_correlation(codes)
    assert independent.abs().max() < 0.06
    assert correlated.abs().sum() / (20 * 19) > 0.2
    # one factor f: the Gaussians correlate as f_i f_j, so around every triangle the signs
    # multiply to sign((f_i f_j f_k)^2) > 0; thresholding keeps each pair's sign
    strong = correlated.abs() > 0.1
    triangles = strong[:, :, None] & strong[:, None, :] & strong[None, :, :]
    signs = correlated[:, :, None] * correlated[:, None, :] * correlated[None, :, :]
    assert triangles.sum() > 100 and (signs[triangles] > 0).all()
    assert firing_rates_within(codes, torch.full((20,), 0.3))


def test_magnitudes_have_the_asked_mean_and_spread_and_a_clipped_one_does_not_fire():
    data = feature_data(dim=8, features=10, count=20000, firing="constant", max_prob=0.5,
                        magnitude=1.0, magnitude_std=1.0, test=0.5)
    codes = dense_test_codes(data)
    active = codes[codes != 0].double()
    # a clipped normal: N(1, 1) kept above 0, so P(fire) = 0.5 * Phi(1)
    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert firing_rates_within(codes, torch.full((10,), 0.5 * phi))
    density = math.exp(-0.5) / math.sqrt(2 * math.pi)  # the truncated normal's mean: 1 + pdf(1)/Phi(1)
    assert active.mean().item() == pytest.approx(1 + density / phi, abs=0.02)
    assert active.min().item() > 0


def test_constant_magnitude_without_spread():
    codes = dense_test_codes(feature_data(dim=8, features=12, count=400, magnitude=2.5))
    assert set(codes.unique().tolist()) == {0.0, 2.5}


def test_hierarchy_numbers_trees_breadth_first_and_gates_children_by_parents():
    data = feature_data(dim=8, features=20, count=20000, roots=2, branching=3, depth=2,
                        firing="constant", max_prob=0.5, test=0.5)
    parents = data.extras["parents"].tolist()
    # roots 0, 1; their children 2-4 and 5-7; then children of 2, 3, 4, 5 until feature 19
    expected = [-1, -1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert parents == expected
    fires = dense_test_codes(data) != 0
    for child, parent in enumerate(expected):
        if parent >= 0:
            assert not (fires[:, child] & ~fires[:, parent]).any()
    # a child fires with its own rate given its parent; a grandchild with 0.5^3
    assert firing_rates_within(fires[:, [0, 1, 2, 7, 8, 19]].float(), torch.tensor([0.5, 0.5, 0.25, 0.25, 0.125, 0.125]))


def test_exclusive_children_never_fire_together_and_a_winner_is_uniform():
    data = feature_data(dim=8, features=13, count=40000, roots=1, branching=3, depth=2, exclusive=1.0,
                        firing="constant", max_prob=0.6, test=0.5)
    fires = dense_test_codes(data) != 0
    for siblings in ([1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]):
        assert (fires[:, siblings].sum(dim=1) <= 1).all()
    # under root 0, a child survives alone or wins a uniform draw among its firing siblings:
    # P = 0.6 * 0.6 * E[1 / (1 + Binomial(2, 0.6))] = 0.36 * (0.16 + 0.48 / 2 + 0.36 / 3)
    expected = 0.36 * (0.16 + 0.48 / 2 + 0.36 / 3)
    assert firing_rates_within(fires[:, 1:4].float(), torch.full((3,), expected))


def test_a_share_of_the_parents_is_exclusive():
    # 1 root, branching 2, depth 3: 7 parents with two children each; half of 7 is 3 exclusive groups
    data = feature_data(dim=8, features=15, count=20000, roots=1, branching=2, depth=3, exclusive=0.5,
                        firing="constant", max_prob=0.9, test=0.5)
    fires = dense_test_codes(data) != 0
    parents = data.extras["parents"]
    together = [bool((fires[:, 2 * p + 1] & fires[:, 2 * p + 2]).any()) for p in range(7)]
    assert together.count(False) == 3
    assert all(parents[2 * p + 1] == p and parents[2 * p + 2] == p for p in range(7))


def welch_bound(features: int, dim: int) -> float:
    """The least mean squared cosine between distinct unit vectors: features > dim of them in dim dimensions."""
    return (features - dim) / (dim * (features - 1))


def mean_squared_cosine(dictionary: torch.Tensor) -> float:
    gram = (dictionary.double().T @ dictionary.double())
    off = ~torch.eye(gram.shape[0], dtype=torch.bool)
    return (gram[off] ** 2).mean().item()


def test_orthogonalize_reaches_orthonormal_or_the_welch_bound():
    square = feature_data(dim=20, features=20, count=4, orthogonalize=1).extras["dictionary"].double()
    torch.testing.assert_close(square.T @ square, torch.eye(20, dtype=torch.float64), atol=1e-6, rtol=0)
    loose = feature_data(dim=16, features=64, count=4).extras["dictionary"]
    tight = feature_data(dim=16, features=64, count=4, orthogonalize=20).extras["dictionary"]
    assert mean_squared_cosine(loose) > 1.1 * welch_bound(64, 16)
    assert mean_squared_cosine(tight) == pytest.approx(welch_bound(64, 16), rel=1e-3)
    torch.testing.assert_close(tight.norm(dim=0), torch.ones(64))


def test_deterministic_and_the_truth_does_not_depend_on_the_sample_count():
    a, b = feature_data(count=300, seed=4), feature_data(count=300, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.extras["dictionary"], b.extras["dictionary"])
    assert torch.equal(feature_data(count=900, seed=4).extras["dictionary"], a.extras["dictionary"])
    assert not torch.equal(feature_data(count=300, seed=5).extras["dictionary"], a.extras["dictionary"])


def test_no_test_split_gives_empty_test_codes():
    data = feature_data(dim=4, features=6, count=10, test=0.0)
    assert data.x_test.shape == (0, 4) and data.extras["codes_test"].shape == (0, 6)


@pytest.mark.parametrize("kwargs, phrase", [
    ({"firing": "zipfian"}, "'firing' must be one of 'zipf', 'linear', 'constant', got 'zipfian'"),
    ({"max_prob": 1.5}, "'max_prob' must be a number in (0, 1]"),
    ({"min_prob": 0.5}, "'min_prob' must be a number in (0, 0.3]"),
    ({"features": 0}, "'features' must be an integer in [1, 1048576]"),
    ({"roots": 2000}, "'roots' must be an integer in [0, 1024]"),
    ({"branching": 1}, "'branching' must be an integer in [2, 1024]"),
    ({"exclusive": 2}, "'exclusive' must be a number in [0, 1]"),
    ({"magnitude": 0}, "'magnitude' must be a number in (0, inf)"),
    ({"correlation_rank": 1.5}, "'correlation_rank' must be an integer"),
    ({"count": 9_000_000, "dim": 512}, "count × dim = 9000000 × 512 values is over 2^31"),
])
def test_bad_arguments_are_one_line_errors(kwargs, phrase):
    with pytest.raises(DataError) as excinfo:
        feature_data(**kwargs)
    text = str(excinfo.value)
    assert "\n" not in text and "data source 'features'" in text and phrase in text


SPEC = """
model recover
data features(dim = 12, features = 24, count = 600, firing = linear, max_prob = 0.1)
const units = 24
input x
latent z[units] >= 0
param W[12, units] constrain col_norm <= 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.05 * l1(z)
infer z by fista(steps = 50)
train
  epochs 1
"""


def test_a_spec_names_the_source_with_bare_words_and_takes_its_width():
    assert describe_source("features", kwargs={"dim": 12, "firing": "linear"}) == Description((12,), None)
    model = energydsl.load(SPEC)
    assert model.program.input.shape == (12,)
    assert model.dataset.extras["dictionary"].shape == (12, 24)


def test_a_spec_error_in_the_data_line_points_at_it():
    with pytest.raises(energydsl.errors.SpecError) as excinfo:
        energydsl.load(SPEC.replace("firing = linear", "firing = steep"))
    assert str(excinfo.value).startswith("<spec>:3:6: data source 'features': argument 'firing' must be one of")
