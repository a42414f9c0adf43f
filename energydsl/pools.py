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

    def overlap(self) -> tuple[int, str, str] | None:
        """The first unit that two pools share, with their names, or None."""
        owner: dict[int, str] = {}
        for pool, units in zip(self.pool_names, self.members):
            for unit in units:
                if unit in owner:
                    return unit, owner[unit], pool
                owner[unit] = pool
        return None

    def group_index(self) -> torch.Tensor:
        """For disjoint pools: each unit's pool number, or -1 for units in no pool."""
        index = torch.full((self.size,), -1, dtype=torch.long)
        for number, units in enumerate(self.members):
            index[list(units)] = number
        return index


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


FAMILY_BUILDERS = ("blocks",)


def unknown_builder(node: S.Call) -> SpecError:
    return SpecError(f"unknown pool family '{node.func}'", node.func_span,
                     hint=did_you_mean(node.func, FAMILY_BUILDERS) or one_of(FAMILY_BUILDERS))  # fmt: skip
