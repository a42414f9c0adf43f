"""energydsl: a small language for energy-based sparse models, compiled to PyTorch.

    model = energydsl.load("specs/sparse_coding.energy", set={"lam": 0.1})
    z = model.infer(x)
    e = model.energy(x, z)
"""

__version__ = "0.1.0"

from energydsl.api import compile_program, load, load_run, train
from energydsl.data import Dataset, DataError
from energydsl.errors import RunError, SpecError, UserError
from energydsl.model import EnergyModel
from energydsl.runs.stacking import export

__all__ = [
    "DataError",
    "Dataset",
    "EnergyModel",
    "RunError",
    "SpecError",
    "UserError",
    "compile_program",
    "export",
    "load",
    "load_run",
    "train",
]
