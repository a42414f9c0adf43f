"""A trained run directory read back: its model, and the data it trained on."""

from __future__ import annotations

from pathlib import Path

import torch

from energydsl.building import load_dataset
from energydsl.compiler import compile_spec, spec_dir
from energydsl.data import Dataset
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
        program = compile_spec(spec, data_info=(tuple(meta["sample_shape"]), meta["num_classes"]))
    except SpecError as error:
        raise RunError(f"{directory}: the saved spec does not compile: {error}") from None
    model = EnergyModel(program, train_x=None)
    tensors = checkpoint.load_tensors(directory, program, meta)
    with torch.no_grad():
        for name, tensor in tensors.items():
            model.params[name].copy_(tensor)
    return model.to(device) if device is not None else model


def run_dataset(directory: str | Path, model: EnergyModel | None = None) -> Dataset:
    """The data a run trained on, as its saved spec names it.

    A data file's relative path is read from the folder of the spec the run started from.
    """
    model = model if model is not None else load_run(directory)
    meta = checkpoint.read_meta(Path(directory))
    return load_dataset(model.program, spec_dir(meta["spec_path"]))
