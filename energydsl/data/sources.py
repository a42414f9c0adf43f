"""Data sources: the bundled MNIST digits and image patches, synthetic sparse data, user files.

A spec names its data as ``source(args...)``; :func:`load_data` looks the source up in
:data:`SOURCES`, checks the arguments and returns a :class:`Dataset` of float32 tensors.
:func:`describe_source` answers the cheaper question "what shape are the samples and how
many classes are there?" (reading file headers only) so that ``energydsl check`` can
resolve sizes taken from the data without loading it.

Every mistake a user can make here raises :class:`DataError` with a one-line message
naming the source or file and what was expected.  Everything is deterministic: random
sources draw from ``numpy.random.default_rng(seed)``.

Split convention for data without its own test split (MNIST and user files): the test
set is every sample whose index ``i % 5 == 0``, the training set is all the others.  (The
two halves of the MNIST test set come from different writers, so a contiguous split
would be biased.)
"""

from __future__ import annotations

import difflib
import functools
import gzip
import inspect
import math
import numbers
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from energydsl.errors import UserError

__all__ = ["SOURCES", "DataError", "Dataset", "describe_source", "load_data"]


class DataError(UserError):
    """A user mistake in data: message is ONE line naming the file/source and what was expected."""

    def __init__(self, message: str):
        # Text from elsewhere (paths, library messages) must not break the one-line promise.
        super().__init__(" ".join(line.strip() for line in str(message).splitlines()))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of float32 sample tensors with optional int64 class labels.

    ``extras`` carries source-specific tensors such as the ground-truth dictionary of
    synthetic data or the whitening matrix of image patches.  (``eq=False``: tensors
    have no single truth value, so datasets compare by identity.)
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(784,)`` for MNIST."""
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------- arguments


class _Args:
    """Checks one source's argument values, naming the source in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, name: str, expected: str, value: object) -> None:
        raise DataError(
            f"data source '{self.source}': argument '{name}' must be {expected}, got {value!r}"
        )

    def integer(self, name: str, value: object, lo: int, hi: int) -> None:
        is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not (is_int and lo <= value <= hi):
            self.fail(name, f"an integer in [{lo}, {hi}]", value)

    def real(self, name: str, value: object, lo: float, hi: float, *, hi_open: bool = False,
             lo_open: bool = False) -> None:
        is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        above = is_real and (value > lo if lo_open else value >= lo)
        below = is_real and (value < hi if hi_open else value <= hi)
        if not (above and below):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            self.fail(name, f"a number in {interval}", value)

    def boolean(self, name: str, value: object) -> None:
        if not isinstance(value, bool):
            self.fail(name, "true or false", value)

    def choice(self, name: str, value: object, choices: Sequence[str]) -> None:
        if value not in choices:
            self.fail(name, "one of " + ", ".join(f"'{c}'" for c in choices), value)

    def path(self, name: str, value: object, *, optional: bool = False) -> None:
        if optional and value is None:
            return
        if not (isinstance(value, (str, os.PathLike)) and str(value)):
            self.fail(name, "a file path" + (" or none" if optional else ""), value)

    def text(self, name: str, value: object) -> None:
        if not (isinstance(value, str) and value):
            self.fail(name, "a non-empty name", value)


def _held_out(source: str, count: int, test: float) -> int:
    """How many of ``count`` samples the ``test`` fraction holds out; at least 2 must remain."""
    n_test = round(count * test)
    if count - n_test < 2:
        raise DataError(
            f"data source '{source}': argument 'test' must leave at least 2 training samples, "
            f"but test={test!r} of count={count} leaves {count - n_test}"
        )
    return n_test


def _modulo_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The project's split: indices ``i % 5 != 0`` train, ``i % 5 == 0`` test."""
    is_test = np.arange(n) % 5 == 0
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _float_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor that owns a fresh copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _int_tensor(array: np.ndarray) -> torch.Tensor:
    """An int64 tensor that owns a fresh copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.int64))


# --------------------------------------------------------------------------- IDX format

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_header(stream: BinaryIO, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read an IDX header: magic ``00 00 <type> <ndim>``, then ndim big-endian uint32 sizes."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{magic.hex()})")
    ndim = magic[3]
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{name}: IDX header truncated (declares {ndim} dimensions)")
    return _IDX_DTYPES[magic[2]], struct.unpack(f">{ndim}I", sizes)


def _read_idx(stream: BinaryIO, name: str) -> np.ndarray:
    """Read a whole IDX array (header and data) into native byte order."""
    dtype, shape = _idx_header(stream, name)
    expected = math.prod(shape) * dtype.itemsize
    data = stream.read(expected)
    if len(data) < expected:
        raise DataError(
            f"{name}: IDX data truncated: shape {shape} needs {expected} bytes, found {len(data)}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- bundled data


def _bundled(*parts: str) -> Traversable:
    """A bundled data file (an importlib.resources Traversable), independent of the cwd."""
    resource = files("energydsl") / "datasets"
    for part in parts:
        resource = resource / part
    return resource


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 10,000 MNIST digits as read-only (10000, 784) uint8 and (10000,) int64."""
    arrays = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with _bundled("mnist", name).open("rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            arrays.append(_read_idx(stream, name))
    images = arrays[0].reshape(len(arrays[0]), -1)
    labels = arrays[1].astype(np.int64)
    for array in (images, labels):
        array.flags.writeable = False
    return images, labels


@functools.cache
def _gray_images() -> tuple[np.ndarray, ...]:
    """The bundled grayscale photographs as read-only float64 arrays in [0, 1], by file name."""
    images = []
    for resource in sorted(_bundled("images").iterdir(), key=lambda r: r.name):
        if resource.name.endswith(".png"):
            with resource.open("rb") as stream, Image.open(stream) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
            pixels.flags.writeable = False
            images.append(pixels)
    return tuple(images)


_MNIST_TRAIN = 8000  # samples in the MNIST training split (i % 5 != 0 of 10,000)
_PATCH_SIZES = (2, 64)  # smallest and largest patch side; whitening is O(size**6)


def mnist(count: int | None = None) -> Dataset:
    """The bundled MNIST digits: 8,000 training and 2,000 test images of 28x28 pixels.

    These are the 10,000 images of the official MNIST test set (by Yann LeCun, Corinna
    Cortes and Christopher Burges, CC BY-SA 3.0), split by the project convention: test
    = images whose index ``i % 5 == 0``, train = all the others.  Each sample is the
    flattened image, 784 pixel values scaled to [0, 1]; labels are the digits 0-9.

    Args:
        count: keep only the first ``count`` training samples (1 to 8000), for quick
            runs; the test split is always complete.  None (the default) keeps all.
    """
    _check_mnist(count)
    images, labels = _mnist_arrays()
    train, test = _modulo_split(len(labels))
    train = train[:count]
    return Dataset(
        name="mnist",
        x_train=_float_tensor(images[train] / np.float32(255)),
        x_test=_float_tensor(images[test] / np.float32(255)),
        y_train=_int_tensor(labels[train]),
        y_test=_int_tensor(labels[test]),
        num_classes=10,
    )


def _check_mnist(count: int | None) -> None:
    if count is not None:
        _Args("mnist").integer("count", count, 1, _MNIST_TRAIN)


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
    extras = {"whitening": _float_tensor(transform)} if whiten == "zca" else {}
    return Dataset(
        name="patches",
        x_train=_float_tensor(samples[: count - n_test]),
        x_test=_float_tensor(samples[count - n_test:]),
        y_train=None,
        y_test=None,
        num_classes=None,
        extras=extras,
    )


def _check_patches(size, count, whiten, center, test, seed, eps) -> int:
    """Check the arguments of :func:`patches`; return the number of test patches."""
    args = _Args("patches")
    args.integer("size", size, *_PATCH_SIZES)
    args.integer("count", count, 2, 1_000_000)
    args.choice("whiten", whiten, ("zca", "none"))
    args.boolean("center", center)
    args.real("test", test, 0.0, 1.0, hi_open=True)
    args.integer("seed", seed, 0, 2**63 - 1)
    args.real("eps", eps, 0.0, 1.0, lo_open=True)
    return _held_out("patches", count, test)


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


def synthetic(
    dim: int = 32,
    atoms: int = 48,
    count: int = 4000,
    k: int = 3,
    noise: float = 0.0,
    test: float = 0.2,
    nonneg: bool = False,
    seed: int = 0,
) -> Dataset:
    """Sparse combinations of a known random dictionary, for checking that a model recovers it.

    The dictionary is a ``(dim, atoms)`` matrix of Gaussian entries whose columns are
    scaled to unit l2 norm.  Each sample's code has exactly ``k`` non-zero entries on a
    support drawn uniformly at random; their magnitudes are uniform in [0.5, 1.5] (bounded
    away from zero so every active atom is identifiable) with a random sign unless
    ``nonneg``.  A sample is ``x = dictionary @ code + noise * N(0, I)``.

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
    """
    n_test = _check_synthetic(dim, atoms, count, k, noise, test, nonneg, seed)
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((dim, atoms))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    codes = _sparse_codes(count, atoms, k, nonneg, rng)
    samples = codes @ dictionary.T + noise * rng.standard_normal((count, dim))
    split = count - n_test
    return Dataset(
        name="synthetic",
        x_train=_float_tensor(samples[:split]),
        x_test=_float_tensor(samples[split:]),
        y_train=None,
        y_test=None,
        num_classes=None,
        extras={
            "dictionary": _float_tensor(dictionary),
            "codes_train": _float_tensor(codes[:split]),
            "codes_test": _float_tensor(codes[split:]),
        },
    )


def _check_synthetic(dim, atoms, count, k, noise, test, nonneg, seed) -> int:
    """Check the arguments of :func:`synthetic`; return the number of test samples."""
    args = _Args("synthetic")
    args.integer("dim", dim, 1, 100_000)
    args.integer("atoms", atoms, 1, 100_000)
    args.integer("count", count, 2, 1_000_000)
    args.integer("k", k, 1, atoms)
    args.real("noise", noise, 0.0, math.inf, hi_open=True)
    args.real("test", test, 0.0, 1.0, hi_open=True)
    args.boolean("nonneg", nonneg)
    args.integer("seed", seed, 0, 2**63 - 1)
    return _held_out("synthetic", count, test)


def _sparse_codes(count: int, atoms: int, k: int, nonneg: bool,
                  rng: np.random.Generator) -> np.ndarray:
    """``(count, atoms)`` codes with exactly ``k`` non-zeros of magnitude in [0.5, 1.5] per row."""
    support = np.argsort(rng.random((count, atoms)), axis=1)[:, :k]
    values = rng.uniform(0.5, 1.5, (count, k))
    if not nonneg:
        values *= rng.choice([-1.0, 1.0], (count, k))
    codes = np.zeros((count, atoms))
    np.put_along_axis(codes, support, values, axis=1)
    return codes


# --------------------------------------------------------------------------- user files

_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, struct.error)


def _npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """The array shape and dtype from the header of an .npy stream, without reading the data."""
    if np.lib.format.read_magic(stream) == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    return shape, dtype


def _open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading, decompressing it on the fly when it is gzip."""
    with open(path, "rb") as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


@dataclass(frozen=True)
class _ArrayRef:
    """One array in a user file: a whole .npy or IDX file, or one member of an .npz."""

    path: Path
    kind: str  # "npy", "npz" or "idx"
    name: str  # how messages call it: "digits.npy", "digits.npz['x']"
    member: str | None = None

    def shape(self) -> tuple[int, ...]:
        """The array's shape, from its header; a file too short for that shape is an error.

        Comparing the header with the file's length catches a truncated file at
        ``energydsl check`` time, before anything is loaded.
        """
        try:
            shape, dtype, data_start, length = self._header()
        except (*_READ_ERRORS, KeyError) as exc:  # KeyError: an .npz member without .npy
            raise DataError(f"{self.name}: cannot read {self.kind} data ({exc})") from exc
        needed = data_start + math.prod(shape) * dtype.itemsize
        if length is not None and not dtype.hasobject and length < needed:
            raise DataError(
                f"{self.name}: truncated: its header declares shape {shape} of {dtype}, "
                f"which needs {needed} bytes, but the {'member' if self.member else 'file'} has {length}"
            )
        return shape

    def _header(self) -> tuple[tuple[int, ...], np.dtype, int, int | None]:
        """Shape, dtype, where the data starts, and the data's full length (None if unknown)."""
        if self.kind == "npz":
            with zipfile.ZipFile(self.path) as archive:
                info = archive.getinfo(f"{self.member}.npy")
                with archive.open(info) as stream:
                    shape, dtype = _npy_header(stream)
                    return shape, dtype, stream.tell(), info.file_size  # uncompressed size
        with _open_binary(self.path) as stream:
            if self.kind == "npy":
                shape, dtype = _npy_header(stream)
            else:
                dtype, shape = _idx_header(stream, self.name)
            # a gzipped file's length is only known once it is decompressed
            length = None if isinstance(stream, gzip.GzipFile) else self.path.stat().st_size
            return shape, dtype, stream.tell(), length

    def load(self) -> np.ndarray:
        """The whole array."""
        try:
            if self.kind == "npz":
                with np.load(self.path, allow_pickle=False) as archive:
                    return archive[self.member]
            if self.kind == "npy":
                return np.load(self.path, allow_pickle=False)
            with _open_binary(self.path) as stream:
                return _read_idx(stream, self.name)
        except _READ_ERRORS as exc:
            raise DataError(f"{self.name}: cannot read {self.kind} data ({exc})") from exc


def _looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable ASCII (CSV, whitespace-separated numbers...)."""
    return all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head)


@dataclass(frozen=True)
class _Split:
    """Where one split's samples and (optional) labels live."""

    x: _ArrayRef
    y: _ArrayRef | None


def _locate(path: str | os.PathLike, base_dir: Path | None) -> tuple[Path, str]:
    """Resolve a user path against ``base_dir`` and detect its format from its first bytes."""
    resolved = Path(base_dir or ".") / Path(path)
    if not resolved.is_file():
        where = "" if str(resolved) == str(path) else f" (looked for {resolved})"
        what = "not a regular file" if resolved.exists() else "file not found"
        raise DataError(f"{what}: {path}{where}")
    try:
        with open(resolved, "rb") as stream:
            head = stream.read(64)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    if head.startswith(_ZIP_MAGIC):
        return resolved, "npz"
    if head.startswith(_NPY_MAGIC):
        return resolved, "npy"
    if head.startswith((_GZIP_MAGIC, b"\0\0")):
        return resolved, "idx"  # the rest of the IDX magic is checked when the header is read
    if not head:
        raise DataError(f"{path}: the file is empty")
    if _looks_like_text(head):
        raise DataError(
            f"{path}: this is a text file (it starts with {head[:16].decode('ascii')!r}); "
            "expected an .npz, .npy or IDX file (convert text with numpy.loadtxt and numpy.save)"
        )
    raise DataError(
        f"{path}: unrecognised format (bad magic number 0x{head[:4].hex()}); "
        "expected an .npz, .npy or IDX file (IDX optionally gzipped)"
    )


def _npz_splits(path: Path, display: str, x: str, y: str) -> tuple[_Split, _Split | None]:
    """An .npz's arrays: ``x`` with optional ``y``, and ``<x>_test`` / ``<y>_test`` if present."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
    except _READ_ERRORS as exc:
        raise DataError(f"{display}: not a valid .npz file ({exc})") from exc
    if x not in keys:
        present = ", ".join(f"'{key}'" for key in sorted(keys)) or "none"
        raise DataError(f"{display}: no array '{x}' (arrays present: {present})")

    def split(x_key: str, y_key: str) -> _Split:
        def member(key: str) -> _ArrayRef:
            return _ArrayRef(path, "npz", f"{display}['{key}']", key)
        return _Split(member(x_key), member(y_key) if y_key in keys else None)

    own_test = split(f"{x}_test", f"{y}_test") if f"{x}_test" in keys else None
    return split(x, y), own_test


def _plan_file(path, labels, test, test_labels, x, y, base_dir) -> tuple[_Split, _Split | None]:
    """Find the arrays of the ``file`` source: its training split and its test split, if any."""
    _check_file(path, labels, test, test_labels, x, y)
    resolved, kind = _locate(path, base_dir)
    test_path = None
    if test is not None:
        test_path, test_kind = _locate(test, base_dir)
        if test_kind != kind:
            raise DataError(
                f"test file {test} is {test_kind} but {path} is {kind}; use one format"
            )
    if kind == "npz":
        if labels is not None or test_labels is not None:
            raise DataError(
                f"{path}: labels= and test_labels= are for .npy and IDX files; "
                f"an .npz keeps its labels as array '{y}'"
            )
        train, test_split = _npz_splits(resolved, str(path), x, y)
        if test_path is not None:
            if test_split is not None:
                raise DataError(
                    f"{path}: has its own '{x}_test' array, so drop test={str(test)!r}"
                )
            test_split = _npz_splits(test_path, str(test), x, y)[0]
    else:
        if test_labels is not None and test is None:
            raise DataError(f"{path}: test_labels={str(test_labels)!r} needs a test= file")
        train = _Split(_ArrayRef(resolved, kind, str(path)), _label_ref(labels, base_dir))
        test_split = None
        if test_path is not None:
            test_x = _ArrayRef(test_path, kind, str(test))
            test_split = _Split(test_x, _label_ref(test_labels, base_dir))
    _check_both_labelled(train, test_split)
    return train, test_split


def _check_both_labelled(train: _Split, test: _Split | None) -> None:
    """Labels must come with both splits or with neither."""
    if test is not None and (train.y is None) != (test.y is None):
        labelled, unlabelled = (train, test) if test.y is None else (test, train)
        raise DataError(
            f"{labelled.x.name} has labels but {unlabelled.x.name} has none; "
            "label both splits or neither"
        )


def _label_ref(labels: str | os.PathLike | None, base_dir: Path | None) -> _ArrayRef | None:
    """The labels file named by ``labels`` (an .npy or IDX file), if any."""
    if labels is None:
        return None
    resolved, kind = _locate(labels, base_dir)
    if kind == "npz":
        raise DataError(f"{labels}: a labels file must be .npy or IDX, not .npz")
    return _ArrayRef(resolved, kind, str(labels))


def _check_file(path, labels, test, test_labels, x, y) -> None:
    args = _Args("file")
    args.path("path", path)
    args.path("labels", labels, optional=True)
    args.path("test", test, optional=True)
    args.path("test_labels", test_labels, optional=True)
    args.text("x", x)
    args.text("y", y)


def _checked_shape(train: _Split, test: _Split | None) -> tuple[int, ...]:
    """Check sample and label counts and shapes from the headers; return the sample shape."""
    shape = train.x.shape()
    if len(shape) < 2:
        raise DataError(
            f"{train.x.name}: expected an array of shape (samples, ...), got shape {shape}"
        )
    if shape[0] < 2:
        raise DataError(f"{train.x.name}: needs at least 2 samples, found {shape[0]}")
    _check_label_shape(train, shape[0])
    if test is not None:
        test_shape = test.x.shape()
        if len(test_shape) < 2 or test_shape[1:] != shape[1:]:
            raise DataError(
                f"{test.x.name}: test sample shape {test_shape[1:]} differs from "
                f"the training sample shape {shape[1:]} of {train.x.name}"
            )
        if test_shape[0] < 1:
            raise DataError(f"{test.x.name}: the test split has no samples")
        _check_label_shape(test, test_shape[0])
    return shape[1:]


def _check_label_shape(split: _Split, samples: int) -> None:
    if split.y is None:
        return
    shape = split.y.shape()
    if len(shape) != 1:
        raise DataError(f"{split.y.name}: labels must be a 1-D array, got shape {shape}")
    if shape[0] != samples:
        raise DataError(
            f"{split.y.name}: {shape[0]} labels for the {samples} samples of {split.x.name}"
        )


def _load_samples(ref: _ArrayRef) -> np.ndarray:
    """Samples as float32: uint8 scaled to [0, 1], other numbers kept; must be finite."""
    array = ref.load()
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255)
    elif array.dtype.kind in "biuf":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            array = array.astype(np.float32)
    else:
        raise DataError(f"{ref.name}: expected numbers, got dtype {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        first = [int(i) for i in np.unravel_index(np.argmax(bad), bad.shape)]
        raise DataError(
            f"{ref.name}: {nan} NaN and {inf} infinite values (as float32), the first at "
            f"index {first} (sample {first[0]}); expected finite numbers"
        )
    return array


def _load_labels(ref: _ArrayRef) -> np.ndarray:
    """Labels as int64 class indices: integers (or whole-valued floats), none negative."""
    array = ref.load()
    if array.dtype.kind == "f":
        fractional = int(np.sum(~np.isfinite(array) | (array != np.round(array))))
        if fractional:
            raise DataError(
                f"{ref.name}: labels must be integer class indices; {fractional} of "
                f"{array.size} values are not whole numbers"
            )
    elif array.dtype.kind not in "iu":
        raise DataError(
            f"{ref.name}: labels must be integer class indices, got dtype {array.dtype}"
        )
    labels = array.astype(np.int64)
    negative = int(np.sum(labels < 0))
    if negative:
        raise DataError(
            f"{ref.name}: labels must be class indices 0, 1, 2, ...; "
            f"found {negative} negative values (smallest {labels.min()})"
        )
    return labels


def _load_split(split: _Split) -> tuple[np.ndarray, np.ndarray | None]:
    """A split's samples and labels (None when unlabelled)."""
    labels = _load_labels(split.y) if split.y is not None else None
    return _load_samples(split.x), labels


def _subset(x: np.ndarray, y: np.ndarray | None,
            index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples and labels at ``index``."""
    return x[index], (None if y is None else y[index])


def _num_classes(*label_arrays: np.ndarray) -> int:
    """The number of classes: the largest label plus one."""
    return max(int(labels.max()) for labels in label_arrays) + 1


def file(
    path: str | os.PathLike,
    labels: str | None = None,
    test: str | None = None,
    test_labels: str | None = None,
    x: str = "x",
    y: str = "y",
    *,
    base_dir: Path | None = None,
) -> Dataset:
    """Samples (and optional integer labels) from the user's own files.

    The format is recognised by the file's first bytes, whatever its name:

    * ``.npz``: the samples are array ``x`` and the optional labels array ``y``; arrays
      ``x_test`` / ``y_test`` in the same file, when present, are the test split.
    * ``.npy``: the array is the samples; labels come from the ``labels`` file.
    * IDX (as MNIST is distributed: ``*-ubyte``, ``.idx``, optionally gzipped): the
      array is the samples; labels come from the ``labels`` file.  All IDX element
      types are read (unsigned/signed byte, short, int, float, double).

    The first axis indexes samples; the rest is kept as the sample shape (the spec
    decides whether to flatten).  uint8 data are scaled to [0, 1]; other numbers are
    converted to float32 as they are, and must be finite.  Labels are a 1-D array of
    non-negative integers, one per sample; the number of classes is the largest label
    plus one over both splits.  Without a test file (or ``x_test`` array) the test split
    is every sample whose index ``i % 5 == 0``, the training split the others.

    Args:
        path: the samples file; a relative path is taken from the spec's directory.
        labels: an .npy or IDX file of labels for ``path`` (not for .npz files).
        test: a second file in the same format holding the test split.
        test_labels: an .npy or IDX file of labels for the ``test`` file (not for .npz).
        x: name of the samples array in an .npz file (its test split: ``<x>_test``).
        y: name of the labels array in an .npz file (its test split: ``<y>_test``).
        base_dir: directory that relative paths start from; supplied by the compiler,
            not by the spec (default: the current directory).
    """
    train, test_split = _plan_file(path, labels, test, test_labels, x, y, base_dir)
    _checked_shape(train, test_split)
    x_all, y_all = _load_split(train)
    if test_split is None:
        train_index, test_index = _modulo_split(len(x_all))
        x_train, y_train = _subset(x_all, y_all, train_index)
        x_test, y_test = _subset(x_all, y_all, test_index)
    else:
        (x_train, y_train), (x_test, y_test) = (x_all, y_all), _load_split(test_split)
    labelled = y_train is not None
    return Dataset(
        name=f"file:{path}",
        x_train=torch.from_numpy(x_train),
        x_test=torch.from_numpy(x_test),
        y_train=torch.from_numpy(y_train) if labelled else None,
        y_test=torch.from_numpy(y_test) if labelled else None,
        num_classes=_num_classes(y_train, y_test) if labelled else None,
    )


def stacked(run: str, spec: str | None = None, pooling: int = 2, *, base_dir: Path | None = None) -> Dataset:
    """The L2-pooled output of another trained run: stacking a layer on another.

    Each training and test sample of the run's own data goes through the run's encoder
    (its code maps), then √(Σ z²) over non-overlapping ``pooling``×``pooling`` windows of each
    map; labels are kept.  Samples are ``[maps, rows / pooling, cols / pooling]``.

    Args:
        run: the trained run directory, relative to the current directory (where
            ``energydsl run`` writes ``runs/<model>``).
        spec: the spec that run trains (relative to this spec, like data files): lets
            ``energydsl check`` find the sample shape before the run exists.
        pooling: the side of the pooling windows (1: no pooling).
        base_dir: directory that ``spec`` is relative to; supplied by the compiler, not by
            the spec.
    """
    _check_stacked(run, spec, pooling)
    from energydsl.runs.stacking import stacked_dataset

    return stacked_dataset(run, spec, pooling, base_dir)


def _check_stacked(run, spec, pooling) -> None:
    args = _Args("stacked")
    args.path("run", run)
    args.path("spec", spec, optional=True)
    args.integer("pooling", pooling, 1, 64)


def _describe_stacked(run, spec, pooling, base_dir):
    _check_stacked(run, spec, pooling)
    from energydsl.runs.stacking import describe_stacked

    return describe_stacked(run, spec, pooling, base_dir)


# --------------------------------------------------------------------------- registry

SOURCES: dict[str, Callable[..., Dataset]] = {
    "mnist": mnist,
    "patches": patches,
    "synthetic": synthetic,
    "file": file,
    "stacked": stacked,
}
"""Every data source by name.  A source's positional-or-keyword parameters are what a spec
may pass; keyword-only parameters (``base_dir``) are context supplied by the compiler."""


def _describe_mnist(count):
    _check_mnist(count)
    return (784,), 10


def _describe_patches(size, count, whiten, center, test, seed, eps):
    _check_patches(size, count, whiten, center, test, seed, eps)
    return (size * size,), None


def _describe_synthetic(dim, atoms, count, k, noise, test, nonneg, seed):
    _check_synthetic(dim, atoms, count, k, noise, test, nonneg, seed)
    return (dim,), None


def _describe_file(path, labels, test, test_labels, x, y, base_dir):
    train, test_split = _plan_file(path, labels, test, test_labels, x, y, base_dir)
    shape = _checked_shape(train, test_split)
    if train.y is None:
        return shape, None
    label_arrays = [_load_labels(train.y)]
    if test_split is not None:
        label_arrays.append(_load_labels(test_split.y))
    return shape, _num_classes(*label_arrays)


# What describe_source answers per source: same parameters, same checks, no loading.
_DESCRIBERS: dict[str, Callable[..., tuple[tuple[int, ...], int | None]]] = {
    "mnist": _describe_mnist,
    "patches": _describe_patches,
    "synthetic": _describe_synthetic,
    "file": _describe_file,
    "stacked": _describe_stacked,
}


def _bind(name: str, args: Sequence, kwargs: Mapping[str, object] | None,
          base_dir: Path | None) -> tuple[Callable[..., Dataset], dict[str, object]]:
    """Look the source up and match the spec's arguments to its parameters (defaults filled in)."""
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(sorted(SOURCES))
        raise DataError(f"unknown data source '{name}'{hint} (known sources: {known})")
    source = SOURCES[name]
    parameters = inspect.signature(source).parameters
    public = [p for p in parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    names = [p.name for p in public]
    if len(args) > len(public):
        raise DataError(
            f"data source '{name}' takes at most {len(public)} positional arguments "
            f"({', '.join(names)}), got {len(args)}"
        )
    bound = dict(zip(names, args))
    for key, value in (kwargs or {}).items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"data source '{name}' has no argument '{key}'{hint} "
                f"(its arguments: {', '.join(names)})"
            )
        if key in bound:
            raise DataError(f"data source '{name}': argument '{key}' given twice")
        bound[key] = value
    for parameter in public:
        if parameter.name not in bound:
            if parameter.default is parameter.empty:
                raise DataError(f"data source '{name}' needs argument '{parameter.name}'")
            bound[parameter.name] = parameter.default
    if "base_dir" in parameters:
        bound["base_dir"] = base_dir
    return source, bound


def load_data(name: str, args: Sequence = (), kwargs: Mapping[str, object] | None = None,
              base_dir: Path | None = None) -> Dataset:
    """Load data source ``name`` called with ``args`` and ``kwargs``.

    ``base_dir`` is where relative file paths start (the spec's directory).  Raises
    :class:`DataError` for an unknown source, unknown or missing arguments, bad values
    and unusable files.
    """
    source, bound = _bind(name, args, kwargs, base_dir)
    return source(**bound)


def describe_source(name: str, args: Sequence = (), kwargs: Mapping[str, object] | None = None,
                    base_dir: Path | None = None) -> tuple[tuple[int, ...], int | None]:
    """The sample shape and number of classes (None: unlabelled) that :func:`load_data` gives.

    Checks the arguments like :func:`load_data` but reads only file headers (and label
    files, which are small), so ``energydsl check`` can resolve sizes taken from the data.
    """
    _, bound = _bind(name, args, kwargs, base_dir)
    return _DESCRIBERS[name](**bound)
