"""The ``features`` source: activations in superposition, with the features that made them.

A sample is a sparse, non-negative combination of ``features`` unit directions in ``dim``
dimensions plus a fixed bias, ``x = dictionary @ code + bias``: the generative model of the
synthetic benchmarks that sparse auto-encoders of language-model activations are measured
on (SAELens's synthetic suite).  With more features than dimensions the directions cannot
be orthogonal, so a model must use the sparsity of the codes to take them apart.

With ``target_dim`` the samples come in pairs, for transcoders: the same code also makes a
target ``y = target_dictionary @ code`` through a second dictionary of its own.

The codes are drawn a block of samples at a time (:func:`_draw_samples`), so memory follows
the block, not the sample count; only the held-out samples' codes are kept, as a sparse
tensor.  The structure (directions, firing probabilities, trees, correlations) comes from
its own random stream, so ``count`` and ``test`` change the samples and never the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.special import ndtri

from energydsl.data.base import Args, DataError, Dataset, Source, float_tensor, held_out

FIRING = ("zipf", "linear", "constant")
_BLOCK_ENTRIES = 1 << 22  # codes drawn per block (samples x features): 16 MB of float32
_RARE = 0.1  # features that fire at most this often are drawn sparsely
_MIN_UNSHARED = 0.01  # the least variance a feature's correlation noise keeps for itself


def features(
    dim: int = 128,
    features: int = 1024,
    count: int = 100_000,
    firing: str = "zipf",
    exponent: float = 1.0,
    max_prob: float = 0.3,
    min_prob: float = 0.01,
    magnitude: float = 1.0,
    magnitude_std: float = 0.0,
    roots: int = 0,
    branching: int = 2,
    depth: int = 1,
    exclusive: float = 0.0,
    correlation_rank: int = 0,
    correlation_scale: float = 0.1,
    bias: float = 0.0,
    orthogonalize: int = 0,
    test: float = 0.1,
    seed: int = 0,
    target_dim: int = 0,
) -> Dataset:
    """Activations in superposition: sparse non-negative combinations of known feature directions.

    The model of SAELens's synthetic benchmark, for measuring how well a sparse
    auto-encoder recovers the features behind its data.  A sample is

        x = D c + b,

    with ``D`` the ``(dim, features)`` dictionary of unit-norm feature directions, ``c`` a
    sparse non-negative code and ``b`` a fixed bias.  With more features than dimensions
    the directions overlap (superposition) and only the sparsity of ``c`` separates them.

    *Directions*: Gaussian columns scaled to unit norm.  ``orthogonalize = n`` then makes
    them as close to orthogonal as their number allows: with no more features than
    dimensions, exactly orthonormal; with more, ``n`` rounds of alternating projection
    (Tropp et al. 2005) onto the tight frames ``D Dᵀ = (features / dim) I`` and back to
    unit columns, which lowers the mean squared cosine between features toward its floor,
    the Welch bound ``(features − dim) / (dim (features − 1))``.

    *Firing*: feature i fires in a sample with probability p_i, falling from ``max_prob``
    (feature 0) to ``min_prob`` (the last feature) as ``firing`` says: ``zipf``, p_i
    proportional to ``(i + 1)^-exponent`` rescaled onto [``min_prob``, ``max_prob``];
    ``linear``, evenly spaced; ``constant``, every feature ``max_prob``.  Features fire
    independently, unless ``correlation_rank = r > 0``: then feature i fires where
    ``g_i > Φ⁻¹(1 − p_i)`` for a Gaussian ``g`` with unit variances and the correlation
    ``F Fᵀ`` off the diagonal, ``F`` a ``(features, r)`` matrix of N(0, ``correlation_scale``²)
    entries (a row whose squared norm would exceed 0.99 is scaled down to it), so each
    feature keeps its own rate and the features that share factors fire together.

    *Magnitudes*: a firing feature's code is ``magnitude + magnitude_std · N(0, 1)``,
    clipped at 0; a code clipped to 0 counts as not firing.

    *Hierarchy* (``roots > 0``): features 0 to ``roots − 1`` are the roots of trees in
    which every node above ``depth`` has ``branching`` children, numbered breadth-first
    after the roots (root 0's children, then root 1's, ...) until the features run out;
    the remaining features stay independent.  A child's code is zeroed wherever its
    parent does not fire, so a child fires only with its parent (with probability
    ``p_child · p_parent``: the rates above are not compensated).  A share ``exclusive``
    of the parents with two children or more, drawn at random, have mutually exclusive
    children: where several fire, one chosen uniformly keeps its code.  Trees are applied
    from the roots down, so a child zeroed by the exclusion silences its own children.

    *Pairs* (``target_dim > 0``, for a transcoder, whose spec declares ``target y``): each
    sample comes with a target ``y = B c``, the same code through a second dictionary ``B``,
    ``(target_dim, features)``, of unit-norm directions drawn (and orthogonalised) like ``D``
    from a stream of its own, so the samples are those of the same call without targets.  A
    transcoder that explains y from the code of x recovers B in its decoder's columns; a spec
    without a target models the samples alone.

    The samples come in order and the test split is the last ``round(count * test)`` of
    them.  The data are unlabelled.  ``extras`` holds the ground truth:

    * ``"dictionary"``: ``D``, ``(dim, features)`` float32, unit-norm columns;
    * ``"codes_test"``: the test samples' codes ``c``, ``(test samples, features)``, a
      float32 **sparse COO** tensor (``.to_dense()`` for a dense one), so that
      ``x_test = codes_test @ dictionary.T + bias``;
    * ``"bias"``: ``b``, ``(dim,)`` float32 (zeros without ``bias``);
    * ``"probabilities"``: the firing probabilities ``p``, ``(features,)`` float32, before
      the trees gate them;
    * ``"parents"`` (only with ``roots > 0``): each feature's parent, ``(features,)``
      int64, -1 for roots and features outside the trees;
    * ``"target_dictionary"`` (only with ``target_dim > 0``): ``B``, ``(target_dim, features)``
      float32, unit-norm columns, so that ``target_test = codes_test @ target_dictionary.T``.

    Args:
        dim: dimension of a sample (1 to 65,536).
        features: number of true features (1 to 1,048,576).
        count: number of samples in total, train and test (2 to 10,000,000).
        firing: how the firing probabilities fall over the features: ``zipf``,
            ``linear`` or ``constant``.
        exponent: the Zipf exponent (above 0; only for ``firing = zipf``).
        max_prob: firing probability of feature 0 (above 0, at most 1).
        min_prob: firing probability of the last feature (above 0, at most ``max_prob``).
        magnitude: mean code of a firing feature (above 0).
        magnitude_std: standard deviation of the code of a firing feature (0 or more).
        roots: number of trees of the feature hierarchy (0: no hierarchy).
        branching: children of every inner node of a tree (2 to 1,024).
        depth: levels of children below each root (1 to 32).
        exclusive: share of the parents whose children are mutually exclusive (0 to 1).
        correlation_rank: rank of the correlation between firings (0: independent).
        correlation_scale: standard deviation of the correlation factors' entries (0 to 1).
        bias: norm of the bias added to every sample, in a random direction (0 or more).
        orthogonalize: rounds of orthogonalisation of the directions (0: none; 0 to 10,000).
        test: fraction of the samples held out as the test split (0 to below 1).
        seed: seed of the structure and of the samples (a non-negative integer).
        target_dim: dimension of each sample's target (0: no targets; 0 to 65,536).
    """
    n_test = _check_features(dim, features, count, firing, exponent, max_prob, min_prob, magnitude,
                             magnitude_std, roots, branching, depth, exclusive, correlation_rank,
                             correlation_scale, bias, orthogonalize, test, seed, target_dim)  # fmt: skip
    # the targets' stream is the third: the first two, and so the samples, are those of a call without targets
    structure_rng, sample_rng, target_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    dictionary = _directions(dim, features, orthogonalize, structure_rng)
    target_dictionary = _directions(target_dim, features, orthogonalize, target_rng) if target_dim else None
    offset = _bias(dim, bias, structure_rng)
    model = _CodeModel(
        probabilities=_probabilities(features, firing, exponent, max_prob, min_prob),
        magnitude=magnitude,
        magnitude_std=magnitude_std,
        tree=_Tree.build(features, roots, branching, depth, exclusive, structure_rng) if roots else None,
        factors=_correlation_factors(features, correlation_rank, correlation_scale, structure_rng),
    )
    x, targets, codes_test = _draw_samples(model, dictionary, offset, count, count - n_test, sample_rng,
                                           target_dictionary)  # fmt: skip
    extras = {
        "dictionary": float_tensor(dictionary),
        "codes_test": codes_test,
        "bias": float_tensor(offset),
        "probabilities": float_tensor(model.probabilities),
    }
    if model.tree is not None:
        extras["parents"] = torch.from_numpy(model.tree.parents.astype(np.int64))
    if target_dictionary is not None:
        extras["target_dictionary"] = float_tensor(target_dictionary)
    split = count - n_test
    return Dataset(name="features", x_train=x[:split], x_test=x[split:], y_train=None, y_test=None,
                   num_classes=None, extras=extras, target_train=None if targets is None else targets[:split],
                   target_test=None if targets is None else targets[split:])  # fmt: skip


# --------------------------------------------------------------------------- arguments


def _check_features(dim, features, count, firing, exponent, max_prob, min_prob, magnitude, magnitude_std,
                    roots, branching, depth, exclusive, correlation_rank, correlation_scale, bias,
                    orthogonalize, test, seed, target_dim=0) -> int:  # fmt: skip
    """Check the arguments of :func:`features`; return the number of test samples."""
    args = Args("features")
    args.integer("dim", dim, 1, 1 << 16)
    args.integer("features", features, 1, 1 << 20)
    args.integer("count", count, 2, 10_000_000)
    args.choice("firing", firing, FIRING)
    args.real("exponent", exponent, 0.0, math.inf, lo_open=True, hi_open=True)
    args.real("max_prob", max_prob, 0.0, 1.0, lo_open=True)
    args.real("min_prob", min_prob, 0.0, max_prob, lo_open=True)
    args.real("magnitude", magnitude, 0.0, math.inf, lo_open=True, hi_open=True)
    args.real("magnitude_std", magnitude_std, 0.0, math.inf, hi_open=True)
    args.integer("roots", roots, 0, features)
    args.integer("branching", branching, 2, 1024)
    args.integer("depth", depth, 1, 32)
    args.real("exclusive", exclusive, 0.0, 1.0)
    args.integer("correlation_rank", correlation_rank, 0, features)
    args.real("correlation_scale", correlation_scale, 0.0, 1.0)
    args.real("bias", bias, 0.0, math.inf, hi_open=True)
    args.integer("orthogonalize", orthogonalize, 0, 10_000)
    args.real("test", test, 0.0, 1.0, hi_open=True)
    args.integer("seed", seed, 0, 2**63 - 1)
    args.integer("target_dim", target_dim, 0, 1 << 16)
    if count * (dim + target_dim) > 1 << 31:
        values = f"count × dim = {count} × {dim}" if not target_dim else \
            f"count × (dim + target_dim) = {count} × {dim + target_dim}"  # fmt: skip
        raise DataError(f"data source 'features': {values} values is over 2^31 "
                        f"(8 GiB of float32); lower 'count' or 'dim'")  # fmt: skip
    return held_out("features", count, test)


def _describe_features(dim, target_dim=0, **_):
    return (dim,), None, (target_dim,) if target_dim else None


def _footprint_features(batch, dim, features, count, max_prob, test, **_):
    """The float32 samples, a few blocks' temporaries, the float64 directions (and their copies while
    they are orthogonalised), and the held-out codes as a sparse tensor (at most ``max_prob`` of them
    nonzero: a float32 value and two int64 indices each, twice while they are converted)."""
    held_codes = round(count * test) * features * max_prob
    return count * dim * 4 + 4 * _BLOCK_ENTRIES * 8 + 4 * dim * features * 8 + int(held_codes * 2 * (4 + 16))


SOURCE = Source("features", load=features, describe=_describe_features, check=_check_features,
                footprint=_footprint_features)


# --------------------------------------------------------------------------- the structure


def _directions(dim: int, count: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit-norm directions in ``dim`` dimensions, as the columns of a matrix."""
    directions = _unit_columns(rng.standard_normal((dim, count)))
    if rounds == 0:
        return directions
    if count <= dim:  # the nearest matrix with orthonormal columns: the polar factor
        left, _, right = np.linalg.svd(directions, full_matrices=False)
        return left @ right
    for _ in range(rounds):  # the nearest tight frame (D Dᵀ = count/dim I), then unit columns again
        values, vectors = np.linalg.eigh(directions @ directions.T)
        inverse_root = (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
        directions = _unit_columns(math.sqrt(count / dim) * inverse_root @ directions)
    return directions


def _unit_columns(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=0), 1e-12)


def _bias(dim: int, norm: float, rng: np.random.Generator) -> np.ndarray:
    """A vector of the given norm in a random direction (zeros for norm 0)."""
    direction = rng.standard_normal(dim)
    return norm * direction / max(np.linalg.norm(direction), 1e-12)


def _probabilities(count: int, firing: str, exponent: float, high: float, low: float) -> np.ndarray:
    """The firing probability of each feature, from ``high`` (feature 0) to ``low`` (the last)."""
    if firing == "constant" or count == 1:
        return np.full(count, high)
    if firing == "linear":
        return np.linspace(high, low, count)
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent  # zipf
    return low + (high - low) * (weights - weights[-1]) / (weights[0] - weights[-1])


def _correlation_factors(count: int, rank: int, scale: float, rng: np.random.Generator) -> np.ndarray | None:
    """The ``(count, rank)`` factors F of the firings' correlation F Fᵀ (off the diagonal), or None."""
    if rank == 0:
        return None
    factors = scale * rng.standard_normal((count, rank))
    shared = np.sum(factors**2, axis=1)
    too_much = shared > 1 - _MIN_UNSHARED  # each feature's own noise keeps at least 1 % of its variance
    factors[too_much] *= np.sqrt((1 - _MIN_UNSHARED) / shared[too_much])[:, None]
    return factors


@dataclass(frozen=True)
class _Level:
    """One depth of the trees: features ``first .. first + count - 1``, children of the
    ``branching``-long runs of the previous depth's features from ``first_parent`` on.

    Breadth-first numbering makes both runs contiguous, so a level is two column slices.
    ``exclusive`` lists its groups of mutually exclusive siblings, one row each, as columns
    of the level (from 0), padded with -1.
    """

    first: int
    count: int
    first_parent: int
    branching: int
    exclusive: np.ndarray

    def apply(self, codes: np.ndarray, rng: np.random.Generator) -> None:
        """Zero, in place, the codes of this level's features whose parent does not fire,
        then all but one firing feature of each exclusive group."""
        parents = -(-self.count // self.branching)
        gate = codes[:, self.first_parent : self.first_parent + parents] > 0
        children = codes[:, self.first : self.first + self.count]  # a view
        children *= np.repeat(gate, self.branching, axis=1)[:, : self.count]
        if len(self.exclusive):
            _keep_one(children, self.exclusive, rng)


@dataclass(frozen=True)
class _Tree:
    """The feature hierarchy: every feature's parent, and its levels from the roots down."""

    parents: np.ndarray  # (features,), -1: a root or no tree
    levels: tuple[_Level, ...]

    @staticmethod
    def build(count: int, roots: int, branching: int, depth: int, share: float,
              rng: np.random.Generator) -> _Tree:  # fmt: skip
        parents = np.full(count, -1)
        frontier_start, frontier_size = 0, roots  # the features whose children come next
        shapes, groups_by_level = [], []
        for _ in range(depth):
            first = frontier_start + frontier_size
            size = min(frontier_size * branching, count - first)
            if size <= 0:
                break
            parents[first : first + size] = frontier_start + np.arange(size) // branching
            shapes.append((first, size, frontier_start))
            groups = np.full((frontier_size, branching), -1)
            groups.flat[:size] = np.arange(size)
            groups_by_level.append(groups[(groups >= 0).sum(axis=1) >= 2])  # siblings only in twos or more
            frontier_start, frontier_size = first, size
        exclusive = _chosen_groups(groups_by_level, share, rng)
        levels = tuple(_Level(first, size, start, branching, groups)
                       for (first, size, start), groups in zip(shapes, exclusive))  # fmt: skip
        return _Tree(parents, levels)

    def apply(self, codes: np.ndarray, rng: np.random.Generator) -> None:
        """Apply every level to ``codes`` ``(samples, features)`` in place, from the roots down."""
        for level in self.levels:
            level.apply(codes, rng)


def _chosen_groups(groups_by_level: list[np.ndarray], share: float,
                   rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """``int(share · groups)`` sibling groups drawn over all depths, returned per depth."""
    sizes = [len(groups) for groups in groups_by_level]
    picked = np.zeros(sum(sizes), dtype=bool)
    picked[rng.permutation(sum(sizes))[: int(share * sum(sizes))]] = True
    bounds = np.cumsum([0] + sizes)
    return [groups[picked[lo:hi]] for groups, lo, hi in zip(groups_by_level, bounds[:-1], bounds[1:])]


def _keep_one(codes: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> None:
    """In each row of ``codes`` and each group of columns, keep one firing column (uniformly)."""
    valid = groups >= 0
    firing = (codes[:, np.where(valid, groups, 0)] > 0) & valid  # (samples, groups, siblings)
    samples, group = np.nonzero(firing.sum(axis=2) >= 2)  # the conflicts: few, so draw only for them
    contenders = firing[samples, group]
    scores = np.where(contenders, rng.random(contenders.shape, dtype=np.float32), -1.0)
    losing = contenders & (np.arange(groups.shape[1]) != scores.argmax(axis=1)[:, None])
    conflict, sibling = np.nonzero(losing)
    codes[samples[conflict], groups[group[conflict], sibling]] = 0


# --------------------------------------------------------------------------- the samples


@dataclass(frozen=True)
class _CodeModel:
    """How codes are drawn: firing probabilities, magnitudes, the hierarchy and the correlation."""

    probabilities: np.ndarray
    magnitude: float
    magnitude_std: float
    tree: _Tree | None
    factors: np.ndarray | None

    def firing(self, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Where features fire, before the hierarchy: the (sample, feature) pairs as two arrays."""
        if self.factors is not None:
            return np.nonzero(self._copula(samples, rng))
        rare = self.probabilities <= _RARE
        rows, cols = _rare_firing(samples, self.probabilities[rare], rng)
        often = np.flatnonzero(~rare)  # one uniform per sample and feature: rejection would repeat too often
        more_rows, more_cols = np.nonzero(rng.random((samples, len(often)), dtype=np.float32)
                                          < self.probabilities[often])  # fmt: skip
        return np.concatenate([rows, more_rows]), np.concatenate([np.flatnonzero(rare)[cols], often[more_cols]])

    def _copula(self, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Correlated unit Gaussians, each above the quantile that it exceeds with probability p."""
        factors = self.factors.astype(np.float32)
        own = np.sqrt(1 - np.sum(self.factors**2, axis=1)).astype(np.float32)
        gauss = rng.standard_normal((samples, factors.shape[1]), dtype=np.float32) @ factors.T
        gauss += rng.standard_normal(gauss.shape, dtype=np.float32) * own
        return gauss > ndtri(1 - self.probabilities).astype(np.float32)

    def draw(self, samples: int, rng: np.random.Generator) -> scipy.sparse.csr_matrix:
        """``(samples, features)`` float32 codes."""
        rows, cols = self.firing(samples, rng)
        values = np.full(len(rows), self.magnitude, dtype=np.float32)
        if self.magnitude_std:
            values += self.magnitude_std * rng.standard_normal(len(rows), dtype=np.float32)
            values = np.maximum(values, 0)
        shape = (samples, len(self.probabilities))
        codes = scipy.sparse.csr_matrix((values, (rows, cols)), shape=shape)
        if self.tree is not None:
            dense = codes.toarray()
            self.tree.apply(dense, rng)
            codes = scipy.sparse.csr_matrix(dense)
        codes.eliminate_zeros()  # a magnitude clipped to 0 is no firing
        return codes


def _rare_firing(samples: int, probabilities: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Independent firing at rates ``probabilities``, drawn in time proportional to the firings:
    each feature fires in Binomial(samples, p) samples, a subset drawn uniformly (rejecting
    repeats, which are rare when p is small)."""
    cols = np.repeat(np.arange(len(probabilities)), rng.binomial(samples, probabilities))
    rows = rng.integers(0, samples, len(cols))
    while True:
        keys = cols * samples + rows
        order = np.argsort(keys)
        repeated = np.zeros(len(rows), dtype=bool)
        repeated[order[1:]] = keys[order[1:]] == keys[order[:-1]]
        if not repeated.any():
            return rows, cols
        rows[repeated] = rng.integers(0, samples, int(repeated.sum()))  # each set is equally likely: by symmetry


def _draw_samples(model: _CodeModel, dictionary: np.ndarray, bias: np.ndarray, count: int, split: int,
                  rng: np.random.Generator, target_dictionary: np.ndarray | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """All ``count`` samples ``(count, dim)``, their targets ``(count, target_dim)`` through
    ``target_dictionary`` (None without), and the codes of the samples from ``split`` on, sparse."""
    block = max(1, _BLOCK_ENTRIES // dictionary.shape[1])
    x = np.empty((count, dictionary.shape[0]), dtype=np.float32)
    atoms = np.ascontiguousarray(dictionary.T, dtype=np.float32)  # (features, dim)
    y = None if target_dictionary is None else np.empty((count, target_dictionary.shape[0]), dtype=np.float32)
    target_atoms = None if y is None else np.ascontiguousarray(target_dictionary.T, dtype=np.float32)
    kept = []
    for start in range(0, count, block):
        stop = min(start + block, count)
        codes = model.draw(stop - start, rng)
        x[start:stop] = codes @ atoms + bias  # sparse: the cost follows the active features
        if y is not None:
            y[start:stop] = codes @ target_atoms
        if stop > split:
            kept.append(codes[max(split - start, 0):])
    codes_kept = _sparse_tensor(scipy.sparse.vstack(kept, format="coo") if kept else None,
                                (count - split, dictionary.shape[1]))  # fmt: skip
    return torch.from_numpy(x), None if y is None else torch.from_numpy(y), codes_kept


def _sparse_tensor(codes: scipy.sparse.coo_matrix | None, shape: tuple[int, int]) -> torch.Tensor:
    """A scipy matrix as a coalesced float32 torch sparse COO tensor of ``shape``."""
    if codes is None:
        indices, values = torch.zeros((2, 0), dtype=torch.int64), torch.zeros(0)
        return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
    indices = torch.from_numpy(np.vstack([codes.row, codes.col]).astype(np.int64))
    values = torch.from_numpy(codes.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
