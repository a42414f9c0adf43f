"""Pool families, one registry entry each, and the two pool forms that are syntax.

``pools P = blocks(z, 4)`` looks ``blocks`` up in :data:`POOL_FAMILIES`; the entry reads the
arguments, checks them and builds the :class:`~energydsl.ops.pools.PoolFamily` (the numerics
stay in :mod:`energydsl.ops.pools` and :mod:`energydsl.ops.structures`).  A new family is a
:class:`PoolFamilyKind` subclass and one ``POOL_FAMILIES.register`` line (or an entry point in
the ``energydsl.pools`` group).  ``pool a = z[0:32]`` and ``pools P = [a, b]`` are read by
:func:`pool_from_ranges` and :func:`family_from_list`.
"""

from __future__ import annotations

from typing import ClassVar

from energydsl.compiler.program import Variable
from energydsl.errors import SpecError, did_you_mean, one_of
from energydsl.lang import spec as S
from energydsl.ops import pools
from energydsl.ops import structures as st
from energydsl.ops.pools import PoolFamily
from energydsl.registry import Registry


class PoolFamilyKind:
    """One builder of a pool family; its docstring is its reference entry."""

    name: ClassVar[str]
    arguments: ClassVar[tuple[str, ...]]  # by position; also the keywords a spec may write
    required: ClassVar[int]  # how many of them must be given

    @classmethod
    def build(cls, stage, name: str, node: S.Call, slots, latent: Variable) -> PoolFamily:
        """The family (``stage``: the compiler, for constants and structures)."""
        raise NotImplementedError


POOL_FAMILIES: Registry[type[PoolFamilyKind]] = Registry("pool family", "energydsl.pools")


def _check_latent(node: S.Expr, latent: Variable, message: str) -> None:
    if not isinstance(node, S.Name) or node.id != latent.name:
        raise SpecError(message, node.span)


class Blocks(PoolFamilyKind):
    __doc__ = pools.blocks.__doc__
    name = "blocks"
    arguments = ("of", "size")
    required = 2

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        _check_latent(slots[0], latent, f"blocks() groups units of the latent: its first argument is '{latent.name}'")
        return pools.blocks(name, latent.shape[0], stage.consts.integer(slots[1], "the block size"))


class Maps(PoolFamilyKind):
    __doc__ = pools.maps.__doc__
    name = "maps"
    arguments = ("of", "size", "window", "stride")
    required = 2

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        integer = stage.consts.integer
        _check_latent(slots[0], latent,
                      f"maps() groups the code maps of the latent: its first argument is '{latent.name}'")  # fmt: skip
        if latent.layout is None:
            raise SpecError(f"maps() needs code maps, e.g. 'latent {latent.name}[16, 28, 28]'; "
                            f"'{latent.name}' is a vector", slots[0].span)  # fmt: skip
        size = integer(slots[1], "the number of maps per pool")
        window = integer(slots[2], "the window") if slots[2] is not None else 1
        stride = integer(slots[3], "the stride") if slots[3] is not None else window
        if window > min(latent.layout[1:]):
            raise SpecError(f"a window of {window}x{window} does not fit {latent.layout[1]}x{latent.layout[2]} "
                            "code maps", slots[2].span)  # fmt: skip
        return pools.maps(name, latent.layout, size, window, stride)


def _structured(name: str, structure: st.Structure, members, weights=None) -> PoolFamily:
    names = tuple(f"{name}[{i}]" for i in range(len(members)))
    weights = tuple(weights) if weights is not None else None
    return PoolFamily(name, structure.size, names, tuple(members), weights)


class Windows(PoolFamilyKind):
    __doc__ = st.windows.__doc__
    name = "windows"
    arguments = ("map", "size", "stride", "sigma")
    required = 2

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        structure = stage.structure_argument(slots[0], "windows()", ("grid", "torus"))
        size = stage.consts.integer(slots[1], "the window size")
        stride = stage.consts.integer(slots[2], "the stride") if slots[2] is not None else 1
        if size > min(structure.shape):
            raise SpecError(f"windows of {size}x{size} do not fit a {structure.shape[0]}x{structure.shape[1]} map",
                            slots[1].span)  # fmt: skip
        sigma = stage.consts.positive(slots[3], "sigma") if slots[3] is not None else None
        return _structured(name, structure, *st.windows(structure, size, stride, sigma))


class Neighborhoods(PoolFamilyKind):
    __doc__ = st.neighborhoods.__doc__
    name = "neighborhoods"
    arguments = ("graph", "radius")
    required = 2

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        structure = stage.structure_argument(slots[0], "neighborhoods()")
        return _structured(name, structure, st.neighborhoods(structure, stage.consts.integer(slots[1], "the radius", 0)))


class Subtrees(PoolFamilyKind):
    __doc__ = st.subtrees.__doc__
    name = "subtrees"
    arguments = ("tree",)
    required = 1

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        structure = stage.structure_argument(slots[0], "subtrees()", st.TREE_KINDS)
        return _structured(name, structure, st.subtrees(structure))


POOL_FAMILIES.register(Blocks)
POOL_FAMILIES.register(Maps)
POOL_FAMILIES.register(Windows)
POOL_FAMILIES.register(Neighborhoods)
POOL_FAMILIES.register(Subtrees)


# ---------------------------------------------------------------- the forms that are syntax


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


def unknown_builder(node: S.Call) -> SpecError:
    return SpecError(f"unknown pool family '{node.func}'", node.func_span,
                     hint=did_you_mean(node.func, POOL_FAMILIES) or one_of(POOL_FAMILIES))  # fmt: skip
