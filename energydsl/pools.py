"""Named pools of latent units and the families that group terms range over.

A pool is a named set of unit indices (``pool strokes = z[0:32, 40]``); a family
is an ordered collection of pools (``pools P = blocks(z, 4)``, ``pools P =
[strokes, loops]``).  Families keep every pool's name so that a term, a plot or
a metric can refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import spec as S
from .errors import SpecError, did_you_mean, one_of


@dataclass(frozen=True)
class PoolFamily:
    name: str
    size: int  # number of units of the latent the pools index
    pool_names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    # fixed weights w inside each pool (the pool's norm is sqrt(Σ w_i z_i²)), or None
    weights: tuple[tuple[float, ...], ...] | None = None

    def laminar_levels(self) -> list[list[int]] | None:
        """Pools grouped into levels of disjoint pools, innermost first, or None.

        When any two pools are either disjoint or nested (a laminar family: blocks,
        the subtrees of a tree), the prox of the sum of their norms is the
        composition of block soft-thresholds from the innermost pools outwards
        (Jenatton et al. 2011).  A pool's level is one more than the highest level
        of the pools it contains, so pools on one level never meet.
        """
        sets = [frozenset(m) for m in self.members]
        order = sorted(range(len(sets)), key=lambda j: len(sets[j]))
        level = [0] * len(sets)
        for position, j in enumerate(order):
            for k in order[:position]:
                inner, outer = sets[k], sets[j]
                if inner & outer:
                    if not inner <= outer:
                        return None
                    level[j] = max(level[j], level[k] + 1)
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

    def group_index(self, pools: list[int] | None = None) -> torch.Tensor:
        """For disjoint pools: each unit's position in ``pools``, or len(pools) for none."""
        pools = list(range(len(self.members))) if pools is None else pools
        index = torch.full((self.size,), len(pools), dtype=torch.long)
        for number, pool in enumerate(pools):
            index[list(self.members[pool])] = number
        return index


class GroupNorms:
    """Σⱼ λⱼ‖aⱼ ⊙ v_{Pⱼ}‖₂ over a pool family, batched: the energy and the exact prox.

    The prox may also absorb a separable l1 part with per-unit thresholds (which
    is how l1 and lateral inhibition enter): for a laminar, unweighted family it
    is soft-thresholding followed by the level-by-level block shrinks; otherwise
    it solves the dual problem

        min_ξ ½‖v − Aᵀξ‖²  subject to ‖ξⱼ‖ ≤ τλⱼ for every pool (and unit),

    by accelerated projected gradient, warm-started from the previous call, until
    the duality gap is below ``gap_tol`` relative to the primal value.

    Memberships are dense matrices (a pool family over a few thousand units is
    small), so every step is a matrix product rather than a scatter.
    """

    def __init__(self, family: PoolFamily, gap_tol: float | None = None, max_iter: int = 1000):
        self.family = family
        self.size = family.size
        self.count = len(family.members)
        units = [u for m in family.members for u in m]
        groups = [j for j, m in enumerate(family.members) for _ in m]
        weights = [w for ws in family.weights for w in ws] if family.weights else [1.0] * len(units)
        rows = torch.arange(len(units))
        # A: memberships × units, holding a = sqrt(w); G: memberships × pools, one-hot
        self.A = torch.zeros(len(units), self.size, dtype=torch.float64)
        self.A[rows, units] = torch.tensor(weights, dtype=torch.float64).sqrt()
        self.G = torch.zeros(len(units), self.count, dtype=torch.float64)
        self.G[rows, groups] = 1
        levels = family.laminar_levels() if family.weights is None else None
        self.levels = None if levels is None else [self._level_matrix(lv) for lv in levels]
        self.gap_tol = gap_tol
        self.max_iter = max_iter
        self._dual: torch.Tensor | None = None  # warm start
        self._cache: dict = {}

    def _level_matrix(self, pools: list[int]) -> torch.Tensor:
        """units × pools of one level (disjoint pools), one-hot."""
        matrix = torch.zeros(self.size, len(pools), dtype=torch.float64)
        for column, pool in enumerate(pools):
            matrix[list(self.family.members[pool]), column] = 1
        return matrix

    def _on(self, v: torch.Tensor, name: str, tensor: torch.Tensor) -> torch.Tensor:
        key = (name, v.dtype, v.device)
        if key not in self._cache:
            self._cache[key] = tensor.to(v)
        return self._cache[key]

    def norms(self, v: torch.Tensor) -> torch.Tensor:
        """‖aⱼ ⊙ v_{Pⱼ}‖ per sample and pool, ``(B, G)``."""
        values = v @ self._on(v, "A", self.A).T
        return ((values * values) @ self._on(v, "G", self.G)).sqrt()

    def prox(self, v: torch.Tensor, tau, l1: torch.Tensor | float | None = None) -> torch.Tensor:
        """argmin_u ½‖u − v‖² + τ Σⱼ‖aⱼ ⊙ u_{Pⱼ}‖ + Σᵢ l1ᵢ|uᵢ|."""
        if self.levels is not None:
            if l1 is not None:
                v = torch.sign(v) * torch.clamp(v.abs() - l1, min=0)
            for number, level in enumerate(self.levels):
                v = block_shrink(v, self._on(v, f"level{number}", level), tau)
            return v
        return self._dual_prox(v, tau, l1)

    def _dual_prox(self, v, tau, l1):
        A, G = self._on(v, "A", self.A), self._on(v, "G", self.G)
        if l1 is not None:  # each unit's l1 is a pool of its own, with weight 1
            A = torch.cat([A, torch.eye(self.size, dtype=v.dtype, device=v.device)])
            G = torch.block_diag(G, torch.eye(self.size, dtype=v.dtype, device=v.device))
        bound = v.new_zeros(v.shape[0], G.shape[1])
        bound[:, : self.count] = tau
        if l1 is not None:
            bound[:, self.count :] = l1
        lipschitz = (A * A).sum(0).max()  # AᵀA is diagonal: Σ over a unit's memberships of a²
        xi = self._dual if self._dual is not None and self._dual.shape == (v.shape[0], A.shape[0]) else None
        xi = v.new_zeros(v.shape[0], A.shape[0]) if xi is None else xi.to(v)
        previous, t = xi, 1.0
        tol = self.gap_tol if self.gap_tol is not None else (1e-10 if v.dtype == torch.float64 else 1e-5)
        for k in range(self.max_iter):
            u = v - xi @ A
            step = _project_balls(xi + (u @ A.T) / lipschitz, G, bound)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            xi, previous = step + (t - 1) / t_next * (step - previous), step
            t = t_next
            if k % 10 == 9 and _gap_small(v - previous @ A, v, A, G, bound, tol):
                break
        self._dual = previous
        return v - previous @ A


def block_shrink(v: torch.Tensor, membership: torch.Tensor, tau) -> torch.Tensor:
    """Scale each block of disjoint units by max(0, 1 − τ/‖v_block‖).

    ``membership`` is units × blocks, one-hot; units in no block are unchanged.
    ``tau`` is a scalar or ``(B, 1)``.
    """
    norms = ((v * v) @ membership).sqrt()
    scale = torch.clamp(1 - tau / norms.clamp_min(1e-30), min=0)
    outside = 1 - membership.sum(1)
    return v * (scale @ membership.T + outside)


def _project_balls(xi, G, bound):
    """Project each pool's block of ξ onto the ball of radius ``bound``."""
    norms = ((xi * xi) @ G).sqrt()
    scale = torch.clamp(bound / norms.clamp_min(1e-30), max=1)
    return xi * (scale @ G.T)


def _gap_small(u, v, A, G, bound, tol) -> bool:
    """Duality gap of the prox problem, relative to the primal value, for every sample."""
    values = u @ A.T
    norms = ((values * values) @ G).sqrt()
    primal = 0.5 * ((u - v) ** 2).sum(1) + (bound * norms).sum(1)
    dual = 0.5 * (v * v).sum(1) - 0.5 * (u * u).sum(1)
    return bool(((primal - dual) <= tol * primal.abs().clamp_min(1e-30)).all())


def pool_from_ranges(decl: S.PoolDecl, size: int, integer) -> PoolFamily:
    """``pool a = z[0:32, 40]`` → a family holding the one pool ``a``."""
    units: list[int] = []
    for item in decl.indices:
        start = integer(item.start, "a pool index", 0)
        stop = start + 1 if item.stop is None else integer(item.stop, "a pool index", 0)
        if stop <= start:
            raise SpecError(f"empty range {start}:{stop}", item.span, hint="a range is start:stop with stop > start")
        if stop > size:
            raise SpecError(f"index {stop - 1} is out of range: '{decl.variable.name}' has {size} units", item.span)
        units.extend(range(start, stop))
    if len(set(units)) != len(units):
        raise SpecError(f"pool '{decl.name.name}' lists a unit twice", decl.span)
    return PoolFamily(decl.name.name, size, (decl.name.name,), (tuple(units),))


def blocks(name: str, size: int, block: int) -> PoolFamily:
    """Consecutive blocks of ``block`` units: pools ``P[0]`` = 0..block-1, and so on."""
    starts = range(0, size, block)
    members = tuple(tuple(range(s, min(s + block, size))) for s in starts)
    names = tuple(f"{name}[{i}]" for i in range(len(members)))
    return PoolFamily(name, size, names, members)


def family_from_list(name: str, node: S.ListExpr, known: dict[str, PoolFamily]) -> PoolFamily:
    """``[strokes, loops]``: named single pools gathered into one family."""
    names, members = [], []
    for item in node.items:
        if not isinstance(item, S.Name) or item.id not in known:
            label = item.id if isinstance(item, S.Name) else "this"
            hint = did_you_mean(label, known) if isinstance(item, S.Name) else None
            raise SpecError(f"'{label}' is not a declared pool", item.span, hint=hint)
        family = known[item.id]
        names.extend(family.pool_names)
        members.extend(family.members)
    sizes = {known[item.id].size for item in node.items}
    if len(sizes) != 1:
        raise SpecError("these pools index latents of different sizes", node.span)
    return PoolFamily(name, sizes.pop(), tuple(names), tuple(members))


# builder → its arguments, by position
FAMILY_BUILDERS = {
    "blocks": ("of", "size"),
    "windows": ("map", "size", "stride", "sigma"),
    "neighborhoods": ("graph", "radius"),
    "subtrees": ("tree",),
}


def unknown_builder(node: S.Call) -> SpecError:
    return SpecError(f"unknown pool family '{node.func}'", node.func_span,
                     hint=did_you_mean(node.func, FAMILY_BUILDERS) or one_of(FAMILY_BUILDERS))  # fmt: skip
