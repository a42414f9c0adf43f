"""Tests for energydsl.ops.firing: where codes fire, from any layout, and recorded within a budget."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from energydsl.ops.firing import FiringRecorder, firing_matrix, firings_per_unit
from energydsl.ops.sparse_codes import SparseCodes

CODES = torch.tensor([[0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.5, 0.0, 0.0], [0.0, 0.0, 7.0, 1e-30]])
FIRES = (CODES != 0).numpy()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_every_layout_gives_the_same_zero_one_matrix():
    explicit_zero = scipy.sparse.csr_matrix(CODES.numpy())
    explicit_zero.data[0] = 0.0  # stored, but not a firing
    expected = FIRES.copy()
    expected[0, 1] = False
    for codes, fires in [(CODES, FIRES), (CODES.numpy(), FIRES), (CODES.to_sparse(), FIRES),
                         (CODES.to_sparse_csr(), FIRES), (explicit_zero, expected)]:  # fmt: skip
        matrix = firing_matrix(codes)
        assert matrix.shape == (4, 4) and matrix.dtype == np.float32
        assert np.array_equal(matrix.toarray(), fires.astype(np.float32))
    assert firings_per_unit(firing_matrix(CODES)).tolist() == [1.0, 2.0, 1.0, 2.0]
    image = CODES.reshape(4, 1, 2, 2)  # an image latent: its values flattened
    assert np.array_equal(firing_matrix(image).toarray(), FIRES)


def test_sparse_codes_give_their_firings_without_being_made_dense():
    values = torch.tensor([[-1.0, 2.0], [0.0, 0.0], [3.0, 0.5], [7.0, 1e-30]])  # a 0 is stored, not fired
    units = torch.tensor([[3, 1], [0, 2], [0, 1], [2, 3]])
    codes = SparseCodes.from_indices(values, units, width=4)
    densified = SparseCodes.densified
    assert np.array_equal(firing_matrix(codes).toarray(), FIRES)
    recorder = FiringRecorder(samples=3, entries=100)
    recorder.add(codes)
    assert np.array_equal(recorder.matrix().toarray(), FIRES[:3])
    assert SparseCodes.densified == densified


def test_the_recorder_keeps_the_first_samples_in_order_across_batches():
    recorder = FiringRecorder(samples=3, entries=100)
    recorder.add(CODES[:2])
    recorder.add(CODES[2:])  # only its first sample is wanted
    assert recorder.complete and recorder.kept == 3
    assert np.array_equal(recorder.matrix().toarray(), FIRES[:3])


def test_the_recorder_stops_at_the_first_sample_past_its_budget_of_firings():
    recorder = FiringRecorder(samples=10, entries=4)  # 2 + 0 + 2 firings fit, the fourth sample's 2 do not
    for start in range(0, 4, 3):
        recorder.add(CODES[start : start + 3])
    assert not recorder.complete and recorder.kept == 3 and recorder.nonzeros == 4
    assert np.array_equal(recorder.matrix().toarray(), FIRES[:3])
    empty = FiringRecorder(samples=5, entries=1)
    empty.add(CODES)  # the first sample alone is over the budget
    assert empty.matrix().shape == (0, 4) and not empty.complete
