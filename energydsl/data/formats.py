"""The array file formats that data is read from: IDX (as MNIST is distributed), .npy and .npz.

Each reader names the file in its errors (:class:`~energydsl.data.base.DataError`, one line).
:class:`ArrayRef` is one array in a user file; its shape comes from the header alone, so
``energydsl check`` can describe a file without loading it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from energydsl.data.base import DataError

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def idx_header(stream: BinaryIO, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read an IDX header: magic ``00 00 <type> <ndim>``, then ndim big-endian uint32 sizes."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{magic.hex()})")
    ndim = magic[3]
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{name}: IDX header truncated (declares {ndim} dimensions)")
    return _IDX_DTYPES[magic[2]], struct.unpack(f">{ndim}I", sizes)


def read_idx(stream: BinaryIO, name: str) -> np.ndarray:
    """Read a whole IDX array (header and data) into native byte order."""
    dtype, shape = idx_header(stream, name)
    expected = math.prod(shape) * dtype.itemsize
    data = stream.read(expected)
    if len(data) < expected:
        raise DataError(
            f"{name}: IDX data truncated: shape {shape} needs {expected} bytes, found {len(data)}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- .npy and .npz

_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, struct.error)


def _npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """The array shape and dtype from the header of an .npy stream, without reading the data."""
    if np.lib.format.read_magic(stream) == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    return shape, dtype


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading, decompressing it on the fly when it is gzip."""
    with open(path, "rb") as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


@dataclass(frozen=True)
class ArrayRef:
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
        return self.header()[0]

    def header(self) -> tuple[tuple[int, ...], np.dtype]:
        """The array's shape and type, from its header (checked like :meth:`shape`)."""
        try:
            shape, dtype, data_start, length = self._header()
        except (*READ_ERRORS, KeyError) as exc:  # KeyError: an .npz member without .npy
            raise DataError(f"{self.name}: cannot read {self.kind} data ({exc})") from exc
        needed = data_start + math.prod(shape) * dtype.itemsize
        if length is not None and not dtype.hasobject and length < needed:
            raise DataError(
                f"{self.name}: truncated: its header declares shape {shape} of {dtype}, "
                f"which needs {needed} bytes, but the {'member' if self.member else 'file'} has {length}"
            )
        return shape, dtype

    def _header(self) -> tuple[tuple[int, ...], np.dtype, int, int | None]:
        """Shape, dtype, where the data starts, and the data's full length (None if unknown)."""
        if self.kind == "npz":
            with zipfile.ZipFile(self.path) as archive:
                info = archive.getinfo(f"{self.member}.npy")
                with archive.open(info) as stream:
                    shape, dtype = _npy_header(stream)
                    return shape, dtype, stream.tell(), info.file_size  # uncompressed size
        with open_binary(self.path) as stream:
            if self.kind == "npy":
                shape, dtype = _npy_header(stream)
            else:
                dtype, shape = idx_header(stream, self.name)
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
            with open_binary(self.path) as stream:
                return read_idx(stream, self.name)
        except READ_ERRORS as exc:
            raise DataError(f"{self.name}: cannot read {self.kind} data ({exc})") from exc


def file_kind(head: bytes) -> str | None:
    """The format a file's first bytes announce: "npz", "npy" or "idx" (gzipped or not); None if
    none of them (the rest of the IDX magic is checked when the header is read)."""
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith((_GZIP_MAGIC, b"\0\0")):
        return "idx"
    return None
