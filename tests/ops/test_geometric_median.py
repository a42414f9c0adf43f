"""The geometric median by Weiszfeld's iterations, against a general-purpose minimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from energydsl.ops import geometric_median as gm
from energydsl.ops.geometric_median import geometric_median, weighted_mean


def distance_sum(points: np.ndarray, m: np.ndarray) -> float:
    return float(np.linalg.norm(points - m, axis=1).sum())


def scipy_median(points: np.ndarray) -> np.ndarray:
    """argmin_m Σᵢ ‖xᵢ − m‖ by BFGS from the mean, to a tight tolerance."""
    def gradient(m):
        diff = m - points
        return (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(axis=0)

    result = minimize(lambda m: distance_sum(points, m), points.mean(axis=0), jac=gradient, method="BFGS",
                      options={"gtol": 1e-10, "maxiter": 10_000})
    return result.x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_median_minimises_the_sum_of_distances_as_scipy_finds(seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((40, 5))
    points[:4] += 30  # outliers: they pull the mean, barely the median
    median = geometric_median(torch.from_numpy(points).float()).numpy()
    reference = scipy_median(points.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(median, reference, atol=1e-5)
    assert distance_sum(points, median) <= distance_sum(points, reference) + 1e-6
    assert np.linalg.norm(median) < 0.1 * np.linalg.norm(points.mean(axis=0))


def test_a_median_on_a_data_point_stays_there():
    """The mean of a cross is its centre, a data point, where Weiszfeld's weight would be 1/0."""
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    median = geometric_median(points)
    assert median.isfinite().all() and median.abs().max() < 1e-9
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])  # a majority at one point
    assert geometric_median(points).abs().max() < 1e-6  # approached from the mean, to the tolerance


def test_chunks_give_the_same_median_and_mean(monkeypatch):
    points = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = geometric_median(points)
    torch.testing.assert_close(weighted_mean(points), points.mean(dim=0))
    monkeypatch.setattr(gm, "CHUNK_ROWS", 7)
    torch.testing.assert_close(geometric_median(points), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(weighted_mean(points), points.mean(dim=0))


def test_identical_points_are_their_own_median():
    points = torch.tensor([[1.5, -2.0, 3.0]]).repeat(10, 1)
    torch.testing.assert_close(geometric_median(points), points[0].double())
