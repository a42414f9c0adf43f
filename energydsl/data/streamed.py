"""Training samples that stay on disk: :class:`StreamedSamples`, the order an epoch reads them in
(:class:`StreamOrder`) and the background read of the next batches (:func:`read_ahead`).

A set of activations larger than memory is never loaded: ``x_train[index]`` reads the rows it
names, through positional reads (``os.preadv``) into a fresh buffer, so the process holds the
batch and not the pages of a long-lived mapping (a memory map's touched pages count as the
process's resident memory until it is unmapped).

**The epoch's order.**  The ``n`` training samples (positions 0 … n − 1) are cut into blocks
of ``block`` consecutive positions.  An epoch visits the blocks in a random order, ``window``
blocks at a time, and shuffles the samples of a window's blocks together:

    π        = a permutation of the ⌈n / block⌉ blocks                     (from seed)
    window w = the positions of blocks π[wW], …, π[wW + W − 1], shuffled     (from seed and w)
    order    = window 0, window 1, …

Every sample is visited once per epoch, a batch draws from at most two windows, and the reads
of a window stay within W regions of the files.  The order is a pure function of
``(seed, samples, block, window)``: that is all a checkpoint keeps to resume mid-epoch, where an
in-memory set keeps its whole permutation.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import numpy as np
import torch

BLOCK = 8192  # samples per block of the epoch's order
WINDOW = 16  # blocks whose samples are shuffled together
READ_AHEAD = 2  # batches read ahead of the one being trained on
INIT_BYTES = 32 * 2**20  # the sample that initialisers read (samples(x), mean(x)...): at most this
INIT_ROWS = (1024, 65536)  # ... and between these many rows
INIT_RUNS = 64  # ... in this many evenly spread runs of consecutive samples (few seeks on a cold disk)
T = TypeVar("T")


class StreamedSamples:
    """Samples read from disk on demand; indexed like a tensor of shape ``(count, *sample_shape)``.

    ``x[index]`` (an int, a slice, or a 1-D integer tensor or array of positions) reads those
    samples and returns them as a float32 tensor, in the order asked.  ``read(rows)`` is the
    reader: an int64 array of positions → a float32 array ``(len(rows), *sample_shape)``; it
    may be called from several threads at once.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, name: str, count: int, sample_shape: tuple[int, ...],
                 read: Callable[[np.ndarray], np.ndarray], block: int = BLOCK, window: int = WINDOW):  # fmt: skip
        self.name = name
        self.count = count
        self.sample_shape = tuple(sample_shape)
        self.block = block
        self.window = window
        self._read = read

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.sample_shape)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"StreamedSamples({self.name!r}, shape={self.shape})"

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.rows(np.array([range(self.count)[index]]))[0]
        if isinstance(index, slice):
            return self.rows(np.arange(self.count)[index])
        positions = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise TypeError(f"{self!r}: index with an int, a slice or a 1-D integer tensor, not {index!r}")
        return self.rows(positions)

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        """The samples at ``positions`` (int64), as a float32 tensor."""
        positions = positions.astype(np.int64, copy=False)
        if positions.size and (positions.min() < 0 or positions.max() >= self.count):
            raise IndexError(f"{self!r}: positions must lie in [0, {self.count})")
        return torch.from_numpy(self._read(positions).reshape((len(positions), *self.sample_shape)))

    def order(self, generator: torch.Generator) -> StreamOrder:
        """A new epoch's order, its seed drawn from ``generator`` (one draw)."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return StreamOrder(seed, self.count, self.block, self.window)

    def sample(self, rows: int | None = None) -> torch.Tensor:
        """About ``rows`` samples in memory, in :data:`INIT_RUNS` evenly spread runs of consecutive
        positions (default: :func:`init_rows`, what initialisers may read); all of them, in order,
        when there are no more."""
        rows = rows if rows is not None else init_rows(self.sample_shape)
        if rows >= self.count:
            return self.rows(np.arange(self.count))
        runs = min(INIT_RUNS, rows)
        length = rows // runs
        starts = (np.arange(runs) * (self.count - length)) // max(runs - 1, 1)
        return self.rows((starts[:, None] + np.arange(length)).ravel())


def init_rows(sample_shape: Sequence[int]) -> int:
    """How many samples of this shape the initialisers' sample holds: :data:`INIT_BYTES` of float32,
    within :data:`INIT_ROWS`."""
    low, high = INIT_ROWS
    return int(min(max(INIT_BYTES // (4 * math.prod(sample_shape)), low), high))


def in_memory(x: torch.Tensor | StreamedSamples) -> torch.Tensor:
    """``x`` itself when it is a tensor; for samples on disk, a bounded sample of them in memory
    (:meth:`StreamedSamples.sample`) for what reads the data whole: ``mean(x)``, ``samples(x)``."""
    return x.sample() if isinstance(x, StreamedSamples) else x


# --------------------------------------------------------------------------- the order


@dataclass(frozen=True)
class StreamOrder:
    """One epoch's order of a streamed set (the module docstring): ``batches(size)`` gives its batches
    of positions.  ``as_dict`` / ``StreamOrder(**d)`` is how checkpoints keep it."""

    seed: int
    samples: int
    block: int
    window: int
    _windows: dict = field(default_factory=dict, compare=False, repr=False)  # the last two windows computed

    def as_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "samples": self.samples, "block": self.block, "window": self.window}

    def batches(self, size: int) -> StreamBatches:
        return StreamBatches(self, size)

    def positions(self, start: int, stop: int) -> np.ndarray:
        """Positions ``start`` to ``stop`` (excluded) of the epoch's order, int64."""
        starts = self._window_starts
        first = int(np.searchsorted(starts, start, side="right")) - 1
        parts = []
        w = first
        while w < len(starts) - 1 and starts[w] < stop:
            window = self._window(w)
            parts.append(window[max(start - starts[w], 0) : stop - starts[w]])
            w += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @cached_property
    def _blocks(self) -> np.ndarray:
        """π: the epoch's order of the blocks."""
        return np.random.default_rng(self.seed).permutation(-(-self.samples // self.block))

    @cached_property
    def _window_starts(self) -> np.ndarray:
        """Where each window starts in the order, and the order's length last."""
        sizes = np.minimum(self.block, self.samples - self._blocks * self.block)
        window_sizes = np.add.reduceat(sizes, np.arange(0, len(sizes), self.window))
        return np.concatenate([[0], np.cumsum(window_sizes)])

    def _window(self, w: int) -> np.ndarray:
        """Window ``w``'s positions, shuffled (the last two computed are kept)."""
        if w not in self._windows:
            blocks = self._blocks[w * self.window : (w + 1) * self.window]
            ranges = [np.arange(b * self.block, min((b + 1) * self.block, self.samples)) for b in blocks]
            positions = np.concatenate(ranges)
            shuffled = positions[np.random.default_rng([self.seed, w]).permutation(len(positions))]
            for old in [key for key in self._windows if key < w - 1]:
                del self._windows[old]
            self._windows[w] = shuffled
        return self._windows[w]


class StreamBatches(Sequence):
    """An epoch's batches of positions (int64 tensors), computed as they are asked for."""

    def __init__(self, order: StreamOrder, size: int):
        self.order = order
        self.size = size

    def __len__(self) -> int:
        return -(-self.order.samples // self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.size
        return torch.from_numpy(self.order.positions(start, min(start + self.size, self.order.samples)))


# --------------------------------------------------------------------------- reading ahead


def read_ahead(samples: StreamedSamples, items: Iterable[T], positions: Callable[[T], torch.Tensor] = lambda item: item,
               depth: int | None = None) -> Iterator[tuple[T, torch.Tensor]]:  # fmt: skip
    """Each item with the samples at its ``positions(item)``, in order, read by one background thread
    up to ``depth`` (default :data:`READ_AHEAD`) items ahead of the one the caller holds, so at most
    ``depth + 1`` batches are in memory.  A read that fails raises here, at its item; closing the
    generator stops the thread."""
    depth = READ_AHEAD if depth is None else depth
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="energydsl-read-ahead")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(samples.__getitem__, positions(item))))
            if len(pending) > depth:
                item, rows = pending.popleft()
                yield item, rows.result()
        while pending:
            item, rows = pending.popleft()
            yield item, rows.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
