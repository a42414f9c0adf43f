"""Spec file → :class:`Program` → dataset: the pipeline below training, runs and the API.

The compiler never opens data: :func:`compile_program` describes the spec's data source
(sample shape and classes, from file headers) and hands that to it.  The sources that
need trained runs (``stacked``) are registered by :mod:`energydsl.runs`, which every
entry point (the API, the CLI) imports first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from energydsl.compiler import DataCall, Program, compile_spec, spec_dir
from energydsl.data import Dataset, data_footprint, describe_source, load_data
from energydsl.lang.parser import parse, parse_file, parse_source_call
from energydsl.lang.spec import Spec


def read_spec(spec: str | Path) -> Spec:
    """A spec from a path, or from its source text (any string with a line break)."""
    if isinstance(spec, Path) or "\n" not in spec:
        return parse_file(spec)
    return parse(spec, "<spec>")


def compile_program(
    spec: str | Path | Spec,
    set: Mapping[str, object] | None = None,
    data: str | None = None,
    data_info: tuple | None = None,
) -> Program:
    """Parse and check a spec without allocating anything (``energydsl check``)."""
    parsed = spec if isinstance(spec, Spec) else read_spec(spec)
    data_node = parse_source_call(data) if data is not None else None
    # a data line's paths start from the spec's folder; data given here, where it is typed
    base = Path.cwd().resolve() if data is not None else spec_dir(parsed.path)

    def describe(call: DataCall):
        return describe_source(call.name, call.args, dict(call.kwargs), base_dir=base)

    program = compile_spec(parsed, set, data_node, data_info, describe_data=describe)
    program.data_dir = base if data is not None else None
    return program


def data_dir(program: Program) -> Path:
    """Where the relative paths of the program's data source start."""
    return program.data_dir or spec_dir(program.spec.path)


def load_dataset(program: Program, base_dir: Path | None = None) -> Dataset:
    """The data a compiled spec names; file paths are relative to ``base_dir`` (default: the working directory
    for data given on the command line or to ``load``, else the spec's folder)."""
    call = program.data
    base = base_dir or data_dir(program)
    return load_data(call.name, call.args, dict(call.kwargs), base_dir=base)


def dataset_footprint(program: Program, base_dir: Path | None = None) -> int | None:
    """The bytes :func:`load_dataset` will hold at its peak, from the data's headers (None: its source
    does not say); see :attr:`energydsl.data.Source.footprint`."""
    call = program.data
    base = base_dir or data_dir(program)
    return data_footprint(call.name, call.args, dict(call.kwargs), base_dir=base, batch=program.training.batch)
