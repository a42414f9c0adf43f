"""The ``synthetic`` source: sparse combinations of a known random dictionary."""

from __future__ import annotations

import math

import numpy as np

from energydsl.data.base import Args, Dataset, Source, float_tensor, held_out

VALUES = ("uniform", "halfnormal")  # how the magnitudes of a code's non-zeros are drawn


def synthetic(
    dim: int = 32,
    atoms: int = 48,
    count: int = 4000,
    k: int = 3,
    noise: float = 0.0,
    test: float = 0.2,
    nonneg: bool = False,
    seed: int = 0,
    values: str = "uniform",
) -> Dataset:
    """Sparse combinations of a known random dictionary, for checking that a model recovers it.

    The dictionary is a ``(dim, atoms)`` matrix of Gaussian entries whose columns are
    scaled to unit l2 norm.  Each sample's code has exactly ``k`` non-zero entries on a
    support drawn uniformly at random.  Their magnitudes are drawn as ``values`` says:
    ``uniform``, uniform in [0.5, 1.5] (bounded away from zero so every active atom is
    identifiable); ``halfnormal``, |N(0, 1)| (the sources of O'Neill et al. 2025, some of
    them too small to tell from zero).  Each gets a random sign unless ``nonneg``.  A sample
    is ``x = dictionary @ code + noise * N(0, I)``.

    ``extras`` holds the ground truth: ``"dictionary"`` ``(dim, atoms)``, and
    ``"codes_train"`` / ``"codes_test"`` ``(samples, atoms)``.  The data are unlabelled.

    Args:
        dim: dimension of a sample (1 to 100,000).
        atoms: number of dictionary atoms (1 to 100,000).
        count: number of samples in total, train and test (2 to 1,000,000).
        k: non-zero entries per code (1 to ``atoms``).
        noise: standard deviation of the added Gaussian noise (0 or more).
        test: fraction of the samples held out as the test split (0 to below 1); the
            test split is the last ``round(count * test)`` samples.
        nonneg: make every code entry positive (a non-negative sparse model).
        seed: seed of the dictionary, codes and noise (a non-negative integer).
        values: how the magnitudes of the non-zero entries are drawn: ``uniform`` or
            ``halfnormal``.
    """
    n_test = _check_synthetic(dim, atoms, count, k, noise, test, nonneg, seed, values)
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((dim, atoms))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    codes = _sparse_codes(count, atoms, k, nonneg, values, rng)
    samples = codes @ dictionary.T + noise * rng.standard_normal((count, dim))
    split = count - n_test
    return Dataset(
        name="synthetic",
        x_train=float_tensor(samples[:split]),
        x_test=float_tensor(samples[split:]),
        y_train=None,
        y_test=None,
        num_classes=None,
        extras={
            "dictionary": float_tensor(dictionary),
            "codes_train": float_tensor(codes[:split]),
            "codes_test": float_tensor(codes[split:]),
        },
    )


def _check_synthetic(dim, atoms, count, k, noise, test, nonneg, seed, values) -> int:
    """Check the arguments of :func:`synthetic`; return the number of test samples."""
    args = Args("synthetic")
    args.integer("dim", dim, 1, 100_000)
    args.integer("atoms", atoms, 1, 100_000)
    args.integer("count", count, 2, 1_000_000)
    args.integer("k", k, 1, atoms)
    args.real("noise", noise, 0.0, math.inf, hi_open=True)
    args.real("test", test, 0.0, 1.0, hi_open=True)
    args.boolean("nonneg", nonneg)
    args.integer("seed", seed, 0, 2**63 - 1)
    args.choice("values", values, VALUES)
    return held_out("synthetic", count, test)


def _sparse_codes(count: int, atoms: int, k: int, nonneg: bool, magnitudes: str,
                  rng: np.random.Generator) -> np.ndarray:
    """``(count, atoms)`` codes with exactly ``k`` non-zeros per row, their magnitudes drawn as
    ``magnitudes`` says (:data:`VALUES`)."""
    support = np.argsort(rng.random((count, atoms)), axis=1)[:, :k]
    if magnitudes == "halfnormal":
        values = np.abs(rng.standard_normal((count, k)))
    else:
        values = rng.uniform(0.5, 1.5, (count, k))
    if not nonneg:
        values *= rng.choice([-1.0, 1.0], (count, k))
    codes = np.zeros((count, atoms))
    np.put_along_axis(codes, support, values, axis=1)
    return codes


def _describe_synthetic(dim, atoms, count, k, noise, test, nonneg, seed, values):
    return (dim,), None


def _footprint_synthetic(batch, dim, atoms, count, k, noise, test, nonneg, seed, values):
    """Per sample: the float64 draws that choose the supports, their argsort and the codes (3 × atoms
    values of 8 bytes), the float64 samples, noise and sum (3 × dim), and the float32 copies of both."""
    return count * (atoms * (3 * 8 + 4) + dim * (3 * 8 + 4)) + dim * atoms * 12


SOURCE = Source("synthetic", load=synthetic, describe=_describe_synthetic, check=_check_synthetic,
                footprint=_footprint_synthetic)
