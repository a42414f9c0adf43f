"""The geometric median of a set of points, by Weiszfeld's iterations.

The geometric median m of points x₁ … xₙ minimises Σᵢ ‖xᵢ − m‖ (the sum of distances, not of
squared distances: the mean minimises that).  It is robust: moving a few points far away moves
it little.  Weiszfeld's fixed point iteration (1937) reweights the mean by inverse distances,

    m ← Σᵢ wᵢ xᵢ / Σᵢ wᵢ,   wᵢ = 1 / ‖xᵢ − m‖,

which decreases the objective at every step and converges to the median from any start that is
not a data point (Kuhn 1973).  A distance below ``floor`` is clamped to it, so that an iterate
landing on a data point stays finite (that point then pulls strongly: it is where the median is
when it lies on a point).

Everything runs in float64, over the points in chunks of rows, so that memory stays at one chunk
beside the points however many there are.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 4096  # rows of points per float64 block


def geometric_median(points: torch.Tensor, tol: float = 1e-7, max_steps: int = 500) -> torch.Tensor:
    """The geometric median of the rows of ``points`` (n, d), as a float64 vector (d,).

    Starts at the mean and stops when a step moves the median by less than ``tol`` times the
    points' mean distance to it, or after ``max_steps`` steps.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix of points, got shape {list(points.shape)}")
    median = weighted_mean(points)
    for _ in range(max_steps):
        distances = _distances(points, median)
        scale = distances.mean()
        if scale == 0:  # every point is the same point
            return median
        weights = 1 / distances.clamp_min(1e-12 * scale)
        step = weighted_mean(points, weights) - median
        median = median + step
        if step.norm() <= tol * scale:
            break
    return median


def _chunks(points: torch.Tensor):
    for start in range(0, points.shape[0], CHUNK_ROWS):
        yield start, points[start : start + CHUNK_ROWS].to(torch.float64)


def _distances(points: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """‖xᵢ − centre‖ for every row, (n,), float64."""
    return torch.cat([(chunk - centre).norm(dim=1) for _, chunk in _chunks(points)])


def weighted_mean(points: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σᵢ wᵢ xᵢ / Σᵢ wᵢ over the rows of ``points`` (the plain mean when ``weights`` is None), float64."""
    total = torch.zeros(points.shape[1], dtype=torch.float64, device=points.device)
    for start, chunk in _chunks(points):
        total += chunk.sum(dim=0) if weights is None else weights[start : start + chunk.shape[0]] @ chunk
    return total / (points.shape[0] if weights is None else weights.sum())
