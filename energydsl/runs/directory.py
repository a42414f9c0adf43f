"""A trained run directory read back: its model, and the data it trained on."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from energydsl.building import compile_program, load_dataset
from energydsl.compiler import compile_spec, spec_dir
from energydsl.data import DataError, Dataset, load_data
from energydsl.errors import RunError, SpecError
from energydsl.lang.parser import parse
from energydsl.model import EnergyModel
from energydsl.runs import checkpoint


def load_run(directory: str | Path, device: str | torch.device | None = None) -> EnergyModel:
    """The trained model of a run directory, without its data and without retraining."""
    directory = Path(directory)
    meta = checkpoint.read_meta(directory)
    source = meta.get("spec_source", "")
    try:
        spec = parse(source, str(directory / checkpoint.SPEC_FILE))
        program = compile_spec(spec, data_info=checkpoint.data_info(meta))
    except SpecError as error:
        raise RunError(f"{directory}: the saved spec does not compile: {error}") from None
    model = EnergyModel(program, train_x=None)
    tensors = checkpoint.load_tensors(directory, program, meta)
    with torch.no_grad():
        state = model.state
        for name, tensor in tensors.items():
            slot = name.removeprefix(checkpoint.STATE_KEY)
            (state[slot] if slot != name else model.params[name]).copy_(tensor)
    return model.to(device) if device is not None else model


def run_dataset(directory: str | Path, model: EnergyModel | None = None, data: str | Dataset | None = None) -> Dataset:
    """The data a run trained on, as its saved spec names it, or ``data`` in its place.

    The saved spec names its data files by absolute paths (older runs: relative to the
    folder of the spec the run started from).  ``data`` (a source such as
    ``'file("moved/mine.npz")'``, relative paths from the current folder, or a
    :class:`Dataset`) must have the samples' shape that the run trained on.
    """
    directory = Path(directory)
    model = model if model is not None else load_run(directory)
    program = model.program
    if data is None:
        try:
            return load_dataset(program, spec_dir(checkpoint.read_meta(directory)["spec_path"]))
        except DataError as error:
            raise RunError(f"{directory}: cannot load the data this run trained on: {error}; "
                           "if it has moved, pass it with --data SOURCE (data= in Python)") from None  # fmt: skip
    shown = data if isinstance(data, str) else "data"
    if isinstance(data, str):
        target_shape = program.target.shape if program.target is not None else None
        info = (program.sample_shape, program.classes, target_shape)  # the data is described below, by loading it
        try:
            call = compile_program(program.spec, program.constants, data, data_info=info).data
        except SpecError as error:
            raise RunError(error.render().splitlines()[0]) from None  # "--data:1:5: ..."
        data = load_data(call.name, call.args, dict(call.kwargs), base_dir=Path.cwd())
    if data.sample_shape != tuple(program.sample_shape):
        raise RunError(f"--data {shown}: samples of shape {list(data.sample_shape)}, but this run "
                       f"trained on samples of shape {list(program.sample_shape)}")  # fmt: skip
    if program.label is not None and data.num_classes is None:
        raise RunError(f"--data {shown}: has no labels, but this run's spec declares label {program.label.name}")
    target = program.target
    if target is not None and data.target_shape is None:
        raise RunError(f"--data {shown}: has no targets, but this run's spec declares target {target.name}")
    if target is not None and math.prod(data.target_shape) != math.prod(target.shape):
        raise RunError(f"--data {shown}: targets of shape {list(data.target_shape)}, but this run's target "
                       f"{target.name} is {list(target.shape)}")  # fmt: skip
    return data
