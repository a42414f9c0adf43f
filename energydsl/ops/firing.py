"""Where codes fire: the nonzero pattern of a ``(samples, units)`` code as a sparse 0/1 matrix.

Every measurement made after training that needs to know *which* units fired on *which*
samples (co-activation, rooted supports, detection of true features, the L0 histogram) reads
this matrix rather than the codes, so its memory follows the firings — ``samples × k`` for a
TopK code — and never ``samples × units``.  The matrix is a ``scipy.sparse.csr_matrix`` of
float32 ones: counts built from it by products (``Aᵀ A``) stay exact up to 2^24.  TopK codes
(:class:`~energydsl.ops.sparse_codes.SparseCodes`) give theirs from their pattern, never made dense.

:class:`FiringRecorder` builds it a batch of codes at a time, up to a number of samples and a
number of nonzeros, so that a model whose codes are dense still holds a bounded amount.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from energydsl.ops.sparse_codes import SparseCodes

__all__ = ["FiringRecorder", "firing_matrix", "firings_per_unit"]


def firing_matrix(codes) -> scipy.sparse.csr_matrix:
    """Where ``codes`` ``(samples, ...)`` is nonzero, as a ``(samples, units)`` 0/1 CSR matrix.

    ``codes``: a dense or sparse torch tensor (units flattened), :class:`SparseCodes`, a numpy
    array, or a scipy sparse matrix (whose explicit zeros do not count as firing).
    """
    if scipy.sparse.issparse(codes):
        codes = scipy.sparse.csr_matrix(codes)
        codes.eliminate_zeros()
        return _ones(*codes.nonzero(), codes.shape)
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    shape = (codes.shape[0], int(np.prod(codes.shape[1:])))
    if not isinstance(codes, SparseCodes) and codes.layout != torch.strided:
        codes = codes.to_sparse_coo().coalesce()
        rows, cols = codes.indices()[:, codes.values() != 0].cpu().numpy()
        return _ones(rows, cols, shape)
    return _ones(*_positions(codes), shape)


def firings_per_unit(firing: scipy.sparse.spmatrix) -> np.ndarray:
    """On how many samples each unit fired, ``(units,)`` float64."""
    return np.asarray(firing.sum(axis=0), dtype=np.float64).ravel()


def _positions(z) -> tuple[np.ndarray, np.ndarray]:
    """(sample, unit) of each nonzero code of the batch ``z`` (a dense tensor or sparse codes), row-major."""
    if isinstance(z, SparseCodes):
        fires = z.values.detach() != 0  # an entry a relu cut is stored, but does not fire
        rows, cols = z.pattern.rows()[fires], z.pattern.columns[fires]
    else:
        rows, cols = (z.detach().reshape(z.shape[0], -1) != 0).nonzero().T
    return rows.cpu().numpy(), cols.cpu().numpy()


def _ones(rows, cols, shape) -> scipy.sparse.csr_matrix:
    data = np.ones(len(rows), dtype=np.float32)
    return scipy.sparse.csr_matrix((data, (np.asarray(rows), np.asarray(cols))), shape=shape)


class FiringRecorder:
    """Keeps where the codes of the first ``samples`` samples fire, a batch at a time.

    Stops at the first sample that would take the recorded nonzeros past ``entries``, so
    :meth:`matrix` may hold fewer samples than were offered (``complete`` tells).
    """

    def __init__(self, samples: int, entries: int):
        self.samples, self.entries = samples, entries
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.kept = 0  # samples recorded
        self.nonzeros = 0
        self.units: int | None = None
        self.complete = True

    def add(self, z) -> None:
        """Record the batch ``z`` ``(B, ...)`` (a tensor or sparse codes), the next samples in order."""
        self.units = int(np.prod(z.shape[1:]))
        room = min(self.samples - self.kept, z.shape[0])
        if room <= 0 or not self.complete:
            return
        rows, cols = _positions(z)
        rows, cols = rows[rows < room], cols[rows < room]
        per_sample = np.cumsum(np.bincount(rows, minlength=room))
        fits = int(np.searchsorted(per_sample, self.entries - self.nonzeros, side="right"))
        if fits < room:
            self.complete = False
            rows, cols = rows[rows < fits], cols[rows < fits]
        self.rows.append((rows + self.kept).astype(np.int32))  # 8 bytes a firing while gathered
        self.cols.append(cols.astype(np.int32))
        self.kept += fits
        self.nonzeros += len(rows)

    def matrix(self) -> scipy.sparse.csr_matrix:
        """The recorded firings, ``(kept samples, units)``."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int32)
        cols = np.concatenate(self.cols) if self.cols else np.zeros(0, dtype=np.int32)
        return _ones(rows, cols, (self.kept, self.units or 0))
