"""Feature recovery: how much of a known dictionary, and of when its features fire, a model found.

The truth is a dictionary ``D`` of shape ``(dim, F)``, one column per true feature, and the
true codes ``c`` of some samples (``(samples, F)``); the model gives its decoder ``W`` of
shape ``(dim, U)``, one column per unit, and its codes ``z`` of the same samples
(``(samples, U)``).  Directions are compared by ``|cos|`` of columns: a code's sign is a
convention, so a flipped column is the same feature.

- **MMCS**, mean max cosine similarity (Sharkey et al. 2022): ``mmcs(W, D)`` =
  mean over true features f of max_u |cos(W_u, D_f)|, how well the truth is covered;
  ``mmcs(D, W)``, the other direction, is the mean over units of their best true match.
- **MCC**, mean correlation coefficient: the mean |cos| over the one-to-one matching of
  units and features that maximises it (the Hungarian algorithm), min(U, F) pairs.
  :func:`bounded_mcc` finds the same matching on a bounded matrix: with s = min(U, F), some
  optimal matching pairs each column of the smaller side with one of its s best columns of the
  larger side (if a were matched outside its s best, one of those is free — the others take at
  most s − 1 — and no worse), so only the union of those lists, at most s² columns, is needed:
  a 65,536-unit dictionary against 64 features is a 64 × ≤4,096 problem.
- **Code MCC** (the MCC of identifiability studies, e.g. O'Neill et al. 2025): the codes
  themselves compared, not the dictionaries; ``code_mcc(z, c)`` = the mean |Pearson correlation|
  over samples between a column of ``z`` and one of ``c``, over the one-to-one matching of
  columns that maximises it; a column constant over the samples correlates 0 with every other.
- **Detection** (SAELens's classification metrics): unit u is matched to the feature
  m(u) = argmax_f |cos(W_u, D_f)|, and "z_u ≠ 0" is read as a prediction of "c_m(u) ≠ 0"
  over the samples.  With TP, FP, FN counted over samples, precision = TP / (TP + FP),
  recall = TP / (TP + FN) and F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (n_u + n_m), with n
  the number of samples in which each fires; each is 0 where its denominator is.
  **Feature F1**: for each true feature f, the best F1 of any unit as its detector,
  max_u 2 TP(u, f) / (n_u + n_f).

Codes may be dense tensors, sparse ones (COO or CSR) or firing matrices
(:mod:`energydsl.ops.firing`): only where they are nonzero matters, and that is all that is
kept, so memory follows the firings, not samples × units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from energydsl.ops.firing import firing_matrix, firings_per_unit

__all__ = ["Detection", "Matches", "abs_cosines", "best_matches", "bounded_mcc", "code_mcc", "detection", "mcc",
           "mmcs"]

_BLOCK_ENTRIES = 1 << 24  # the largest (rows x columns) block of cosines or co-firing counts at once


def _unit_columns(matrix: torch.Tensor) -> torch.Tensor:
    matrix = matrix.detach().to(torch.float64)
    return matrix / matrix.norm(dim=0, keepdim=True).clamp_min(1e-30)


def abs_cosines(learned: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``|cos|`` between every learned column and every true column: ``(U, F)`` float64."""
    return (_unit_columns(learned).T @ _unit_columns(true).to(learned.device)).abs()


@dataclass(frozen=True)
class Matches:
    """Each unit's best true feature and each true feature's best unit, by |cos| of columns."""

    unit_cosine: torch.Tensor  # (U,) max_f |cos(W_u, D_f)|
    unit_match: torch.Tensor  # (U,) int64, the f attaining it
    feature_cosine: torch.Tensor  # (F,) max_u |cos(W_u, D_f)|


def best_matches(learned: torch.Tensor, true: torch.Tensor) -> Matches:
    """The best matches both ways, a block of units at a time (memory: block × F cosines)."""
    learned_units, true_units = _unit_columns(learned), _unit_columns(true).to(learned.device)
    block = max(1, _BLOCK_ENTRIES // true_units.shape[1])
    unit_cosine, unit_match = [], []
    feature_cosine = torch.zeros(true_units.shape[1], dtype=torch.float64, device=learned.device)
    for start in range(0, learned_units.shape[1], block):
        cosines = (learned_units[:, start : start + block].T @ true_units).abs()
        best, where = cosines.max(dim=1)
        unit_cosine.append(best)
        unit_match.append(where)
        feature_cosine = torch.maximum(feature_cosine, cosines.max(dim=0).values)
    return Matches(torch.cat(unit_cosine).cpu(), torch.cat(unit_match).cpu(), feature_cosine.cpu())


def mmcs(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over the columns of ``true`` of their largest |cos| with a column of ``learned``."""
    return best_matches(learned, true).feature_cosine.mean().item()


def mcc(learned: torch.Tensor, true: torch.Tensor) -> float:
    """The mean |cos| of the one-to-one matching of columns that maximises it (Hungarian algorithm).

    Memory U × F, time up to cubic: about 3 s for 4096 × 4096 on one core.
    """
    return _matched_mean(abs_cosines(learned, true).cpu().numpy())


def bounded_mcc(learned: torch.Tensor, true: torch.Tensor, max_entries: int) -> float | None:
    """:func:`mcc`, exactly, from a matrix of at most ``max_entries`` cosines; None where even the
    smaller side's candidate lists (module docstring) need more."""
    small, large = sorted((_unit_columns(learned), _unit_columns(true).to(learned.device)), key=lambda m: m.shape[1])
    s, l = small.shape[1], large.shape[1]
    if l <= s * s and s * l <= max_entries:
        return _matched_mean((small.T @ large).abs().cpu().numpy())
    if s * s > max_entries:
        return None
    candidates = _candidates(small, large, s)
    if s * len(candidates) > max_entries:
        return None
    return _matched_mean((small.T @ large[:, candidates]).abs().cpu().numpy())


def _candidates(small: torch.Tensor, large: torch.Tensor, count: int) -> torch.Tensor:
    """The columns of ``large`` among the ``count`` best |cos| of some column of ``small``, a block of
    ``large`` at a time (memory: small × (count + block) cosines)."""
    best = torch.empty(small.shape[1], 0, dtype=small.dtype, device=small.device)
    where = torch.empty(small.shape[1], 0, dtype=torch.long, device=small.device)
    block = max(1, _BLOCK_ENTRIES // small.shape[1])
    for start in range(0, large.shape[1], block):
        cosines = (small.T @ large[:, start : start + block]).abs()
        columns = torch.arange(start, start + cosines.shape[1], device=small.device).expand_as(cosines)
        best, order = torch.cat([best, cosines], dim=1).topk(min(count, best.shape[1] + cosines.shape[1]), dim=1)
        where = torch.cat([where, columns], dim=1).gather(1, order)
    return where.unique().cpu()


def code_mcc(codes: torch.Tensor, true_codes: torch.Tensor) -> float:
    """The mean |Pearson correlation| over samples of the one-to-one matching of the columns of
    ``codes`` ``(samples, U)`` and ``true_codes`` ``(samples, F)`` that maximises it (module docstring).

    Dense or sparse (COO, CSR) tensors, made dense: memory samples × (U + F) and U × F, time up to
    cubic in min(U, F).
    """
    if codes.shape[0] != true_codes.shape[0]:
        raise ValueError(f"codes of {codes.shape[0]} samples but true codes of {true_codes.shape[0]}")
    return _matched_mean(_abs_correlations(codes, true_codes).numpy())


def _abs_correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|corr| of every column of ``a`` with every column of ``b`` over the rows, float64; 0 for a
    column constant over the rows."""
    (a, constant_a), (b, constant_b) = _standardised(a), _standardised(b)
    correlations = (a.T @ b).abs()
    correlations[constant_a] = 0.0
    correlations[:, constant_b] = 0.0
    return correlations


def _standardised(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of ``codes`` centred and scaled to unit norm (float64, dense), and which are constant:
    those whose variance is below 1e-12 of the largest column's (all of them when every one is 0)."""
    codes = codes.detach().cpu()
    codes = (codes if codes.layout == torch.strided else codes.to_dense()).to(torch.float64)
    centred = codes - codes.mean(dim=0)
    norms = centred.norm(dim=0)
    constant = norms <= 1e-6 * norms.max().clamp_min(1e-300)
    return centred / norms.clamp_min(1e-300), constant


def _matched_mean(cosines: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(cosines, maximize=True)
    return float(cosines[rows, cols].mean())


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detection:
    """Firing as detection of true features: per unit (of its match) and per true feature."""

    precision: torch.Tensor  # (U,)
    recall: torch.Tensor  # (U,)
    f1: torch.Tensor  # (U,)
    feature_f1: torch.Tensor  # (F,) the best F1 of any unit for each true feature


def detection(unit_codes: torch.Tensor, feature_codes: torch.Tensor, unit_match: torch.Tensor) -> Detection:
    """Precision, recall and F1 of each unit's firing for its matched feature's, over samples,
    and each true feature's best F1 over all units (see the module's docstring).

    ``unit_codes`` ``(samples, U)`` and ``feature_codes`` ``(samples, F)``, dense or sparse;
    ``unit_match`` ``(U,)``, the true feature of each unit (from :func:`best_matches`).
    """
    if unit_codes.shape[0] != feature_codes.shape[0]:
        raise ValueError(f"unit codes of {unit_codes.shape[0]} samples but feature codes of {feature_codes.shape[0]}")
    units, features = firing_matrix(unit_codes).tocsc(), firing_matrix(feature_codes).tocsc()
    unit_counts, feature_counts = firings_per_unit(units), firings_per_unit(features)
    match = unit_match.cpu().numpy()
    together = np.asarray(units.multiply(features[:, match]).sum(axis=0)).ravel()  # TP of each unit
    precision = _ratio(together, unit_counts)
    recall = _ratio(together, feature_counts[match])
    f1 = _ratio(2 * together, unit_counts + feature_counts[match])
    return Detection(*(torch.from_numpy(v) for v in (precision, recall, f1)),
                     torch.from_numpy(_best_f1(features, units, feature_counts, unit_counts)))  # fmt: skip


def _best_f1(features, units, feature_counts, unit_counts) -> np.ndarray:
    """max over units of 2 TP(u, f) / (n_u + n_f) for each feature f, a block of features at a time.

    TP(u, f) is nonzero only for pairs that fire together, so the sparse product holds those alone.
    """
    best = np.zeros(features.shape[1])
    block = max(1, _BLOCK_ENTRIES // max(units.shape[1], 1))
    units = units.tocsr()
    for start in range(0, features.shape[1], block):
        together = (features[:, start : start + block].T @ units).tocoo()  # (block, U) co-firing counts
        f1 = 2 * together.data / (feature_counts[start + together.row] + unit_counts[together.col])
        np.maximum.at(best, start + together.row, f1)
    return best


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
