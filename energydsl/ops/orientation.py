"""Orientation maps: each filter's preferred orientation, and the pinwheels of a map of them.

**A filter's orientation** comes from its 2-D Fourier energy.  With P(k) the power spectrum of
the filter (averaged over its channels; the filter zero-padded to :data:`PAD` times its size plus
one: a finer grid of frequencies, symmetric about 0), DC excluded, and φ_k = atan2(k_y, k_x) the
direction of frequency k,

    m = Σ_k P(k) e^{2iφ_k} / Σ_k P(k)          (the power-weighted mean of the doubled angle)

The doubled angle makes k and −k (which carry the same power) agree.  The filter's wave vector
points along arg(m)/2; its stripes, bars and edges lie across it, so the preferred orientation is

    θ = arg(m)/2 + π/2   (mod π),       selectivity = |m| ∈ [0, 1].

A grating gives selectivity near 1; a blob or white noise (power in every direction) near 0.
Angles are measured counterclockwise from the horizontal, with x along the columns of the image
and y up the rows (row 0 at the top, as an image is drawn): a horizontal bar has θ = 0, a bar
from bottom left to top right θ = π/4.

**On a map** of units (rows × columns, a grid or a torus, with the same x along the columns and y
up the rows), θ(i, j) is an orientation map.  A *pinwheel* is a point around which θ turns by
±π (±180°): the doubled angle 2θ winds once around it.  On each plaquette (the 2 × 2 cell of
units (i, j), (i+1, j), (i+1, j+1), (i, j+1), counterclockwise; wrapping on a torus) its winding
number is

    w = Σ_edges wrap(2θ_b − 2θ_a) / 2π,      wrap(·) into (−π, π],

an integer: ±1 on a plaquette that holds a pinwheel of charge ±½, 0 elsewhere.

**The column spacing** Λ is the mean orientation period (Kaschube et al., Science 2010): with
P(f) = |Z(f)|², Z the discrete Fourier transform of z = e^{2iθ} less its mean (f in cycles per
unit of the map), Λ is one over the spectrum's mean frequency, the spectrum weighted by its power:

    Λ = 1 / f̄,    f̄ = Σ_f |f| P(f)² / Σ_f P(f)²,

and the **pinwheel density** is the number of pinwheels per Λ²: pinwheels · Λ² / area, the area
being the number of plaquettes.  V1 of cats, ferrets and tree shrews measures about π, as does a
random superposition of plane waves of one wavelength (Wolf & Geisel 1998).  Why P² and not P:
z has modulus one, so near each pinwheel its phase turns fast, and these harmonics spread power
far above the map's dominant ring; the P-weighted mean frequency then reads such random maps of
wavelength 8, 16 and 32 as 6.5, 12.4 and 22.5 (their density ≈ 2.1 instead of π), the
P²-weighted one as 8.0, 15.9 and 30.6.  The transform treats the map as periodic: exact on a
torus; on a grid its edges count as a jump.

**Smoothness**: the mean |Δθ| between neighbouring units (Δθ wrapped into (−π/2, π/2]; 45° for a
map of independent uniform orientations, 0 for a constant one), against the same mean over all
pairs of units:  smoothness = 1 − mean_neighbours |Δθ| / mean_pairs |Δθ|  (0 for a random map,
1 for a constant one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PAD = 2  # a filter is zero-padded to PAD times its size (plus one) before its power spectrum is taken
EXACT_PAIRS = 4096  # maps of more units estimate the mean |Δθ| over all pairs from random pairs
PAIR_SAMPLES = 1 << 20
_CHUNK_VALUES = 1 << 18  # values of one chunk of spectra or of pair differences


def filter_orientations(filters) -> tuple[np.ndarray, np.ndarray]:
    """Each filter's preferred orientation θ ∈ [0, π) and its selectivity ∈ [0, 1] (module docstring).

    ``filters``: ``(n, h, w)`` images, or ``(n, c, h, w)`` whose power spectra are averaged over the
    c channels (an array or a tensor).  A filter of zeros gets θ = π/2 and selectivity 0.
    """
    filters = _as_array(filters)
    if filters.ndim == 3:
        filters = filters[:, None]
    if filters.ndim != 4:
        raise ValueError(f"filters must be (n, h, w) or (n, c, h, w), not {filters.shape}")
    h, w = filters.shape[-2:]
    size = (PAD * h + 1, PAD * w + 1)  # odd: every frequency k has its −k, none a lone Nyquist one
    ky = -np.fft.fftfreq(size[0])[:, None]  # y up the rows: row frequencies change sign
    kx = np.fft.fftfreq(size[1])[None, :]
    doubled = np.exp(2j * np.arctan2(ky, kx))
    chunk = max(1, _CHUNK_VALUES // (filters.shape[1] * size[0] * size[1]))
    mean = np.concatenate([_mean_doubled_angle(filters[start : start + chunk], size, doubled)
                           for start in range(0, len(filters), chunk)] or [np.zeros(0, complex)])  # fmt: skip
    theta = np.mod(np.angle(mean) / 2 + math.pi / 2, math.pi)
    return theta, np.abs(mean)


def _mean_doubled_angle(filters: np.ndarray, size: tuple[int, int], doubled: np.ndarray) -> np.ndarray:
    """m of each filter (module docstring): its power-weighted mean of e^{2iφ}, DC left out."""
    power = (np.abs(np.fft.fft2(filters, s=size)) ** 2).mean(axis=1)  # (n, *size)
    power[:, 0, 0] = 0.0  # DC: no direction
    total = power.sum(axis=(1, 2))
    return (power * doubled).sum(axis=(1, 2)) / np.where(total > 0, total, 1.0)


def wrap(angle: np.ndarray, period: float = 2 * math.pi) -> np.ndarray:
    """``angle`` wrapped into (−period/2, period/2]."""
    half = period / 2
    return half - np.mod(half - angle, period)


def plaquette_windings(theta: np.ndarray, periodic: bool) -> np.ndarray:
    """The winding number of 2θ around each plaquette of the ``(rows, cols)`` map ``theta``:
    ``(rows − 1, cols − 1)`` of them on a grid, ``(rows, cols)`` on a torus (plaquette (i, j) has
    unit (i, j) at its top left).  +1 marks a pinwheel of charge +½, −1 one of charge −½."""
    doubled = 2 * np.asarray(theta, dtype=np.float64)
    if periodic:
        corners = [doubled, np.roll(doubled, -1, 0), np.roll(doubled, (-1, -1), (0, 1)), np.roll(doubled, -1, 1)]
    else:  # top left, bottom left, bottom right, top right: counterclockwise with y up the rows
        corners = [doubled[:-1, :-1], doubled[1:, :-1], doubled[1:, 1:], doubled[:-1, 1:]]
    turns = sum(wrap(b - a) for a, b in zip(corners, corners[1:] + corners[:1]))
    return np.rint(turns / (2 * math.pi)).astype(np.int64)


def orientation_period(theta: np.ndarray) -> float:
    """Λ, the mean orientation period of the map in units (module docstring); inf for a constant map."""
    z = np.exp(2j * np.asarray(theta, dtype=np.float64))
    power = np.abs(np.fft.fft2(z - z.mean())) ** 2
    rows, cols = z.shape
    frequency = np.hypot(np.fft.fftfreq(rows)[:, None], np.fft.fftfreq(cols)[None, :])
    if power.sum() <= 1e-12 * z.size**2:
        return math.inf
    weight = (power / power.max()) ** 2  # the dominant ring, not the harmonics (module docstring)
    return float(weight.sum() / (frequency * weight).sum())


def neighbour_differences(theta: np.ndarray, periodic: bool) -> np.ndarray:
    """|Δθ| (wrapped into [0, π/2]) across every edge of the 4-connected map, radians."""
    theta = np.asarray(theta, dtype=np.float64)
    if periodic:
        pairs = [(theta, np.roll(theta, -1, 0)), (theta, np.roll(theta, -1, 1))]
    else:
        pairs = [(theta[:-1], theta[1:]), (theta[:, :-1], theta[:, 1:])]
    return np.concatenate([np.abs(wrap(b - a, math.pi)).ravel() for a, b in pairs])


def mean_pair_difference(theta: np.ndarray) -> float:
    """Mean |Δθ| over all pairs of distinct units: exact up to :data:`EXACT_PAIRS` units (a block of
    pairs at a time), else over :data:`PAIR_SAMPLES` random pairs (seed 0)."""
    flat = np.asarray(theta, dtype=np.float64).ravel()
    n = flat.size
    if n < 2:
        return math.nan
    total = 0.0
    if n > EXACT_PAIRS:
        rng = np.random.default_rng(0)
        chunk = _CHUNK_VALUES // 8
        for _ in range(PAIR_SAMPLES // chunk):
            first, second = rng.integers(n, size=chunk), rng.integers(n - 1, size=chunk)
            second += second >= first  # uniform over the other units
            total += float(np.abs(wrap(flat[first] - flat[second], math.pi)).sum())
        return total / (PAIR_SAMPLES // chunk * chunk)
    block = max(1, _CHUNK_VALUES // n)
    for start in range(0, n, block):
        total += float(np.abs(wrap(flat[start : start + block, None] - flat[None, :], math.pi)).sum())
    return total / (n * (n - 1))  # the diagonal adds nothing


@dataclass(frozen=True)
class Pinwheels:
    """What :func:`pinwheels` measures on one orientation map."""

    windings: np.ndarray  # per plaquette: +1, −1 (pinwheels of charge ±½) or 0
    counted: np.ndarray  # per plaquette: whether it was counted (its corners selective enough)
    period: float  # Λ, units of the map
    neighbour_difference: float  # mean |Δθ| between neighbours, radians
    pair_difference: float  # mean |Δθ| over all pairs, radians

    @property
    def count(self) -> int:
        return int((np.abs(self.windings) == 1).sum())

    @property
    def charge(self) -> float:
        """The pinwheels' total charge: +½ for each positive one, −½ for each negative one."""
        return float(self.windings[np.abs(self.windings) == 1].sum()) / 2

    @property
    def area(self) -> int:
        return int(self.counted.sum())

    @property
    def density(self) -> float:
        """Pinwheels per Λ² (NaN without a finite period or a counted plaquette)."""
        if not math.isfinite(self.period) or not self.area:
            return math.nan
        return self.count * self.period**2 / self.area

    @property
    def smoothness(self) -> float:
        """1 − mean_neighbours |Δθ| / mean_pairs |Δθ|: 0 for a random map, 1 for a constant one."""
        return 1 - self.neighbour_difference / self.pair_difference if self.pair_difference > 0 else 1.0


def pinwheels(theta: np.ndarray, periodic: bool, selectivity: np.ndarray | None = None,
              min_selectivity: float = 0.0) -> Pinwheels:  # fmt: skip
    """Pinwheels, column spacing and smoothness of the ``(rows, cols)`` orientation map ``theta``.

    With ``selectivity`` (same shape) and ``min_selectivity`` > 0, a plaquette with a corner whose
    selectivity is below ``min_selectivity`` is neither counted nor part of the area.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 2:
        raise ValueError(f"an orientation map is (rows, cols), not {theta.shape}")
    windings = plaquette_windings(theta, periodic)
    counted = np.ones(windings.shape, dtype=bool)
    if selectivity is not None and min_selectivity > 0:
        weak = np.asarray(selectivity) < min_selectivity
        counted = ~(weak | np.roll(weak, -1, 0) | np.roll(weak, -1, 1) | np.roll(weak, (-1, -1), (0, 1)))
        counted = counted if periodic else counted[:-1, :-1]
    differences = neighbour_differences(theta, periodic)
    neighbours = float(differences.mean()) if differences.size else math.nan
    return Pinwheels(np.where(counted, windings, 0), counted, orientation_period(theta), neighbours,
                     mean_pair_difference(theta))  # fmt: skip


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
