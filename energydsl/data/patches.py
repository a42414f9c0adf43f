"""The ``patches`` source: square patches of the bundled photographs, centred and ZCA-whitened."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from energydsl.data.base import Args, DataError, Dataset, Source, bundled, float_tensor, held_out

_PATCH_SIZES = (2, 64)  # smallest and largest patch side; whitening is O(size**6)


@functools.cache
def _gray_images() -> tuple[np.ndarray, ...]:
    """The bundled grayscale photographs as read-only float64 arrays in [0, 1], by file name."""
    images = []
    for resource in sorted(bundled("images").iterdir(), key=lambda r: r.name):
        if resource.name.endswith(".png"):
            with resource.open("rb") as stream, Image.open(stream) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
            pixels.flags.writeable = False
            images.append(pixels)
    return tuple(images)


def patches(
    size: int = 12,
    count: int = 20000,
    whiten: str = "zca",
    center: bool = True,
    test: float = 0.1,
    seed: int = 0,
    eps: float = 0.01,
) -> Dataset:
    """Square patches of natural images, optionally centred and ZCA-whitened.

    Patch positions are drawn uniformly over every position in the five bundled 8-bit
    grayscale photographs (camera, astronaut, coffee, chelsea, rocket; CC0 / public
    domain as distributed with scikit-image), so larger images give more patches.
    Pixels are scaled to [0, 1] and each sample is the flattened patch (``size**2``
    values, row-major).  The data are unlabelled.

    Processing, in order:

    1. ``center``: subtract each patch's own mean (its DC component).
    2. ``whiten="zca"``: multiply by the symmetric ZCA matrix
       ``W = U diag(1 / sqrt(lambda + eps * mean(lambda))) U^T`` of the second-moment
       matrix ``X^T X / N`` of the *training* patches (no per-pixel mean is removed,
       so with ``center=false`` the DC component is whitened with the rest).  The
       regulariser damps the noisy high-frequency directions; test patches use the
       same matrix.  Centred patches stay zero-mean (to rounding) after whitening,
       because the constant patch is an eigenvector with eigenvalue 0.
    3. Normalise: multiply all patches by one global factor so that the mean squared
       l2 norm of the training patches is exactly 1 (the whitened components then have
       variance about ``1 / size**2``).  This is done for ``whiten="none"`` too.

    ``extras["whitening"]`` (only for ``whiten="zca"``) is the ``(d, d)`` matrix, global
    factor included, that maps a (centred) patch to its sample: ``x = patch @ W``.

    Args:
        size: side of the square patches in pixels (2 to 64).
        count: number of patches drawn in total, train and test (2 to 1,000,000).
        whiten: ``"zca"`` for ZCA whitening or ``"none"`` to skip it.
        center: subtract each patch's mean before whitening.
        test: fraction of the patches held out as the test split (0 to below 1); the
            test split is the last ``round(count * test)`` patches drawn.
        seed: seed of the random patch positions (a non-negative integer).
        eps: whitening regulariser relative to the mean eigenvalue (above 0, at most 1).
    """
    n_test = _check_patches(size, count, whiten, center, test, seed, eps)
    rng = np.random.default_rng(seed)
    samples = _sample_patches(_gray_images(), size, count, rng).reshape(count, -1)
    if center:
        samples -= samples.mean(axis=1, keepdims=True)
    train = _nonconstant(samples[: count - n_test])
    transform = _zca(train, eps) if whiten == "zca" else np.eye(size * size)
    transform /= math.sqrt(np.mean(np.sum((train @ transform) ** 2, axis=1)))
    samples = samples @ transform
    extras = {"whitening": float_tensor(transform)} if whiten == "zca" else {}
    return Dataset(
        name="patches",
        x_train=float_tensor(samples[: count - n_test]),
        x_test=float_tensor(samples[count - n_test:]),
        y_train=None,
        y_test=None,
        num_classes=None,
        extras=extras,
    )


def _check_patches(size, count, whiten, center, test, seed, eps) -> int:
    """Check the arguments of :func:`patches`; return the number of test patches."""
    args = Args("patches")
    args.integer("size", size, *_PATCH_SIZES)
    args.integer("count", count, 2, 1_000_000)
    args.choice("whiten", whiten, ("zca", "none"))
    args.boolean("center", center)
    args.real("test", test, 0.0, 1.0, hi_open=True)
    args.integer("seed", seed, 0, 2**63 - 1)
    args.real("eps", eps, 0.0, 1.0, lo_open=True)
    return held_out("patches", count, test)


def _sample_patches(images: Sequence[np.ndarray], size: int, count: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``size``-by-``size`` patches, positions uniform over all images."""
    positions = np.array([(h - size + 1) * (w - size + 1) for h, w in (i.shape for i in images)])
    which = rng.choice(len(images), size=count, p=positions / positions.sum())
    out = np.empty((count, size, size))
    for index, image in enumerate(images):
        chosen = np.flatnonzero(which == index)
        rows = rng.integers(0, image.shape[0] - size + 1, len(chosen))
        cols = rng.integers(0, image.shape[1] - size + 1, len(chosen))
        out[chosen] = sliding_window_view(image, (size, size))[rows, cols]
    return out


def _nonconstant(train: np.ndarray) -> np.ndarray:
    """``train``, checked not to be all zeros (which can be neither whitened nor normalised)."""
    if not np.any(train):
        raise DataError(
            "data source 'patches': every training patch is constant; increase 'count'"
        )
    return train


def _zca(train: np.ndarray, eps: float) -> np.ndarray:
    """Symmetric ZCA matrix of ``train``'s second moments, regularised by eps * mean eigenvalue."""
    eigvals, eigvecs = np.linalg.eigh(train.T @ train / len(train))
    eigvals = np.clip(eigvals, 0.0, None)  # round-off can make zero eigenvalues negative
    return (eigvecs / np.sqrt(eigvals + eps * eigvals.mean())) @ eigvecs.T


def _describe_patches(size, count, whiten, center, test, seed, eps):
    return (size * size,), None


_IMAGES_BYTES = 16 * 2**20  # the bundled photographs as float64 (9 MiB)


def _footprint_patches(batch, size, count, whiten, center, test, seed, eps):
    """The photographs, and per patch its float64 values, their whitened float64 copy and the float32
    tensor's copy."""
    return _IMAGES_BYTES + count * size * size * (8 + 8 + 4)


SOURCE = Source("patches", load=patches, describe=_describe_patches, check=_check_patches,
                footprint=_footprint_patches)
