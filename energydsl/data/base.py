"""What every data source shares: :class:`Dataset`, :class:`DataError`, the registry and the calls.

A spec names its data as ``source(args...)``; :func:`load_data` looks the source up in
:data:`SOURCES`, checks the arguments and returns a :class:`Dataset` of float32 tensors.
:func:`describe_source` answers the cheaper question "what shape are the samples and how
many classes are there?" (reading file headers only) so that ``energydsl check`` can
resolve sizes taken from the data without loading it.

Every mistake a user can make here raises :class:`DataError` with a one-line message
naming the source or file and what was expected.  Everything is deterministic: random
sources draw from ``numpy.random.default_rng(seed)``.

Split convention for data without its own test split (MNIST and user files): the test
set is every sample whose index ``i % 5 == 0``, the training set is all the others.  (The
two halves of the MNIST test set come from different writers, so a contiguous split
would be biased.)
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from energydsl.errors import UserError
from energydsl.registry import Registry

__all__ = ["SOURCES", "DataError", "Dataset", "Samples", "Source", "data_footprint", "describe_source", "load_data"]



class Description(NamedTuple):
    """What :func:`describe_source` answers without loading the data."""

    sample_shape: tuple[int, ...]
    classes: int | None  # None: unlabelled
    target_shape: tuple[int, ...] | None = None  # the shape of one target of paired data (None: no targets)


class DataError(UserError):
    """A user mistake in data: message is ONE line naming the file/source and what was expected."""

    def __init__(self, message: str):
        # Text from elsewhere (paths, library messages) must not break the one-line promise.
        super().__init__(" ".join(line.strip() for line in str(message).splitlines()))


class Samples(Protocol):
    """Samples that stay on disk until asked for (:class:`energydsl.data.streamed.StreamedSamples`):
    indexed like a float32 tensor ``(count, *sample_shape)``, ``x[index]`` reads those samples."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of float32 sample tensors with optional int64 class labels and, for paired data
    (a transcoder's), optional float32 targets: one per sample, in the same order.

    ``extras`` carries source-specific tensors such as the ground-truth dictionary of
    synthetic data or the whitening matrix of image patches.  (``eq=False``: tensors
    have no single truth value, so datasets compare by identity.)  The training samples of
    a set too large for memory (the ``shards`` source) are :class:`Samples` read on demand.
    """

    name: str
    x_train: torch.Tensor | Samples
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    target_train: torch.Tensor | None = None
    target_test: torch.Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(784,)`` for MNIST."""
        return tuple(self.x_train.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...] | None:
        """The shape of one target (None: the data have no targets)."""
        return None if self.target_train is None else tuple(self.target_train.shape[1:])

    @property
    def description(self) -> Description:
        """What :func:`describe_source` would answer for these data."""
        return Description(self.sample_shape, self.num_classes, self.target_shape)

# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Source:
    """One data source: the word a spec writes after ``data`` and everything asked of it.

    ``load`` makes the :class:`Dataset`.  Its positional-or-keyword parameters are what a
    spec may pass (with the spec's defaults), and its docstring, with an ``Args:`` section
    naming every one of them, is the source's entry in the language reference.  Its
    keyword-only parameters (``base_dir``: where relative paths start) are context that the
    caller supplies, never the spec.  ``check`` takes the spec's arguments by name and
    raises :class:`DataError` for a bad value; ``describe`` takes what ``load`` takes and
    returns (sample shape, classes[, target shape]) without loading the data.  :func:`load_data` and
    :func:`describe_source` run ``check`` first; ``load``, which Python code may call
    directly, checks its arguments itself.  ``paths`` names the arguments that are file
    paths relative to ``base_dir``: a run directory records them as absolute paths.
    ``footprint`` takes the training batch and what ``load`` takes, and returns the bytes the
    load will hold at its peak, from what ``describe`` reads (headers, counts, types), so that
    a set that does not fit is refused before it is read; None: the source does not say.
    """

    name: str
    load: Callable[..., Dataset]
    describe: Callable[..., Description]
    check: Callable[..., object]
    paths: tuple[str, ...] = ()
    footprint: Callable[..., int] | None = None

    @property
    def doc(self) -> str:
        """The description of the source and its arguments (``load``'s docstring)."""
        return inspect.getdoc(self.load) or ""

    @property
    def parameters(self) -> list[inspect.Parameter]:
        """What a spec may pass, in order, with its defaults."""
        return [p for p in inspect.signature(self.load).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]

    @property
    def context(self) -> list[str]:
        """The keyword-only parameters that the caller supplies (``base_dir``)."""
        return [p.name for p in inspect.signature(self.load).parameters.values() if p.kind is p.KEYWORD_ONLY]


SOURCES: Registry[Source] = Registry("data source", "energydsl.data")
"""Every data source by name: the built-in ones are registered in :mod:`energydsl.data`; the
``stacked`` source (which needs trained runs, so it lives in :mod:`energydsl.runs.stacking`)
arrives through the package's own ``energydsl.data`` entry point, as a plugin's would."""


# --------------------------------------------------------------------------- arguments


class Args:
    """Checks one source's argument values, naming the source in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, name: str, expected: str, value: object) -> None:
        raise DataError(
            f"data source '{self.source}': argument '{name}' must be {expected}, got {value!r}"
        )

    def integer(self, name: str, value: object, lo: int, hi: int) -> None:
        is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not (is_int and lo <= value <= hi):
            self.fail(name, f"an integer in [{lo}, {hi}]", value)

    def real(self, name: str, value: object, lo: float, hi: float, *, hi_open: bool = False,
             lo_open: bool = False) -> None:
        is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        above = is_real and (value > lo if lo_open else value >= lo)
        below = is_real and (value < hi if hi_open else value <= hi)
        if not (above and below):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            self.fail(name, f"a number in {interval}", value)

    def boolean(self, name: str, value: object) -> None:
        if not isinstance(value, bool):
            self.fail(name, "true or false", value)

    def choice(self, name: str, value: object, choices: Sequence[str]) -> None:
        if value not in choices:
            self.fail(name, "one of " + ", ".join(f"'{c}'" for c in choices), value)

    def path(self, name: str, value: object, *, optional: bool = False) -> None:
        if optional and value is None:
            return
        if not (isinstance(value, (str, os.PathLike)) and str(value)):
            self.fail(name, "a file path" + (" or none" if optional else ""), value)

    def text(self, name: str, value: object) -> None:
        if not (isinstance(value, str) and value):
            self.fail(name, "a non-empty name", value)


def held_out(source: str, count: int, test: float) -> int:
    """How many of ``count`` samples the ``test`` fraction holds out; at least 2 must remain."""
    n_test = round(count * test)
    if count - n_test < 2:
        raise DataError(
            f"data source '{source}': argument 'test' must leave at least 2 training samples, "
            f"but test={test!r} of count={count} leaves {count - n_test}"
        )
    return n_test


def modulo_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The project's split: indices ``i % 5 != 0`` train, ``i % 5 == 0`` test."""
    is_test = np.arange(n) % 5 == 0
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def float_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor that owns a fresh copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def int_tensor(array: np.ndarray) -> torch.Tensor:
    """An int64 tensor that owns a fresh copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.int64))

def bundled(*parts: str) -> Traversable:
    """A bundled data file (an importlib.resources Traversable), independent of the cwd."""
    resource = files("energydsl") / "datasets"
    for part in parts:
        resource = resource / part
    return resource



# --------------------------------------------------------------------------- the calls


def _bind(name: str, args: Sequence, kwargs: Mapping[str, object] | None,
          base_dir: Path | None) -> tuple[Source, dict[str, object]]:
    """Look the source up, match the spec's arguments to its parameters (defaults filled in)
    and check them; the context the source asks for is added after the check."""
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(sorted(SOURCES))
        raise DataError(f"unknown data source '{name}'{hint} (known sources: {known})")
    source = SOURCES[name]
    public = source.parameters
    names = [p.name for p in public]
    if len(args) > len(public):
        raise DataError(
            f"data source '{name}' takes at most {len(public)} positional arguments "
            f"({', '.join(names)}), got {len(args)}"
        )
    bound = dict(zip(names, args))
    for key, value in (kwargs or {}).items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"data source '{name}' has no argument '{key}'{hint} "
                f"(its arguments: {', '.join(names)})"
            )
        if key in bound:
            raise DataError(f"data source '{name}': argument '{key}' given twice")
        bound[key] = value
    for parameter in public:
        if parameter.name not in bound:
            if parameter.default is parameter.empty:
                raise DataError(f"data source '{name}' needs argument '{parameter.name}'")
            bound[parameter.name] = parameter.default
    source.check(**bound)
    context = {"base_dir": base_dir}
    bound.update({key: context[key] for key in source.context if key in context})
    return source, bound


def load_data(name: str, args: Sequence = (), kwargs: Mapping[str, object] | None = None,
              base_dir: Path | None = None) -> Dataset:
    """Load data source ``name`` called with ``args`` and ``kwargs``.

    ``base_dir`` is where relative file paths start (the spec's directory).  Raises
    :class:`DataError` for an unknown source, unknown or missing arguments, bad values
    and unusable files.
    """
    source, bound = _bind(name, args, kwargs, base_dir)
    return source.load(**bound)


def describe_source(name: str, args: Sequence = (), kwargs: Mapping[str, object] | None = None,
                    base_dir: Path | None = None) -> Description:
    """The sample shape, number of classes (None: unlabelled) and target shape (None: no targets)
    that :func:`load_data` gives.

    Checks the arguments like :func:`load_data` but reads only file headers (and label
    files, which are small), so ``energydsl check`` can resolve sizes taken from the data.
    A source's ``describe`` may leave the target shape out (a source without targets).
    """
    source, bound = _bind(name, args, kwargs, base_dir)
    shape, classes, *target = source.describe(**bound)
    return Description(tuple(shape), classes, tuple(target[0]) if target and target[0] is not None else None)


def data_footprint(name: str, args: Sequence = (), kwargs: Mapping[str, object] | None = None,
                   base_dir: Path | None = None, batch: int = 1) -> int | None:  # fmt: skip
    """The bytes that :func:`load_data` will hold at its peak, trained with batches of ``batch``
    samples (None when the source does not say); reads what :func:`describe_source` reads."""
    source, bound = _bind(name, args, kwargs, base_dir)
    return source.footprint(batch, **bound) if source.footprint is not None else None
