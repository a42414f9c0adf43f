"""Orthogonal matching pursuit, batched over samples: the k-sparse least squares, greedily.

For each sample x (a row) it approximates

    min_z  ‖x − D z‖²   subject to  ‖z‖₀ ≤ k        (optionally with z ≥ 0)

by orthogonal matching pursuit (Pati, Rezaiifar & Krishnaprasad 1993): start from z = 0;
at each step add to the support S the atom dⱼ most correlated with the residual
r = x − Dz, measured as |dⱼᵀr| / ‖dⱼ‖ so that atoms of any norm compete fairly, and
refit z on the support by least squares.  Finding the best k-sparse code is NP-hard in
general; OMP's code is a good one, not a certified optimum.

Everything is read off the Gram matrix G = DᵀD and the correlations Dᵀx, as in
Batch-OMP (Rubinstein, Zibulevsky & Elad 2008), so the same code serves any energy
whose smooth part is ½zGzᵀ − (Dᵀx)·z + const (:func:`omp_gram`).  The support's block
G_SS = L Lᵀ is factored progressively, one row of L per atom.  Write D_S = Q Lᵀ for the
orthonormalised atoms Q, and U = QᵀD = L⁻¹G_S for their correlations with every atom
(kept, one row per slot).  A new atom j brings the row (wᵀ, p) of L with w = Qᵀdⱼ (column
j of U) and p = √(G_jj − wᵀw); its direction's correlations u = (G_j − wᵀU) / p; the
residual's part along it a = α_j / p, where α = Dᵀr are the residual's correlations; and
α decreases by a·u.  The code on the support is γ = L⁻ᵀa (a triangular solve), needed
only when the sample finishes.  A step costs the product wᵀU, O(|S|·m) per sample, and
O(m) more.  The samples run in lockstep as batched tensors, in blocks whose U fits in
cache; a sample leaves when its best correlation has fallen to rounding level (the
residual is orthogonal to every atom: no atom can lower the energy further) or its next
atom lies in the span of its support.  The arithmetic is float64.

With z ≥ 0 (nonnegative OMP, as Bruckstein, Elad & Zibulevsky 2008 describe it) the atom
chosen is the one with the largest positive correlation, and the least squares on the
support must stay nonnegative.  The refit is the inner loop of Lawson & Hanson's
active-set NNLS (1974): where the unconstrained refit makes coefficients negative, the
code moves from the previous (feasible) code toward the refit until the first of them
reaches 0, that atom leaves the support, and the refit is repeated on the rest.  An atom
that left may be chosen again later.  Run with k ≥ the number of atoms this is
Lawson–Hanson's NNLS (within the cap on choices below); with a smaller k it stops once
the support holds k atoms.  As atoms may leave, a sample makes at most
``SELECTIONS_PER_ATOM · k`` choices.  The
slots are kept packed (occupied ones first); after a departure L, U and the residual's
correlations are recomputed from G_S: departures are rare and the support small.
"""

from __future__ import annotations

import dataclasses
import math

import torch

# A sample stops once its best normalised correlation is below this fraction of its
# first one: the residual is then orthogonal to every atom up to rounding.
FLOOR = 1e-10
# An atom whose new pivot² is below this fraction of its Gram entry lies in the span of
# the support (a repeated atom, a dependent dictionary): the sample stops.
COLLINEAR = 1e-10
# Nonnegative OMP: each sample makes at most this many choices per atom of k (atoms
# that leave the support and return count again).
SELECTIONS_PER_ATOM = 3
# U takes support size × atoms × 8 bytes per sample, read once a step: samples are
# pursued in blocks whose U stays in a CPU's cache, but never fewer than BLOCK_SAMPLES
# (each step's Python overhead is paid once per block).
BLOCK_BYTES = 2**23
BLOCK_SAMPLES = 64
FLOAT64 = 8  # bytes


def orthogonal_matching_pursuit(D: torch.Tensor, x: torch.Tensor, k: int, nonneg: bool = False) -> torch.Tensor:
    """The k-sparse codes (B, m) of the samples x (B, d) on the dictionary D (d, m), whose
    columns are the atoms (any norms), by OMP (see the module docstring); in x's dtype."""
    if D.dim() != 2 or x.dim() != 2 or x.shape[1] != D.shape[0]:
        raise ValueError(f"orthogonal_matching_pursuit needs D (d, m) and x (B, d), got {tuple(D.shape)} "
                         f"and {tuple(x.shape)}")  # fmt: skip
    D = D.double()
    return omp_gram(D.T @ D, x.double() @ D, k, nonneg).to(x.dtype)


def omp_gram(G: torch.Tensor, correlations: torch.Tensor, k: int, nonneg: bool = False) -> torch.Tensor:
    """OMP from the Gram matrix G = DᵀD (m, m) and the correlations Dᵀx, one row per sample
    (B, m): the k-sparse codes (B, m) in the correlations' dtype (see the module docstring).

    It minimises ½zGzᵀ − correlations·z over codes with at most k nonzeros (nonnegative
    ones with ``nonneg``), greedily: for a reconstruction ½‖x − Dz‖² that is its energy.
    """
    if G.dim() != 2 or G.shape[0] != G.shape[1] or correlations.dim() != 2 or correlations.shape[1] != G.shape[0]:
        raise ValueError(f"omp_gram needs G (m, m) and correlations (B, m), got {tuple(G.shape)} "
                         f"and {tuple(correlations.shape)}")  # fmt: skip
    if k != int(k) or k < 1:
        raise ValueError(f"omp needs a whole number k >= 1 of nonzeros, got {k}")
    G, target = G.double(), correlations.double()
    size = min(int(k), G.shape[0])
    block = block_samples(G.shape[0], size)
    codes = [_pursue(G, target[first : first + block], size, nonneg) for first in range(0, target.shape[0], block)]
    return torch.cat(codes).to(correlations.dtype) if codes else torch.zeros_like(correlations)


def block_samples(m: int, k: int) -> int:
    """How many samples are pursued together, for m atoms and supports of k."""
    return max(BLOCK_SAMPLES, BLOCK_BYTES // (k * m * FLOAT64))


def block_bytes(m: int, k: int) -> int:
    """The memory one block's pursuit holds: U and L, and the (b, m) rows of Dᵀx, α, the
    choices and the codes."""
    k = min(k, m)
    return block_samples(m, k) * (k * m + k * k + 4 * m) * FLOAT64


@dataclasses.dataclass
class _Supports:
    """The samples still being pursued, each support in ``k`` slots with the occupied ones first."""

    rows: torch.Tensor  # (b,) each sample's row in the block
    target: torch.Tensor  # (b, m) Dᵀx
    alpha: torch.Tensor  # (b, m) Dᵀr: the residual's correlations
    floor: torch.Tensor  # (b,) the correlation below which the sample stops
    atoms: torch.Tensor  # (b, k) long: each slot's atom (0 in an empty slot)
    count: torch.Tensor  # (b,) long: the occupied slots
    chosen: torch.Tensor  # (b, m) bool: the atoms in the support, and those of norm 0
    factor: torch.Tensor  # (b, k, k) L, with G_SS = L Lᵀ (identity on the empty slots)
    basis: torch.Tensor  # (b, k, m) U = L⁻¹G_S: each direction's correlations (0 in an empty slot)
    projections: torch.Tensor  # (b, k) a = Qᵀx: the sample along each direction (0 in an empty slot)

    def take(self, keep: torch.Tensor) -> _Supports:
        """The samples where ``keep`` (b,) holds (or at the indices ``keep``)."""
        return _Supports(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})

    def put(self, where: torch.Tensor, some: _Supports) -> None:
        """Write back ``some``, taken from the samples at ``where``."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[where] = getattr(some, f.name)

    def occupied(self) -> torch.Tensor:
        """(b, k) bool: the slots that hold an atom."""
        return torch.arange(self.atoms.shape[1], device=self.atoms.device) < self.count.unsqueeze(1)

    def coefficients(self) -> torch.Tensor:
        """γ = L⁻ᵀa (b, k): the least squares on each support (0 in the empty slots)."""
        return torch.linalg.solve_triangular(self.factor.mT, self.projections.unsqueeze(2), upper=True).squeeze(2)

    def codes(self, m: int) -> torch.Tensor:
        """The dense codes (b, m); empty slots add their 0 to atom 0."""
        codes = self.projections.new_zeros(self.projections.shape[0], m)
        return codes.scatter_add_(1, self.atoms, self.coefficients())


def _pursue(G: torch.Tensor, target: torch.Tensor, k: int, nonneg: bool) -> torch.Tensor:
    """OMP on one block of samples (:func:`omp_gram`, float64, k ≤ m)."""
    samples, m = target.shape
    norms = G.diagonal().clamp_min(0).sqrt()
    scale = torch.where(norms > 0, 1 / norms, 0.0)  # an atom of norm 0 never explains anything
    s = _start(target, k, scale, nonneg)
    codes = target.new_zeros(samples, m)
    previous = target.new_zeros(samples, k)  # nonneg: the last feasible code on the slots
    for _ in range(k * SELECTIONS_PER_ATOM if nonneg else k):
        atom, score = _select(s, scale, nonneg)
        w = s.basis.gather(2, atom.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2)  # Qᵀdⱼ, 0 in the empty slots
        pivot = G[atom, atom] - (w * w).sum(1)
        done = (score <= s.floor) | (s.count == k) | (pivot <= COLLINEAR * G[atom, atom])
        if bool(done.any()):
            codes[s.rows[done]] = s.take(done).codes(m)
            keep = ~done
            s, atom, w, pivot, previous = s.take(keep), atom[keep], w[keep], pivot[keep], previous[keep]
            if s.rows.numel() == 0:
                return codes
        _append(s, G, atom, w, pivot.sqrt())
        if nonneg:
            previous = _stay_nonnegative(s, G, previous)
    codes[s.rows] = s.codes(m)
    return codes


def _start(target: torch.Tensor, k: int, scale: torch.Tensor, nonneg: bool) -> _Supports:
    """Every sample with an empty support; its floor is FLOOR times its best first correlation."""
    samples, m = target.shape
    first = target * scale
    best = (first.clamp_min(0) if nonneg else first.abs()).amax(1)
    device = target.device
    return _Supports(
        rows=torch.arange(samples, device=device),
        target=target,
        alpha=target.clone(),
        floor=FLOOR * best,
        atoms=torch.zeros(samples, k, dtype=torch.long, device=device),
        count=torch.zeros(samples, dtype=torch.long, device=device),
        chosen=(scale == 0).expand(samples, m).clone(),  # an atom of norm 0 is never chosen
        factor=torch.eye(k, dtype=target.dtype, device=device).repeat(samples, 1, 1),
        basis=target.new_zeros(samples, k, m),
        projections=target.new_zeros(samples, k),
    )


def _select(s: _Supports, scale: torch.Tensor, nonneg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's next atom and its normalised correlation (−inf where none is left).

    The support's own correlations are 0 up to rounding; they are left out so that
    rounding never chooses an atom twice."""
    score = s.alpha * scale if nonneg else (s.alpha * scale).abs_()
    score = score.masked_fill_(s.chosen, -math.inf)
    best, atom = score.max(1)
    return atom, best


def _append(s: _Supports, G: torch.Tensor, atom: torch.Tensor, w: torch.Tensor, pivot: torch.Tensor) -> None:
    """Put each sample's new atom in its first empty slot: L gains the row (wᵀ, p), U the
    row u = (G_j − wᵀU) / p, a the entry α_j / p, and α loses a·u (see the module docstring)."""
    sample, slot = torch.arange(atom.numel(), device=atom.device), s.count
    width = int(slot.max())  # the slots beyond are empty in every sample
    direction = torch.baddbmm(G[atom].unsqueeze(1), w[:, None, :width], s.basis[:, :width], alpha=-1).squeeze(1)
    direction /= pivot.unsqueeze(1)
    along = s.alpha[sample, atom] / pivot
    w[sample, slot] = pivot
    s.factor[sample, slot] = w
    s.basis[sample, slot] = direction
    s.projections[sample, slot] = along
    s.alpha.addcmul_(along.unsqueeze(1), direction, value=-1)
    s.atoms[sample, slot] = atom
    s.chosen[sample, atom] = True
    s.count = s.count + 1


def _stay_nonnegative(s: _Supports, G: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Lawson & Hanson's inner loop where the refit has negative coefficients (see the module
    docstring): step back toward the previous code (0 in the new slot), drop the atom that
    reaches 0, refit.  Each pass drops at least one atom, so it ends.  Returns the code on
    the slots, nonnegative."""
    while True:
        coef = s.coefficients()
        negative = s.occupied() & (coef < 0)
        where = negative.any(1).nonzero().squeeze(1)
        if where.numel() == 0:
            return coef
        some, before, coef, negative = s.take(where), previous[where], coef[where], negative[where]
        ratio = torch.where(negative, before / (before - coef), math.inf)
        step, first = ratio.min(1)
        between = before + step.unsqueeze(1) * (coef - before)
        leaving = some.occupied() & (between <= 0)
        leaving[torch.arange(where.numel(), device=where.device), first] = True
        previous[where] = _drop(some, G, leaving, between)
        s.put(where, some)


def _drop(s: _Supports, G: torch.Tensor, leaving: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Take the ``leaving`` slots out of each support, pack the others first, and recompute
    L, U, a and α from G_S; returns ``code`` on the packed slots."""
    staying = s.occupied() & ~leaving
    sample = torch.arange(s.atoms.shape[0], device=s.atoms.device).unsqueeze(1)
    s.chosen[sample.expand_as(leaving)[leaving], s.atoms[leaving]] = False
    order = torch.argsort((~staying).to(torch.int8), dim=1, stable=True)
    s.count = staying.sum(1)
    occupied = s.occupied()
    s.atoms = torch.where(occupied, s.atoms.gather(1, order), 0)
    rows = G[s.atoms] * occupied.unsqueeze(2)  # G_S, 0 in the empty slots
    samples, k = s.atoms.shape
    block = rows.gather(2, s.atoms.unsqueeze(1).expand(samples, k, k))  # G_SS
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    s.factor = torch.linalg.cholesky(torch.where(occupied.unsqueeze(2) & occupied.unsqueeze(1), block, eye))
    s.basis = torch.linalg.solve_triangular(s.factor, rows, upper=False)
    inner = torch.where(occupied, s.target.gather(1, s.atoms), 0.0)  # (Dᵀx)_S
    s.projections = torch.linalg.solve_triangular(s.factor, inner.unsqueeze(2), upper=False).squeeze(2)
    s.alpha = s.target - torch.bmm(s.projections.unsqueeze(1), s.basis).squeeze(1)
    return torch.where(occupied, code.gather(1, order), 0.0)
