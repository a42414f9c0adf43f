"""energydsl: a small language for energy-based sparse models, compiled to PyTorch.

    model = energydsl.load("specs/sparse_coding.energy", set={"lam": 0.1})
    z = model.infer(x)
    e = model.energy(x, z)

Importing the package loads nothing heavy: each public name is imported from the
module that defines it on first use (PEP 562), so ``import energydsl`` and the
command line's ``--help`` stay fast and never touch matplotlib's settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from energydsl._version import __version__ as __version__  # re-exported

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below imports these on first use
    from energydsl.api import compile_program, load, load_run, train
    from energydsl.data import DataError, Dataset
    from energydsl.errors import RunError, SpecError, UserError
    from energydsl.model import EnergyModel
    from energydsl.runs.stacking import export

# public name -> the module that defines it
_EXPORTS = {
    "compile_program": "energydsl.api",
    "gap_run": "energydsl.api",
    "load": "energydsl.api",
    "load_run": "energydsl.api",
    "train": "energydsl.api",
    "Dataset": "energydsl.data",
    "DataError": "energydsl.data",
    "InferenceCapWarning": "energydsl.errors",
    "RunError": "energydsl.errors",
    "SpecError": "energydsl.errors",
    "UserError": "energydsl.errors",
    "EnergyModel": "energydsl.model",
    "export": "energydsl.runs.stacking",
}

__all__ = [
    "DataError",
    "Dataset",
    "EnergyModel",
    "InferenceCapWarning",
    "RunError",
    "SpecError",
    "UserError",
    "compile_program",
    "export",
    "gap_run",
    "load",
    "load_run",
    "train",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
