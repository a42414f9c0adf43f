"""The compiler: a parsed spec → a :class:`Program` (checked; closures, no tensors).

It never opens a data file: its caller passes the data's sample shape and class count.
"""

from energydsl.compiler.common import spec_dir
from energydsl.compiler.compile import compile_spec
from energydsl.compiler.program import DataCall, Method, ParamPlan, Phase, Program, Training, Variable
from energydsl.compiler.schedules import Schedule, finish_schedules, set_schedules

__all__ = ["DataCall", "Method", "ParamPlan", "Phase", "Program", "Schedule", "Training", "Variable", "compile_spec",
           "finish_schedules", "set_schedules", "spec_dir"]
