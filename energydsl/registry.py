"""One registry style for every extension point of the language.

Each extension point (energy terms, inference methods, optimizers, data sources,
structures, pool families, constraints, initialisers) is a :class:`Registry`: a
table from the word a spec writes to an entry that carries everything the rest of
the system asks of it.  Built-in entries are registered by their sub-package's
``__init__`` (one line each); entries from other packages arrive through Python
entry points, one group per registry (``energydsl.terms``, ``energydsl.solvers``,
...), loaded the first time the registry is read::

    # a plugin's pyproject.toml
    [project.entry-points."energydsl.terms"]
    huber = "mypackage.terms:Huber"

The entry point's name is the word the spec writes; the registry checks that it
matches the entry's own ``name``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Generic, TypeVar

from energydsl.errors import UserError

T = TypeVar("T")


class PluginError(UserError):
    """An installed plugin that cannot be loaded, or that clashes with a registered name."""


class Registry(Generic[T]):
    """Named entries of one kind, built-in or from plugins; iterates in registration order."""

    def __init__(self, kind: str, group: str):
        self.kind = kind  # as messages name it: "energy term"
        self.group = group  # the entry-point group of plugins: "energydsl.terms"
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, entry: T, name: str | None = None) -> T:
        """Add ``entry`` under ``name`` (default: its ``name`` attribute); returns it, so that
        this also works as a class decorator."""
        key = name or getattr(entry, "name", None)
        if not key or not key.isidentifier():
            raise ValueError(f"a {self.kind} needs a name that a spec can write, got {key!r}")
        if key in self._entries and self._entries[key] is not entry:
            raise PluginError(f"{self.kind} '{key}' is registered twice ({_origin(self._entries[key])} "
                              f"and {_origin(entry)})")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive sessions that register their own)."""
        self._entries.pop(name, None)

    # ------------------------------------------------------------ reading

    def _table(self) -> dict[str, T]:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first, so that a plugin that reads the registry does not recurse
            for point in importlib.metadata.entry_points(group=self.group):
                self._load(point)
        return self._entries

    def _load(self, point) -> None:
        try:
            entry = point.load()
        except Exception as error:  # a broken plugin is the user's to fix: say which and why
            raise PluginError(f"the {self.kind} plugin '{point.name} = {point.value}' (entry point group "
                              f"{self.group}) failed to load: {type(error).__name__}: {error}") from None
        declared = getattr(entry, "name", point.name)
        if declared != point.name:
            raise PluginError(f"the {self.kind} plugin '{point.name} = {point.value}' names itself "
                              f"'{declared}': the entry point's name must be the same word")
        self.register(entry, point.name)

    def __getitem__(self, name: str) -> T:
        return self._table()[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._table().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table()))

    def __len__(self) -> int:
        return len(self._table())

    def names(self) -> tuple[str, ...]:
        return tuple(self._table())

    def items(self):
        return list(self._table().items())

    def values(self):
        return list(self._table().values())

    def keys(self):
        return self._table().keys()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _origin(entry) -> str:
    module = getattr(entry, "__module__", None) or type(entry).__module__
    return f"{module}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"
