"""Orientation fitting and the pinwheel counter, on filters and maps whose answer is known.

Maps are built with x along the columns and y up the rows (y = −row), the convention of
energydsl.ops.orientation; each pinwheel sits inside a plaquette, never on a unit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from energydsl.ops.orientation import (
    filter_orientations,
    mean_pair_difference,
    orientation_period,
    pinwheels,
    plaquette_windings,
    wrap,
)


def coordinates(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.mgrid[0:rows, 0:cols]
    return c.astype(float), -r.astype(float)


def half_angle(z: np.ndarray) -> np.ndarray:
    """θ = ½ arg z in [0, π): the orientation map whose doubled angle is z's phase."""
    return np.mod(np.angle(z) / 2, math.pi)


def gabor(alpha: float, size: int = 12, sigma: float = 2.5, frequency: float = 0.2, phase: float = 0.3):
    """A Gabor filter whose wave vector points along ``alpha``: its stripes lie at alpha + π/2."""
    x, y = coordinates(size, size)
    x, y = x - (size - 1) / 2, y + (size - 1) / 2
    along = x * math.cos(alpha) + y * math.sin(alpha)
    return np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * math.pi * frequency * along + phase)


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("size", [12, 9])
def test_gabor_orientations_are_recovered_within_a_degree(size):
    rng = np.random.default_rng(0)
    alphas = rng.uniform(0, math.pi, 40)
    filters = np.stack([gabor(a, size, sigma=size / 5, phase=p) for a, p in zip(alphas, rng.uniform(0, 6, 40))])
    theta, selectivity = filter_orientations(filters)
    error = np.degrees(np.abs(wrap(theta - (alphas + math.pi / 2), math.pi)))
    assert error.max() < 1.0
    assert ((0 <= theta) & (theta < math.pi)).all()
    assert selectivity.min() > 0.75


def test_bars_have_the_angle_they_are_drawn_at():
    horizontal, diagonal = np.zeros((9, 9)), np.zeros((9, 9))
    horizontal[4] = 1.0
    diagonal[::-1] = np.eye(9)  # bottom left to top right: 45° with y up the rows
    theta, _ = filter_orientations(np.stack([horizontal, diagonal]))
    assert np.degrees(theta) == pytest.approx([0, 45], abs=1e-6)


def test_channels_average_their_power_and_noise_is_unselective():
    rng = np.random.default_rng(1)
    colour = np.stack([gabor(0.4), 0.5 * gabor(0.4, phase=2.0), gabor(0.4, phase=1.0)])  # (3, 12, 12)
    noise = rng.normal(size=(3, 12, 12))
    theta, selectivity = filter_orientations(np.stack([colour, noise]))
    assert math.degrees(abs(wrap(theta[0] - (0.4 + math.pi / 2), math.pi))) < 1.0
    assert selectivity[1] < 0.2 < 0.8 < selectivity[0]


def test_a_zero_filter_has_no_selectivity():
    theta, selectivity = filter_orientations(np.zeros((1, 6, 6)))
    assert selectivity[0] == 0 and 0 <= theta[0] < math.pi


# ---------------------------------------------------------------- pinwheels


def test_one_positive_pinwheel_is_found_in_its_plaquette():
    x, y = coordinates(20, 20)
    theta = 0.5 * np.arctan2(y + 9.5, x - 9.3)  # centre between rows 9, 10 and columns 9, 10
    measured = pinwheels(theta, periodic=False)
    assert measured.windings.shape == (19, 19)
    assert np.argwhere(measured.windings).tolist() == [[9, 9]]
    assert measured.windings[9, 9] == 1
    assert (measured.count, measured.charge) == (1, 0.5)


def test_a_positive_and_a_negative_pinwheel():
    x, y = coordinates(20, 24)
    z = ((x - 5.5) + 1j * (y + 9.5)) * np.conj((x - 16.5) + 1j * (y + 12.5))  # +½ at (5.5, 9.5), −½ at (16.5, 12.5)
    windings = plaquette_windings(half_angle(z), periodic=False)
    assert {tuple(p): int(windings[tuple(p)]) for p in np.argwhere(windings)} == {(9, 5): 1, (12, 16): -1}
    measured = pinwheels(half_angle(z), periodic=False)
    assert (measured.count, measured.charge) == (2, 0.0)


def test_a_smooth_map_has_no_pinwheel_and_is_smooth():
    x, y = coordinates(16, 16)
    theta = np.mod(0.1 * x + 0.05 * y, math.pi)  # wraps around π: still smooth
    measured = pinwheels(theta, periodic=False)
    assert measured.count == 0 and not measured.windings.any()
    assert measured.neighbour_difference == pytest.approx((0.1 + 0.05) / 2)
    assert measured.smoothness > 0.8


def test_a_random_map_is_not_smooth():
    theta = np.random.default_rng(2).uniform(0, math.pi, (40, 40))
    measured = pinwheels(theta, periodic=True)
    assert math.degrees(measured.pair_difference) == pytest.approx(45, abs=1)  # E|Δθ| of independent uniforms
    assert abs(measured.smoothness) < 0.03
    assert measured.count > 0.3 * theta.size  # a random map is full of pinwheels (1/3 of plaquettes on average)


def test_square_lattice_on_a_torus_has_four_pinwheels_per_period_squared():
    """z = cos(2π(x + ½)/8) + i cos(2π(y + ½)/8) vanishes where both cosines do: 2 × 2 zeros in every
    8 × 8 cell, at half-integer x and y, alternately of charge +½ and −½."""
    x, y = coordinates(32, 32)
    z = np.cos(2 * math.pi * (x + 0.5) / 8) + 1j * np.cos(2 * math.pi * (y + 0.5) / 8)
    measured = pinwheels(half_angle(z), periodic=True)
    assert measured.windings.shape == (32, 32)
    assert (measured.count, measured.charge) == (64, 0.0)
    assert int((measured.windings == 1).sum()) == 32
    rows, cols = np.nonzero(measured.windings)
    assert set(cols % 4) == {1} and set(rows % 4) == {2}  # zeros at x = 1.5, 5.5, …; y = −2.5, −6.5, …
    assert measured.period == pytest.approx(8, rel=0.01)
    assert measured.density == pytest.approx(4, rel=0.02)


def test_the_wrapping_plaquettes_of_a_torus_count():
    x, y = coordinates(16, 16)
    z = np.cos(2 * math.pi * (x + 0.5) / 16) + 1j * np.cos(2 * math.pi * (y + 0.5) / 16)  # zeros at x = 3.5, 11.5
    torus = plaquette_windings(half_angle(z), periodic=True)
    grid = plaquette_windings(half_angle(z), periodic=False)
    assert np.abs(torus).sum() == 4 and np.abs(grid).sum() == 4
    moved = np.roll(half_angle(z), (3, 12), (0, 1))  # the zero at (12.5, 3.5) to (15.5, 15.5), across the seam
    seam = plaquette_windings(moved, periodic=True)
    assert np.abs(seam).sum() == 4 and seam[15, 15] == torus[12, 3] != 0


def test_random_plane_waves_of_one_wavelength_have_density_near_pi():
    """A random superposition of plane waves of one wavelength (here 8 units, 112 directions on a
    128 × 128 torus): ≈ π pinwheels per wavelength squared (Wolf & Geisel 1998)."""
    rng = np.random.default_rng(1)
    x, y = coordinates(128, 128)
    waves = [(a, b) for a in range(-17, 18) for b in range(-17, 18) if abs(math.hypot(a, b) - 16) < 0.5]
    z = sum(rng.normal() * np.exp(2j * math.pi * (a * x + b * y) / 128 + 2j * math.pi * rng.uniform())
            for a, b in waves)  # fmt: skip
    measured = pinwheels(half_angle(z), periodic=True)
    assert measured.period == pytest.approx(8, rel=0.03)
    assert measured.density == pytest.approx(math.pi, rel=0.1)
    assert measured.charge == 0  # a torus: as many of each sign


def test_period_of_a_plane_wave_and_of_a_constant_map():
    x, _ = coordinates(12, 30)
    assert orientation_period(np.mod(math.pi * x / 10, math.pi)) == pytest.approx(10)  # 2θ turns once in 10 units
    assert orientation_period(np.full((5, 5), 0.3)) == math.inf
    assert math.isnan(pinwheels(np.full((5, 5), 0.3), periodic=True).density)


def test_weak_corners_exclude_their_plaquettes():
    x, y = coordinates(20, 20)
    theta = 0.5 * np.arctan2(y + 9.5, x - 9.3)
    selectivity = np.ones_like(theta)
    selectivity[10, 10] = 0.1  # a corner of the pinwheel's plaquette (9, 9) and of three others
    measured = pinwheels(theta, periodic=False, selectivity=selectivity, min_selectivity=0.5)
    assert measured.count == 0 and measured.area == 19 * 19 - 4
    assert pinwheels(theta, periodic=False, selectivity=selectivity).count == 1  # no threshold: all count


def test_mean_pair_difference_exact_and_estimated():
    theta = np.array([0.0, 0.5, 3.0])
    pairs = [abs(wrap(a - b, math.pi)) for i, a in enumerate(theta) for j, b in enumerate(theta) if i != j]
    assert mean_pair_difference(theta) == pytest.approx(np.mean(pairs))
    wide = np.random.default_rng(3).uniform(0, math.pi, 5000)  # above EXACT_PAIRS: random pairs
    assert math.degrees(mean_pair_difference(wide)) == pytest.approx(45, abs=0.2)
