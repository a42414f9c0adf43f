"""Tests for energydsl.ops.recovery: MMCS, MCC and detection F1, against brute force and by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from energydsl.ops import recovery
from energydsl.ops.recovery import abs_cosines, best_matches, detection, mcc, mmcs


def unit_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    matrix = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return matrix / matrix.norm(dim=0)


def brute_cosines(learned: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    out = np.zeros((learned.shape[1], true.shape[1]))
    for u in range(learned.shape[1]):
        for f in range(true.shape[1]):
            a, b = learned[:, u].numpy(), true[:, f].numpy()
            out[u, f] = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def shuffled_copy(true: torch.Tensor, seed: int) -> torch.Tensor:
    """The same directions, permuted, with random signs and lengths."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(true.shape[1], generator=g)
    signs = torch.randint(0, 2, (true.shape[1],), generator=g) * 2 - 1
    lengths = torch.rand(true.shape[1], generator=g, dtype=torch.float64) * 3 + 0.1
    return true[:, order] * signs * lengths


# --------------------------------------------------------------------------- cosines, MMCS, MCC


def test_abs_cosines_and_best_matches_agree_with_brute_force(monkeypatch):
    learned, true = unit_columns(5, 7, 0) * 3, unit_columns(5, 4, 1)
    brute = brute_cosines(learned, true)
    np.testing.assert_allclose(abs_cosines(learned, true).numpy(), brute, atol=1e-12)
    monkeypatch.setattr(recovery, "_BLOCK_ENTRIES", 8)  # two units per block: four blocks
    matches = best_matches(learned, true)
    np.testing.assert_allclose(matches.unit_cosine.numpy(), brute.max(axis=1), atol=1e-12)
    assert matches.unit_match.tolist() == brute.argmax(axis=1).tolist()
    np.testing.assert_allclose(matches.feature_cosine.numpy(), brute.max(axis=0), atol=1e-12)
    assert mmcs(learned, true) == pytest.approx(brute.max(axis=0).mean())
    assert mmcs(true, learned) == pytest.approx(brute.max(axis=1).mean())


def test_a_permuted_sign_flipped_rescaled_copy_is_recovered_exactly():
    true = unit_columns(16, 40, 2)  # superposition: 40 directions in 16 dimensions
    copy = shuffled_copy(true, 3).float()
    assert mcc(copy, true) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(copy, true) == pytest.approx(1.0, abs=1e-6) and mmcs(true, copy) == pytest.approx(1.0, abs=1e-6)


def test_mcc_is_the_best_one_to_one_matching_found_by_enumeration():
    learned, true = unit_columns(4, 6, 4), unit_columns(4, 6, 5)
    cosines = brute_cosines(learned, true)
    best = max(np.mean([cosines[u, f] for u, f in enumerate(order)]) for order in itertools.permutations(range(6)))
    assert mcc(learned, true) == pytest.approx(best, abs=1e-12)
    # more units than features: the best injective assignment of the 3 features
    wide = brute_cosines(learned, true[:, :3])
    best = max(np.mean([wide[u, f] for f, u in enumerate(units)]) for units in itertools.permutations(range(6), 3))
    assert mcc(learned, true[:, :3]) == pytest.approx(best, abs=1e-12)


def brute_code_mcc(codes: np.ndarray, true_codes: np.ndarray) -> float:
    """The best one-to-one matching of columns by enumeration, |Pearson correlation| by numpy (0 for a
    constant column)."""
    def corr(a, b):
        return 0.0 if a.std() == 0 or b.std() == 0 else abs(np.corrcoef(a, b)[0, 1])

    table = np.array([[corr(codes[:, u], true_codes[:, f]) for f in range(true_codes.shape[1])]
                      for u in range(codes.shape[1])])  # fmt: skip
    if codes.shape[1] >= true_codes.shape[1]:
        orders = itertools.permutations(range(codes.shape[1]), true_codes.shape[1])
        return max(np.mean([table[u, f] for f, u in enumerate(order)]) for order in orders)
    orders = itertools.permutations(range(true_codes.shape[1]), codes.shape[1])
    return max(np.mean([table[u, f] for u, f in enumerate(order)]) for order in orders)


def test_code_mcc_is_the_best_matching_of_pearson_correlations_found_by_enumeration():
    g = torch.Generator().manual_seed(6)
    true_codes = torch.rand(200, 5, generator=g, dtype=torch.float64).clamp_min(0.6) - 0.6  # sparse, nonneg
    codes = true_codes[:, [3, 0, 4, 1, 2]] * torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    codes = codes + 0.05 * torch.randn(200, 5, generator=g, dtype=torch.float64)
    codes[:, 2] = 0.0  # a unit that never fires correlates with nothing
    expected = brute_code_mcc(codes.numpy(), true_codes.numpy())
    assert expected < 0.85  # the dead unit costs a fifth
    assert recovery.code_mcc(codes, true_codes) == pytest.approx(expected, abs=1e-12)
    assert recovery.code_mcc(codes[:, :3], true_codes) == pytest.approx(brute_code_mcc(codes[:, :3].numpy(),
                                                                                        true_codes.numpy()), abs=1e-12)  # fmt: skip
    # shifted and rescaled copies correlate exactly; a sparse tensor is read like its dense form
    assert recovery.code_mcc(3 * true_codes.flip(1) + 1, true_codes.to_sparse()) == pytest.approx(1.0, abs=1e-12)


def test_bounded_mcc_is_the_hungarian_matching_of_the_whole_matrix_from_the_candidates_alone(monkeypatch):
    monkeypatch.setattr(recovery, "_BLOCK_ENTRIES", 50)  # candidate lists merged over blocks of 10 columns
    for seed, (units, features) in enumerate([(300, 5), (7, 120), (40, 6), (12, 12)]):
        learned, true = unit_columns(6, units, 20 + seed), unit_columns(6, features, 40 + seed)
        exact = mcc(learned, true)
        assert recovery.bounded_mcc(learned, true, max_entries=units * features) == pytest.approx(exact, abs=1e-12)
        small = min(units, features)
        if small * small < max(units, features):  # the candidates (at most small²) make a smaller matrix
            assert recovery.bounded_mcc(learned, true, max_entries=small**3) == pytest.approx(exact, abs=1e-12)
        assert recovery.bounded_mcc(learned, true, max_entries=small * small - 1) is None


def test_bounded_mcc_of_a_wide_dictionary_holds_no_units_by_features_matrix(monkeypatch):
    true = unit_columns(8, 16, 50)
    learned = torch.cat([shuffled_copy(true, 51), unit_columns(8, 65_536 - 16, 52)], dim=1)
    monkeypatch.setattr(recovery, "_BLOCK_ENTRIES", 1 << 14)  # blocks of 1024 units
    products = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(matmul(a, b).numel()) or matmul(a, b))
    assert recovery.bounded_mcc(learned, true, max_entries=1 << 12) == pytest.approx(1.0, abs=1e-9)
    assert max(products) <= recovery._BLOCK_ENTRIES and 65_536 * 16 not in products


def test_a_random_dictionary_scores_between_the_chance_cosine_and_the_largest_of_chance_cosines():
    dim, count = 256, 64
    chance = math.gamma(dim / 2) / (math.sqrt(math.pi) * math.gamma((dim + 1) / 2))  # E|cos| of random directions
    largest = math.sqrt(2 * math.log(2 * count) / dim)  # about the largest |cos| of one direction with 64 others
    learned, true = unit_columns(dim, count, 6), unit_columns(dim, count, 7)
    assert 2 * chance < mcc(learned, true) <= mmcs(learned, true) < largest < 0.2


def test_saelens_mcc_agrees_when_installed():
    evals = pytest.importorskip("sae_lens.synthetic.evals")
    learned, true = unit_columns(12, 30, 8).float(), unit_columns(12, 20, 9).float()
    theirs = evals.mean_correlation_coefficient(learned.T, true.T)  # they keep directions as rows
    assert mcc(learned, true) == pytest.approx(theirs, abs=1e-5)


# --------------------------------------------------------------------------- detection

# 6 samples; unit 0 matches feature 0, unit 1 matches feature 2 (by the decoder), feature 1 unmatched
UNIT_CODES = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 1.0], [0.0, 0.7]])
FEATURE_CODES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                              [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # fmt: skip
MATCH = torch.tensor([0, 2])


def test_detection_against_a_hand_computed_confusion_table():
    result = detection(UNIT_CODES, FEATURE_CODES, MATCH)
    # unit 0 fires in samples 0, 1, 4; feature 0 in 0, 3, 4: TP 2 (0, 4), FP 1 (1), FN 1 (3)
    # unit 1 fires in samples 2, 4, 5; feature 2 in 2, 4:    TP 2,        FP 1 (5), FN 0
    torch.testing.assert_close(result.precision, torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(result.recall, torch.tensor([2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(result.f1, torch.tensor([2 * 2 / 6, 2 * 2 / 5], dtype=torch.float64))
    # feature 1 fires in 1, 4: with unit 0 TP 2 -> F1 4/5; with unit 1 TP 1 -> 2/5
    torch.testing.assert_close(result.feature_f1, torch.tensor([4 / 6, 4 / 5, 4 / 5], dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_detection_takes_dense_coo_and_csr_codes_alike():
    dense = detection(UNIT_CODES, FEATURE_CODES, MATCH)
    for units, features in [(UNIT_CODES.to_sparse(), FEATURE_CODES.to_sparse_csr()),
                            (UNIT_CODES.to_sparse_csr(), FEATURE_CODES.to_sparse())]:  # fmt: skip
        other = detection(units, features, MATCH)
        for name in ("precision", "recall", "f1", "feature_f1"):
            torch.testing.assert_close(getattr(other, name), getattr(dense, name))


def test_a_unit_or_feature_that_never_fires_scores_zero_not_nan():
    units = torch.zeros(4, 2)
    units[1, 1] = 1.0
    features = torch.zeros(4, 2)
    result = detection(units, features, torch.tensor([0, 1]))
    for values in (result.precision, result.recall, result.f1, result.feature_f1):
        assert torch.equal(values, torch.zeros(2, dtype=torch.float64))


def test_feature_f1_is_the_best_over_all_units_by_brute_force(monkeypatch):
    g = torch.Generator().manual_seed(10)
    units = (torch.rand(300, 9, generator=g) < 0.2) * torch.rand(300, 9, generator=g)
    features = (torch.rand(300, 7, generator=g) < 0.15).float()
    monkeypatch.setattr(recovery, "_BLOCK_ENTRIES", 20)  # two features per block
    result = detection(units, features, torch.zeros(9, dtype=torch.long))
    fires_u, fires_f = (units != 0).numpy(), (features != 0).numpy()
    for f in range(7):
        scores = []
        for u in range(9):
            tp = np.sum(fires_u[:, u] & fires_f[:, f])
            fp = np.sum(fires_u[:, u] & ~fires_f[:, f])
            fn = np.sum(~fires_u[:, u] & fires_f[:, f])
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        assert result.feature_f1[f].item() == pytest.approx(max(scores))


def test_saelens_classification_metrics_agree_when_installed():
    evals = pytest.importorskip("sae_lens.synthetic.evals")
    g = torch.Generator().manual_seed(11)
    true, decoder = unit_columns(10, 12, 12).float(), unit_columns(10, 16, 13).float()
    units = (torch.rand(500, 16, generator=g) < 0.1) * torch.rand(500, 16, generator=g)
    features = (torch.rand(500, 12, generator=g) < 0.1).float()
    theirs = evals.compute_classification_metrics(units, features, decoder.T, true.T)
    mine = detection(units, features, best_matches(decoder, true).unit_match)
    assert mine.precision.mean().item() == pytest.approx(theirs.precision, abs=1e-6)
    assert mine.recall.mean().item() == pytest.approx(theirs.recall, abs=1e-6)
    assert mine.f1.mean().item() == pytest.approx(theirs.f1_score, abs=1e-6)
