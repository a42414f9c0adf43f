"""The compiler: a parsed spec → a :class:`Program` (checked; closures, no tensors).

It never opens a data file: its caller passes the data's sample shape and class count.
"""

from energydsl.compiler.common import spec_dir
from energydsl.compiler.compile import compile_spec
from energydsl.compiler.program import DataCall, Method, ParamPlan, Phase, Program, Training, Variable

__all__ = ["DataCall", "Method", "ParamPlan", "Phase", "Program", "Training", "Variable", "compile_spec", "spec_dir"]
