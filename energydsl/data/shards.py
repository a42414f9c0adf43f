"""The ``shards`` source: activations in .npy or safetensors files, read from disk as training needs them.

A shard is one file holding one 2-D array ``(samples, width)`` of float32, float16, bfloat16 or
float64; the shards of a set are read as one array, in the (natural) order of their names.  Only
the headers are read up front: the .npy header that numpy writes, or a safetensors file's 8-byte
length and JSON table (``{name: {"dtype", "shape", "data_offsets"}}``), which give where each
array's rows start.  Training reads its batches row by row (:mod:`energydsl.data.streamed`);
the held-out samples that evaluation reads each epoch are few, and loaded.
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from energydsl.data.base import Args, DataError, Dataset, Source
from energydsl.data.streamed import BLOCK, READ_AHEAD, WINDOW, StreamedSamples, init_rows

SUFFIXES = (".npy", ".safetensors")
_NPY_MAGIC = b"\x93NUMPY"
_SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # the safetensors format's own bound on its JSON header
# a safetensors type → (the type its bytes are read as, its name in messages)
_SAFETENSORS_TYPES = {"F32": (np.dtype("<f4"), "float32"), "F16": (np.dtype("<f2"), "float16"),
                      "BF16": (np.dtype("<u2"), "bfloat16"), "F64": (np.dtype("<f8"), "float64")}  # fmt: skip
_NPY_KINDS = {np.dtype("f4"): "float32", np.dtype("f2"): "float16", np.dtype("f8"): "float64"}


@dataclass(frozen=True)
class Shard:
    """One file's array: where its rows start, how many, and how they are stored."""

    path: Path
    name: str  # how messages call it
    offset: int  # the byte where row 0 starts
    rows: int
    width: int
    raw: np.dtype  # the type the stored values are read as (bfloat16: uint16)
    kind: str  # "float32", "float16", "bfloat16" or "float64"

    @property
    def row_bytes(self) -> int:
        return self.width * self.raw.itemsize


def to_float32(raw: np.ndarray, kind: str) -> np.ndarray:
    """Stored values as float32.  A bfloat16 is the high half of a float32: shifted back into place."""
    if kind == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


# --------------------------------------------------------------------------- finding the files


def _natural(path: Path) -> list:
    """Sort key: the digits in a name compare as numbers (shard_2 before shard_10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def shard_files(path: str | os.PathLike, base_dir: Path | None) -> list[tuple[Path, str]]:
    """The files ``path`` names — one file, every .npy / .safetensors file of a directory, or the
    files a glob pattern matches — as (file, name in messages), in natural order of their names."""
    text = str(path)
    base = Path(base_dir or ".")
    resolved = base / Path(path)
    if _is_pattern(text):
        found = [name for name in glob.glob(text, root_dir=base, recursive=True) if (base / name).is_file()]
        if not found:
            raise DataError(f"data source 'shards': no file matches {text}" + _looked_in(base, resolved, text))
        return [(base / name, name) for name in sorted(found, key=_natural)]
    if resolved.is_dir():
        found = [p for p in resolved.iterdir() if p.suffix in SUFFIXES and p.is_file()]
        if not found:
            raise DataError(f"{text}: no .npy or .safetensors file in this directory")
        return [(p, str(Path(text) / p.name)) for p in sorted(found, key=_natural)]
    if not resolved.is_file():
        what = "not a regular file" if resolved.exists() else "file not found"
        raise DataError(f"{what}: {text}" + _looked_in(base, resolved, text))
    return [(resolved, text)]


def _is_pattern(text: str) -> bool:
    return any(magic in text for magic in "*?[")


def _looked_in(base: Path, resolved: Path, text: str) -> str:
    return "" if str(resolved) == text else f" (looked for {resolved})"


# --------------------------------------------------------------------------- headers


def read_shard(path: Path, name: str, tensor: str | None) -> Shard:
    """The array of one file, from its header; ``tensor``: which one of a safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(9)
            stream.seek(0)
            if head.startswith(_NPY_MAGIC):
                shard = _npy_header(stream, path, name)
            elif len(head) == 9 and head[8:9] == b"{":
                shard = _safetensors_header(stream, path, name, tensor, size)
            else:
                raise DataError(f"{name}: not an .npy or safetensors file")
    except OSError as error:
        raise DataError(f"{name}: cannot read it ({error.strerror or error})") from None
    needed = shard.offset + shard.rows * shard.row_bytes
    if size < needed:
        raise DataError(f"{name}: truncated: its header declares {shard.rows} x {shard.width} {shard.kind} "
                        f"values, which need {needed} bytes, but the file has {size}")  # fmt: skip
    return shard


def _npy_header(stream, path: Path, name: str) -> Shard:
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        shape, fortran_order, dtype = read[version](stream)
    except (ValueError, EOFError, struct.error) as error:
        raise DataError(f"{name}: not a valid .npy file ({error})") from None
    kind = _NPY_KINDS.get(dtype.newbyteorder("="))
    if kind is None:
        raise DataError(f"{name}: holds {dtype} values; expected float32, float16 or float64 (or a safetensors "
                        "file of bfloat16)")  # fmt: skip
    rows, width = _matrix_shape(shape, name)
    if fortran_order and rows > 1 and width > 1:
        raise DataError(f"{name}: stored column by column (Fortran order); save it row by row "
                        "(numpy.save(path, numpy.ascontiguousarray(x)))")  # fmt: skip
    return Shard(path, name, stream.tell(), rows, width, dtype, kind)


def _safetensors_header(stream, path: Path, name: str, tensor: str | None, size: int) -> Shard:
    (length,) = struct.unpack("<Q", stream.read(8))
    if length > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
        raise DataError(f"{name}: not a valid safetensors file (its header length {length} is beyond the file)")
    try:
        table = json.loads(stream.read(length))
        tensors = {key: value for key, value in table.items() if key != "__metadata__"}
    except (ValueError, AttributeError) as error:
        raise DataError(f"{name}: not a valid safetensors file (its header is not a JSON table: {error})") from None
    if tensor is None:
        if len(tensors) != 1:
            names = ", ".join(sorted(tensors)) or "none"
            raise DataError(f"{name}: holds {len(tensors)} tensors ({names}); name the samples with x = \"...\"")
        tensor = next(iter(tensors))
    if tensor not in tensors:
        raise DataError(f"{name}: has no tensor '{tensor}' (its tensors: {', '.join(sorted(tensors)) or 'none'})")
    try:
        entry = tensors[tensor]
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{name}: not a valid safetensors file (tensor '{tensor}' lacks dtype, shape or "
                        "data_offsets)") from None  # fmt: skip
    if dtype not in _SAFETENSORS_TYPES:
        raise DataError(f"{name}: tensor '{tensor}' holds {dtype} values; expected F32, F16, BF16 or F64")
    rows, width = _matrix_shape(shape, name)
    raw, kind = _SAFETENSORS_TYPES[dtype]
    if end - begin != rows * width * raw.itemsize:
        raise DataError(f"{name}: not a valid safetensors file (tensor '{tensor}' of shape {list(shape)} "
                        f"spans {end - begin} bytes)")  # fmt: skip
    return Shard(path, name, 8 + length + begin, rows, width, raw, kind)


def _matrix_shape(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise DataError(f"{name}: expected a 2-D array (samples, width), got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- reading rows


class ShardSet:
    """The shards of a set read as one array of rows ``(total, width)``, float32.

    :meth:`read` takes global row numbers and reads each run of consecutive rows of one file with
    one positional read into a new buffer; it keeps no file open and no memory between calls.
    """

    def __init__(self, shards: list[Shard]):
        first = shards[0]
        for shard in shards[1:]:
            if (shard.width, shard.kind, shard.raw) != (first.width, first.kind, first.raw):
                raise DataError(f"{shard.name}: {shard.width} values of {shard.kind} per sample, but {first.name} "
                                f"has {first.width} of {first.kind}; every shard must store the same")  # fmt: skip
        self.shards = shards
        self.width, self.kind, self.raw = first.width, first.kind, first.raw
        self.starts = np.cumsum([0] + [s.rows for s in shards])  # global row where each shard starts

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (global numbers, any order, repeats allowed) as float32 ``(len(rows), width)``."""
        unique, inverse = np.unique(rows, return_inverse=True)
        which = np.searchsorted(self.starts, unique, side="right") - 1
        raw = np.empty((len(unique), self.width), dtype=self.raw)
        # a run of rows read at once: each row follows the one before, in the same file
        new_run = (np.diff(unique, prepend=-2) != 1) | (np.diff(which, prepend=-1) != 0)
        run_starts = np.flatnonzero(new_run)
        run_stops = np.append(run_starts[1:], len(unique))
        self._read_runs(raw, unique, which, run_starts, run_stops)
        values = to_float32(raw, self.kind)
        self._check_finite(values, unique, which)
        return values if len(unique) == len(rows) and np.array_equal(unique, rows) else values[inverse]

    def _read_runs(self, raw, unique, which, run_starts, run_stops) -> None:
        row_bytes = self.width * self.raw.itemsize
        buffer = memoryview(raw).cast("B")
        shards = which[run_starts]
        first_rows = unique[run_starts] - self.starts[shards]
        offsets = np.array([s.offset for s in self.shards])[shards] + first_rows * row_bytes
        files: dict[int, int] = {}
        try:
            for shard, offset, start, stop in zip(shards.tolist(), offsets.tolist(), run_starts.tolist(),
                                                  run_stops.tolist()):  # fmt: skip
                if shard not in files:
                    files[shard] = os.open(self.shards[shard].path, os.O_RDONLY)
                part = buffer[start * row_bytes : stop * row_bytes]
                if _read_into(files[shard], part, offset) != len(part):
                    raise DataError(f"{self.shards[shard].name}: shorter than its header says (was it rewritten "
                                    "while training?)")  # fmt: skip
        except OSError as error:
            name = self.shards[shard].name
            raise DataError(f"{name}: cannot read it ({error.strerror or error})") from None
        finally:
            for descriptor in files.values():
                os.close(descriptor)

    def _check_finite(self, values: np.ndarray, unique: np.ndarray, which: np.ndarray) -> None:
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            shard = self.shards[which[first]]
            row = int(unique[first] - self.starts[which[first]])
            raise DataError(f"{shard.name}: sample {row} holds NaN or infinite values; expected finite numbers")


def _read_into(descriptor: int, part: memoryview, offset: int) -> int:
    """Fill ``part`` from the file at ``offset``; returns the bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(descriptor, [part], offset)
    data = os.pread(descriptor, len(part), offset)
    part[: len(data)] = data
    return len(data)


# --------------------------------------------------------------------------- the splits


def _split_sizes(shard_set: ShardSet, split: str, test_every: int) -> tuple[int, int]:
    """How many samples train and how many are held out."""
    held = shard_set.shards[-1].rows if split == "shard" else -(-shard_set.total // test_every)
    return shard_set.total - held, held


def _train_rows(positions: np.ndarray, every: int) -> np.ndarray:
    """split = "index": training position p is the p-th row whose index i % every != 0."""
    return every * (positions // (every - 1)) + positions % (every - 1) + 1


def _plan(path, x, split, test_every, base_dir) -> tuple[ShardSet, int, int]:
    """The shards and the sizes of the two parts, checked."""
    shard_set = _shard_set(path, x, base_dir)
    if split == "shard" and len(shard_set.shards) < 2:
        raise DataError(f"data source 'shards': split = \"shard\" holds out the last shard, but {path} names "
                        "one file; give several or use split = \"index\"")  # fmt: skip
    train, test = _split_sizes(shard_set, split, test_every)
    if train < 2 or test < 1:
        raise DataError(f"data source 'shards': {path} holds {shard_set.total} samples: {train} to train "
                        f"and {test} held out; at least 2 and 1 are needed")  # fmt: skip
    return shard_set, train, test


def _shard_set(path, tensor, base_dir) -> ShardSet:
    return ShardSet([read_shard(file, name, tensor) for file, name in shard_files(path, base_dir)])


def _targets(target, y, shard_set: ShardSet, base_dir) -> ShardSet | None:
    """The target shards, one row per sample of ``shard_set`` (None without ``target``)."""
    if target is None:
        return None
    targets = _shard_set(target, y, base_dir)
    if targets.total != shard_set.total:
        raise DataError(f"data source 'shards': the targets {target} hold {targets.total} rows but the samples "
                        f"hold {shard_set.total}; a transcoder needs one target row per sample")  # fmt: skip
    return targets


def shards(
    path: str | os.PathLike,
    x: str | None = None,
    split: str = "index",
    test_every: int = 5,
    test_samples: int = 16384,
    block: int = BLOCK,
    window: int = WINDOW,
    target: str | os.PathLike | None = None,
    y: str | None = None,
    *,
    base_dir: Path | None = None,
) -> Dataset:
    """Activations on disk, read as training needs them: a set far larger than memory trains in a
    memory that depends on the batch, not on the set.

    ``path`` is one file, a directory (its .npy and .safetensors files) or a glob pattern
    (``"acts/layer6_*.npy"``, ``**`` for subfolders); the files are shards of one array, taken in
    the natural order of their names (``shard_2`` before ``shard_10``).  Each holds a 2-D array
    ``(samples, width)`` of float32, float16 or float64 (.npy), or F32, F16, BF16 or F64
    (safetensors: the one tensor of the file, or the one named ``x``); every shard stores the same
    width and type, and values are read as float32.  Samples are unlabelled.  ``target`` names a
    second set of shards, the same way, with one row per sample in the same order: a transcoder's
    targets (``target y[e]`` in the spec), read at the same positions as the samples.

    Nothing is loaded but the held-out samples that evaluation reads.  An epoch reads the
    training samples in a random order of blocks of ``block`` consecutive samples, shuffled
    ``window`` blocks at a time, and a background thread reads the next batches while the
    current one trains (:mod:`energydsl.data.streamed`).  With ``--nproc N`` each worker reads
    only its part of every batch.  A resumed run continues at the same place of the stream.

    Args:
        path: a file, a directory or a glob pattern; a relative path starts from the spec's directory.
        x: the name of the samples tensor in safetensors files (default: their only tensor).
        split: ``"index"``: the held-out samples are those whose index ``i % test_every == 0`` over
            the whole set (the project's convention for files); ``"shard"``: the last shard is held out.
        test_every: with ``split = "index"``, one sample in this many is held out (2 to 1,000,000).
        test_samples: the most held-out samples evaluation reads, evenly spread over the held-out part
            (1 to 10,000,000); they are held in memory.
        block: samples per block of the epoch's order (1 to 10,000,000).
        window: blocks whose samples are shuffled together (1 to 100,000).
        target: the targets' shards (a file, a directory or a glob), or none.
        y: the name of the targets tensor in safetensors files (default: their only tensor).
        base_dir: directory that relative paths start from; supplied by energydsl, not by the spec.
    """
    _check_shards(path, x, split, test_every, test_samples, block, window, target, y)
    shard_set, train, test = _plan(path, x, split, test_every, base_dir)
    targets = _targets(target, y, shard_set, base_dir)
    if split == "shard":
        train_rows, test_rows = (lambda p: p), (lambda q: q + train)
    else:
        train_rows, test_rows = partial(_train_rows, every=test_every), (lambda q: q * test_every)
    held = min(test_samples, test)
    spread = (np.arange(held, dtype=np.int64) * test) // held  # evenly over the held-out part

    def streamed(rows: ShardSet) -> tuple[StreamedSamples, torch.Tensor]:
        train_part = StreamedSamples(f"shards:{path}", train, (rows.width,),
                                     lambda positions: rows.read(train_rows(positions)), block, window)  # fmt: skip
        return train_part, torch.from_numpy(rows.read(test_rows(spread)))

    x_train, x_test = streamed(shard_set)
    target_train, target_test = streamed(targets) if targets is not None else (None, None)
    return Dataset(name=f"shards:{path}", x_train=x_train, x_test=x_test, y_train=None, y_test=None, num_classes=None,
                   target_train=target_train, target_test=target_test)  # fmt: skip


def _check_shards(path, x, split, test_every, test_samples, block, window, target=None, y=None) -> None:
    args = Args("shards")
    args.path("path", path)
    args.path("target", target, optional=True)
    for name, value in (("x", x), ("y", y)):
        if value is not None:
            args.text(name, value)
    args.choice("split", split, ("index", "shard"))
    args.integer("test_every", test_every, 2, 1_000_000)
    args.integer("test_samples", test_samples, 1, 10_000_000)
    args.integer("block", block, 1, 10_000_000)
    args.integer("window", window, 1, 100_000)


def _describe_shards(path, x, split, test_every, test_samples, block, window, target=None, y=None, *, base_dir):
    shard_set, _, _ = _plan(path, x, split, test_every, base_dir)
    targets = _targets(target, y, shard_set, base_dir)
    return (shard_set.width,), None, (targets.width,) if targets is not None else None


def _footprint_shards(batch, path, x, split, test_every, test_samples, block, window, target=None, y=None, *,
                      base_dir) -> int:  # fmt: skip
    """The held-out samples, and the larger of the batches read ahead and the sample initialisers may
    read (before training).  A read holds the stored values, their float32 copy and the copy in the
    order asked; the initialisers' statistics, a float64 copy.  Targets count like samples."""
    shard_set, train, test = _plan(path, x, split, test_every, base_dir)
    targets = _targets(target, y, shard_set, base_dir)
    per_row = shard_set.width * (shard_set.raw.itemsize + 8)
    if targets is not None:
        per_row += targets.width * (targets.raw.itemsize + 8)
    reading = (READ_AHEAD + 1) * batch * per_row
    initialising = min(train, init_rows((shard_set.width,))) * shard_set.width * (shard_set.raw.itemsize + 12)
    return min(test_samples, test) * per_row + max(reading, initialising)


SOURCE = Source("shards", load=shards, describe=_describe_shards, check=_check_shards, paths=("path", "target"),
                footprint=_footprint_shards)  # fmt: skip
