"""energydsl: a small language for energy-based sparse models, compiled to PyTorch.

    model = energydsl.load("specs/sparse_coding.energy", set={"lam": 0.1})
    z = model.infer(x)
    e = model.energy(x, z)
"""

__version__ = "0.1.0"

from .api import compile_program, load, load_run, train  # noqa: E402
from .data import Dataset, DataError  # noqa: E402
from .errors import RunError, SpecError, UserError  # noqa: E402
from .model import EnergyModel  # noqa: E402
from .stacking import export  # noqa: E402

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
