"""The ``mnist`` source: the bundled MNIST digits."""

from __future__ import annotations

import functools
import gzip

import numpy as np

from energydsl.data.base import Args, Dataset, Source, bundled, float_tensor, int_tensor, modulo_split
from energydsl.data.formats import read_idx

_MNIST_TRAIN = 8000  # samples in the MNIST training split (i % 5 != 0 of 10,000)
_MNIST_TEST = 2000
_MNIST_ALL = 10000
_PIXELS = 784


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 10,000 MNIST digits as read-only (10000, 784) uint8 and (10000,) int64."""
    arrays = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with bundled("mnist", name).open("rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            arrays.append(read_idx(stream, name))
    images = arrays[0].reshape(len(arrays[0]), -1)
    labels = arrays[1].astype(np.int64)
    for array in (images, labels):
        array.flags.writeable = False
    return images, labels


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
    train, test = modulo_split(len(labels))
    train = train[:count]
    return Dataset(
        name="mnist",
        x_train=float_tensor(images[train] / np.float32(255)),
        x_test=float_tensor(images[test] / np.float32(255)),
        y_train=int_tensor(labels[train]),
        y_test=int_tensor(labels[test]),
        num_classes=10,
    )


def _check_mnist(count: int | None) -> None:
    if count is not None:
        Args("mnist").integer("count", count, 1, _MNIST_TRAIN)


def _describe_mnist(count):
    return (784,), 10


def _footprint_mnist(batch, count):
    """The bundled digits (uint8, kept), and per loaded image its uint8 copy, the division's float32
    result and the tensor's float32 copy; one int64 label twice."""
    images = (count or _MNIST_TRAIN) + _MNIST_TEST
    return _MNIST_ALL * (_PIXELS + 8) + images * (_PIXELS * 9 + 16)


SOURCE = Source("mnist", load=mnist, describe=_describe_mnist, check=_check_mnist, footprint=_footprint_mnist)
