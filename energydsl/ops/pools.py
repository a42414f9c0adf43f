"""Named pools of latent units and the families that group terms range over.

A pool is a named set of unit indices (``pool strokes = z[0:32, 40]``); a family
is an ordered collection of pools (``pools P = blocks(z, 4)``, ``pools P =
[strokes, loops]``).  Families keep every pool's name so that a term, a plot or
a metric can refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# above this many entries (units × pools) the pools of one level are a table of indices (see GroupNorms)
DENSE_LEVEL_LIMIT = 4_000_000


def soft_threshold(v: torch.Tensor, theta, inplace: bool = False) -> torch.Tensor:
    """sign(v)·max(|v| − θ, 0), the prox of θ‖·‖₁ (θ a scalar or a tensor that broadcasts),
    computed as v − clamp(v, −θ, θ): the same values in two passes over memory, not four.
    ``inplace`` overwrites v (FISTA's inner loop, where v is a fresh product)."""
    clamped = v.clamp(-theta, theta)
    return v.sub_(clamped) if inplace else v - clamped


def shrink_factor(norms: torch.Tensor, tau) -> torch.Tensor:
    """max(0, 1 − τ/‖block‖): the factor by which the group soft-threshold scales a block."""
    return torch.clamp(1 - tau / norms.clamp_min(1e-30), min=0)


def _per_sample(tau, v: torch.Tensor, dims: int):
    """τ (a scalar, or one value per sample) shaped to broadcast over ``dims`` axes after the batch's."""
    tau = torch.as_tensor(tau, dtype=v.dtype, device=v.device)
    return tau.reshape((-1,) + (1,) * dims) if tau.dim() else tau


@dataclass(frozen=True)
class PoolFamily:
    name: str
    size: int  # number of units of the latent the pools index
    pool_names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    # fixed weights w inside each pool (the pool's norm is sqrt(Σ w_i z_i²)), or None
    weights: tuple[tuple[float, ...], ...] | None = None
    # pools of maps(...) that tile the code maps exactly: (maps, rows, cols, maps per pool, window),
    # so that a pool's units are a block of a reshaped (maps, rows, cols) array
    tiling: tuple[int, int, int, int, int] | None = None

    def layout(self) -> str:
        """How the pools sit on the units, which decides the group prox:
        disjoint, nested (laminar), overlapping or weighted."""
        if self.weights:
            return "weighted"
        levels = self.laminar_levels()
        if levels is None:
            return "overlapping"
        return "disjoint" if len(levels) <= 1 else "nested"

    def laminar_levels(self) -> list[list[int]] | None:
        """Pools grouped into levels of disjoint pools, innermost first, or None.

        When any two pools are either disjoint or nested (a laminar family: blocks,
        the subtrees of a tree), the prox of the sum of their norms is the
        composition of block soft-thresholds from the innermost pools outwards
        (Jenatton et al. 2011).  A pool's level is one more than the highest level
        of the pools it contains, so pools on one level never meet.
        """
        sets = [frozenset(m) for m in self.members]
        level = [0] * len(sets)
        owner: dict[int, int] = {}  # each unit's largest pool so far; in a laminar family, those nest
        for j in sorted(range(len(sets)), key=lambda j: len(sets[j])):
            for k in {owner[unit] for unit in sets[j] if unit in owner}:
                if not sets[k] <= sets[j]:
                    return None
                level[j] = max(level[j], level[k] + 1)
            owner.update(dict.fromkeys(sets[j], j))
        levels: list[list[int]] = [[] for _ in range(max(level, default=-1) + 1)]
        for j, lv in enumerate(level):
            levels[lv].append(j)
        return levels

    def overlap(self) -> tuple[int, str, str] | None:
        """The first unit that two pools share, with their names, or None."""
        owner: dict[int, str] = {}
        for pool, units in zip(self.pool_names, self.members):
            for unit in units:
                if unit in owner:
                    return unit, owner[unit], pool
                owner[unit] = pool
        return None


class GroupNorms:
    """Σⱼ λⱼ‖aⱼ ⊙ v_{Pⱼ}‖₂ over a pool family, batched: the energy and the exact prox.

    The prox may also absorb a separable l1 part with per-unit thresholds (which
    is how l1 and lateral inhibition enter).  For a laminar, unweighted family it
    is soft-thresholding followed by the level-by-level block shrinks; otherwise
    it solves the dual problem

        min_ξ ½‖v − Aᵀξ − ξₛ‖²  subject to ‖ξⱼ‖ ≤ τλⱼ per pool and |ξₛᵢ| ≤ l1ᵢ per unit,

    by accelerated projected gradient, warm-started from the previous call, until
    the duality gap is below ``gap_tol``·½‖v‖² (which bounds ‖u − u*‖² by
    ``gap_tol``·‖v‖², since the primal is 1-strongly convex).

    Pools are laid out as a ``(pools, largest pool)`` table padded with a dummy
    unit, so pool norms are reshapes, Au is one index_select and Aᵀξ one
    index_add.  Whole problems with these pools are solved by ADMM instead
    (:func:`energydsl.solvers.admm.admm`), which uses the same operators.
    """

    def __init__(self, family: PoolFamily, gap_tol: float | None = None, max_iter: int | None = None):
        self.family = family
        self.size = m = family.size
        self.count = len(family.members)
        width = max(len(pool) for pool in family.members)
        units = torch.full((self.count, width), m, dtype=torch.long)  # m: the dummy unit
        scale = torch.zeros(self.count, width, dtype=torch.float64)  # a = sqrt(w), 0 on padding
        for j, pool in enumerate(family.members):
            units[j, : len(pool)] = torch.tensor(pool)
            weights = family.weights[j] if family.weights else [1.0] * len(pool)
            scale[j, : len(pool)] = torch.tensor(weights, dtype=torch.float64).sqrt()
        self.width = width
        self.unit_of = units.flatten()
        self.scale = scale.flatten()
        self.padded = bool((self.unit_of == m).any())
        # ‖A‖² = the largest Σ a² over one unit's pools (AᵀA is diagonal)
        squares = torch.zeros(m + 1, dtype=torch.float64).index_add_(0, self.unit_of, self.scale**2)
        self.unit_weight = squares[:m]  # Σ a² over each unit's pools: the diagonal of AᵀA
        self.lipschitz = float(squares[:m].max())
        levels = family.laminar_levels() if family.weights is None else None
        # a dense units × pools table per level is fastest (one matrix product) while it is small;
        # code maps have thousands of units and pools, and there a table of indices takes its place
        dense = levels is None or m * len(family.members) <= DENSE_LEVEL_LIMIT
        make = self._level_matrix if dense else self._level_index
        self.levels = None if levels is None else [make(lv) for lv in levels]
        self.gap_tol = gap_tol
        self.max_iter = max_iter
        # the dual prox's last solution, its next start; public so that a measurement can leave it as it was
        self.warm_start: torch.Tensor | None = None
        self._cache: dict = {}

    def _level_matrix(self, pools: list[int]) -> torch.Tensor:
        """units × pools of one level (disjoint pools), one-hot."""
        matrix = torch.zeros(self.size, len(pools), dtype=torch.float64)
        for column, pool in enumerate(pools):
            matrix[list(self.family.members[pool]), column] = 1
        return matrix

    def _level_index(self, pools: list[int]) -> torch.Tensor:
        """pools × width of one level (disjoint pools): their units, padded with the dummy unit m."""
        width = max(len(self.family.members[pool]) for pool in pools)
        table = torch.full((len(pools), width), self.size, dtype=torch.long)
        for row, pool in enumerate(pools):
            table[row, : len(self.family.members[pool])] = torch.tensor(self.family.members[pool])
        return table

    def _on(self, v: torch.Tensor, name: str):
        key = (name, v.dtype, v.device)
        if key not in self._cache:
            tensor = getattr(self, name) if not name.startswith("level") else self.levels[int(name[5:])]
            self._cache[key] = tensor.to(v.device) if tensor.dtype == torch.long else tensor.to(v)
        return self._cache[key]

    def slots(self, u: torch.Tensor) -> torch.Tensor:
        """Au: each pool slot's weighted unit value, ``(B, pools·width)``.

        index_select and index_add (below) are several times faster on the CPU
        than indexing with a tensor, and these two run at every iteration."""
        if self.padded:
            u = torch.cat([u, u.new_zeros(u.shape[0], 1)], dim=1)
        return torch.index_select(u, 1, self._on(u, "unit_of")) * self._on(u, "scale")

    def units(self, xi: torch.Tensor) -> torch.Tensor:
        """Aᵀξ: each unit's weighted sum over its pool slots, ``(B, m)``."""
        sums = xi.new_zeros(xi.shape[0], self.size + 1)  # + the padding slots' dummy unit
        return sums.index_add_(1, self._on(xi, "unit_of"), xi * self._on(xi, "scale"))[:, : self.size]

    def pool_norms(self, slots: torch.Tensor) -> torch.Tensor:
        """‖aⱼ ⊙ v_{Pⱼ}‖ per sample and pool from the slot values ``slots(v)``."""
        return (slots * slots).view(slots.shape[0], self.count, self.width).sum(-1).sqrt()

    def norms(self, v: torch.Tensor) -> torch.Tensor:
        """‖aⱼ ⊙ v_{Pⱼ}‖ per sample and pool, ``(B, G)``."""
        if self.family.tiling is not None:
            return _tile_norms(_tiled(v, self.family.tiling)).flatten(1)
        return self.pool_norms(self.slots(v))

    def prox(self, v: torch.Tensor, tau, l1: torch.Tensor | float | None = None) -> torch.Tensor:
        """argmin_u ½‖u − v‖² + τ Σⱼ‖aⱼ ⊙ u_{Pⱼ}‖ + Σᵢ l1ᵢ|uᵢ|."""
        if self.levels is not None:
            if l1 is not None:
                v = soft_threshold(v, l1)
            if self.family.tiling is not None:  # blocks of the reshaped code maps: no index tables
                blocks = _tiled(v, self.family.tiling)
                norms = _tile_norms(blocks)[:, :, None, :, None, :, None]
                return (blocks * shrink_factor(norms, _per_sample(tau, v, 6))).reshape(v.shape)
            for number in range(len(self.levels)):
                level = self._on(v, f"level{number}")
                v = (indexed_block_shrink if level.dtype == torch.long else block_shrink)(v, level, tau)
            return v
        return self._dual_prox(v, tau, l1)

    def _dual_prox(self, v, tau, l1):
        """The dual solve, in float64 whatever the model's dtype: float32 cannot
        resolve the duality gap finely enough to stop early."""
        result = v.double()
        batch = v.shape[0]
        bound = torch.as_tensor(tau, dtype=torch.float64, device=v.device).expand(batch, 1)
        unit_bound = None if l1 is None else torch.as_tensor(l1, dtype=torch.float64, device=v.device)
        unit_bound = None if unit_bound is None else unit_bound.expand_as(result)
        lipschitz = self.lipschitz + (1.0 if l1 is not None else 0.0)
        xi, xs = self._start(result, l1 is not None)
        previous, t = (xi, xs), result.new_ones(batch, 1)
        tol = self.gap_tol if self.gap_tol is not None else (1e-14 if v.dtype == torch.float64 else 1e-7)
        for k in range(self.max_iter or 5000):
            u = result - self.units(xi) - xs
            step_xi = self._project(xi + self.slots(u) / lipschitz, bound)
            step_xs = xs
            if unit_bound is not None:
                step_xs = torch.maximum(torch.minimum(xs + u / lipschitz, unit_bound), -unit_bound)
            # momentum with per-sample adaptive restart (O'Donoghue & Candès), as in FISTA
            restart = ((xi - step_xi) * (step_xi - previous[0])).sum(1, keepdim=True) + (
                (xs - step_xs) * (step_xs - previous[1])
            ).sum(1, keepdim=True) > 0
            t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
            t = torch.where(restart, torch.ones_like(t), t_next)
            xi = step_xi + momentum * (step_xi - previous[0])
            xs = step_xs + momentum * (step_xs - previous[1])
            previous = (step_xi, step_xs)
            if k % 10 == 9 and self._gap_small(result, *previous, bound, unit_bound, tol):
                break
        self.warm_start = previous
        u = result - self.units(previous[0]) - previous[1]
        # where the prox is exactly 0, v − Aᵀξ leaves rounding of v's size: make it 0 again
        u = torch.where(u.abs() <= 1e-12 * result.abs().amax(dim=1, keepdim=True), torch.zeros_like(u), u)
        return u.to(v.dtype)

    def _start(self, v, with_l1: bool):
        """The previous call's dual point (a warm start), if it fits this call."""
        memberships = (v.shape[0], self.unit_of.shape[0])
        warm = self.warm_start
        if warm is not None and warm[0].shape == memberships and warm[0].device == v.device:
            xs = warm[1] if with_l1 else torch.zeros_like(v)
            return warm[0], xs
        return v.new_zeros(memberships), torch.zeros_like(v)

    def _project(self, xi, bound):
        """Each pool's block of ξ onto the ball of radius ``bound``."""
        blocks = xi.view(xi.shape[0], self.count, self.width)
        norms = blocks.norm(dim=-1, keepdim=True)
        return (blocks * torch.clamp(bound.unsqueeze(-1) / norms.clamp_min(1e-30), max=1)).view_as(xi)

    def shrink_slots(self, slots: torch.Tensor, tau) -> torch.Tensor:
        """Each pool's block of slot values scaled by max(0, 1 − τ/‖block‖): the prox of
        τ Σⱼ‖yⱼ‖ over separate copies yⱼ of the pools (no overlap between copies)."""
        blocks = slots.view(slots.shape[0], self.count, self.width)
        norms = blocks.norm(dim=-1, keepdim=True)
        return (blocks * shrink_factor(norms, tau)).view_as(slots)

    def _gap_small(self, v, xi, xs, bound, unit_bound, tol) -> bool:
        """Duality gap ≤ tol·½‖v‖² for every sample (see the scale below)."""
        u = v - self.units(xi) - xs
        primal = 0.5 * ((u - v) ** 2).sum(1) + (bound * self.norms(u)).sum(1)
        if unit_bound is not None:
            primal = primal + (unit_bound * u.abs()).sum(1)
        energy = 0.5 * (v * v).sum(1)
        dual = energy - 0.5 * (u * u).sum(1)
        # a sample with v ≈ 0 is measured against the batch's scale: relative to its own
        # ‖v‖² the rounding of a warm-started ξ would never look small enough
        scale = torch.maximum(energy, 1e-6 * energy.mean())
        return bool(((primal - dual) <= tol * scale).all())


def block_shrink(v: torch.Tensor, membership: torch.Tensor, tau) -> torch.Tensor:
    """Scale each block of disjoint units by max(0, 1 − τ/‖v_block‖).

    ``membership`` is units × blocks, one-hot; units in no block are unchanged.
    ``tau`` is a scalar or ``(B, 1)``.
    """
    norms = ((v * v) @ membership).sqrt()
    scale = shrink_factor(norms, tau)
    outside = 1 - membership.sum(1)
    return v * (scale @ membership.T + outside)


def _tiled(v: torch.Tensor, tiling) -> torch.Tensor:
    """Flat code maps ``(B, maps·rows·cols)`` as ``(B, groups, size, block rows, window, block cols, window)``."""
    maps, rows, cols, size, window = tiling
    return v.reshape(v.shape[0], maps // size, size, rows // window, window, cols // window, window)


def _tile_norms(blocks: torch.Tensor) -> torch.Tensor:
    """‖block‖ of every tile of ``_tiled(v)``, ``(B, groups, block rows, block cols)``.  Summing
    slices is several times faster on the CPU than a norm over several strided axes."""
    squares = blocks * blocks
    if blocks.shape[4] > 1 or blocks.shape[6] > 1:
        squares = squares.sum(dim=(4, 6), keepdim=True)
    squares = squares[:, :, :, :, 0, :, 0]  # (B, groups, size, block rows, block cols)
    return sum(squares[:, :, i] for i in range(squares.shape[2])).sqrt()


def indexed_block_shrink(v: torch.Tensor, table: torch.Tensor, tau) -> torch.Tensor:
    """:func:`block_shrink` with the blocks given as a pools × width table of unit indices,
    padded with the index m (a dummy unit): memory linear in the units."""
    batch, m = v.shape
    padded = torch.cat([v, v.new_zeros(batch, 1)], dim=1)
    blocks = padded[:, table]  # (B, pools, width)
    norms = blocks.norm(dim=-1, keepdim=True)
    shrunk = blocks * shrink_factor(norms, _per_sample(tau, v, 2))
    padded = padded.clone()
    padded[:, table.flatten()] = shrunk.flatten(1)  # disjoint blocks: each unit is written once
    return padded[:, :m]


def maps(name: str, layout: tuple[int, int, int], size: int, window: int = 1, stride: int | None = None) -> PoolFamily:
    """Pools over code maps (``maps(z, size, window, stride)``, for a latent z[maps, rows, cols]): at
    each position, ``size`` consecutive maps form a pool — L2 pooling across feature maps; with
    ``window`` > 1 a pool also spans a window×window block of positions.  By default the blocks
    tile the maps (stride = window): disjoint pools, whose prox is a closed-form block
    soft-threshold.  A smaller ``stride`` makes overlapping windows (solved by ADMM, for small
    latents only).  Pool ``P[g,r,c]`` is group g of maps at window row r, window column c."""
    channels, rows, cols = layout
    stride = window if stride is None else stride

    def starts(length: int) -> range:
        return range(0, length, stride) if stride == window else range(0, max(length - window, 0) + 1, stride)

    members, names = [], []
    for group, first in enumerate(range(0, channels, size)):
        for block_row, top in enumerate(starts(rows)):
            for block_col, left in enumerate(starts(cols)):
                members.append(tuple(
                    (c * rows + i) * cols + j
                    for c in range(first, min(first + size, channels))
                    for i in range(top, min(top + window, rows))
                    for j in range(left, min(left + window, cols))
                ))  # fmt: skip
                names.append(f"{name}[{group},{block_row},{block_col}]")
    exact = stride == window and channels % size == 0 and rows % window == 0 and cols % window == 0
    tiling = (channels, rows, cols, size, window) if exact else None
    return PoolFamily(name, channels * rows * cols, tuple(names), tuple(members), tiling=tiling)


def blocks(name: str, size: int, block: int) -> PoolFamily:
    """Consecutive blocks of ``block`` units (``blocks(z, block)``): pools ``P[0]`` = 0..block-1, and so on."""
    starts = range(0, size, block)
    members = tuple(tuple(range(s, min(s + block, size))) for s in starts)
    names = tuple(f"{name}[{i}]" for i in range(len(members)))
    # equal blocks are a reshape of the code (as maps of one pixel), with no index tables
    tiling = (size, 1, 1, block, 1) if size % block == 0 else None
    return PoolFamily(name, size, names, members, tiling=tiling)


def memberships_text(family: PoolFamily) -> str:
    """How many pools each unit is in, in words (``explain``)."""
    counts = [0] * family.size
    for pool in family.members:
        for unit in pool:
            counts[unit] += 1
    low, high = min(counts), max(counts)
    return f"each unit in {low} pool{'s' if low != 1 else ''}" if low == high else f"a unit in {low} to {high} pools"


def nesting_text(family: PoolFamily) -> str:
    """The levels of nesting of laminar pools, in words (``explain``), or nothing."""
    levels = family.laminar_levels() if not family.weights else None
    return f", {len(levels)} levels of nesting" if levels is not None and len(levels) > 1 else ""
