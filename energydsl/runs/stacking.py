"""Trained layers as a plain feature extractor, and stacking one layer on another.

A run whose spec declares an encoder is a layer: raw samples → its code (for code maps
``[maps, rows, cols]``).  Its **features** are the L2-pooled code maps, √(Σ z²) over
non-overlapping pool×pool windows of each map (:func:`energydsl.ops.conv.l2_pool`).

- **Stacking.** The data source ``stacked(run, spec, pooling)`` gives those features of
  the run's own training and test samples (labels kept), so a second spec learns on
  the first layer's output.  The features come from the *encoder*, not from FISTA:
  one forward pass per sample (fast), and exactly what the exported network computes,
  so a layer-2 model sees at training time what it will see in use.
- **Export.** :func:`export` turns the run (and, through its ``stacked`` data source, the
  runs below it) into a plain :class:`torch.nn.Sequential` — encoder, L2 pooling,
  encoder, …, L2 pooling, flatten — from raw samples to a feature vector.  The CLI
  writes it as TorchScript (``torch.jit.trace``), which ``torch.jit.load`` reads
  without energydsl.

Run directories named by a ``stacked`` source are relative to the current directory
(where ``energydsl run`` writes ``runs/<model>``); its ``spec`` path, like data file
paths, is relative to the spec that names it.
"""

from __future__ import annotations

import ast
import itertools
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from energydsl.building import compile_program
from energydsl.compiler import spec_dir
from energydsl.data import DataError, Dataset, data_footprint, describe_source
from energydsl.data.base import Args, Source
from energydsl.errors import SpecError, UserError
from energydsl.expr.compiler import Env
from energydsl.ops.conv import l2_pool
from energydsl.runs import checkpoint
from energydsl.runs.directory import load_run, run_dataset

DEFAULT_POOL = 2


class ExportError(UserError):
    """A run that cannot be exported or stacked on (no encoder, a missing run, …)."""


class Encoder(nn.Module):
    """A trained run's encoder: raw samples ``(B, ...)`` → codes, ``(B, maps, rows, cols)`` for code maps.

    Holds copies of the encoder's parameters as buffers and replays the spec's compiled
    encoder expression, preprocessing (reshape, ℓ2-normalisation) included.
    """

    def __init__(self, model):
        super().__init__()
        program = model.program
        if program.encoder is None:
            raise ExportError(f"run of spec '{model.name}' has no encoder to export or stack on "
                              f"(declare one, e.g. 'encoder z = relu(conv(E, x))')")  # fmt: skip
        self.program = program
        for name, value in model.params.items():
            self.register_buffer(name, value.detach().clone())
        self.input_shape = tuple(program.input.shape)
        self.output_shape = tuple(program.latent.layout or program.latent.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape((x.shape[0],) + self.input_shape).to(self._reference_dtype())
        if self.program.normalize == "l2":
            flat = x.flatten(1)
            x = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(x)
        tensors = {name: buffer for name, buffer in self.named_buffers()}
        tensors.update({self.program.input.name: x, "batch_size": x.shape[0], "reference": x})
        z = self.program.encoder(Env(tensors))
        return z.reshape((x.shape[0],) + self.output_shape)

    def _reference_dtype(self) -> torch.dtype:
        return next(self.buffers()).dtype


class L2Pool(nn.Module):
    """√(Σ z²) over non-overlapping size×size windows of each map of ``(B, maps, rows, cols)``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return l2_pool(z, self.size) if self.size > 1 else z

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---------------------------------------------------------------- the chain of runs


def _run_directory(path: str | Path) -> Path:
    directory = Path(path)
    if not (directory / "model.json").is_file():
        raise ExportError(f"{directory}: not a trained run directory (no model.json); train it first "
                          "with 'energydsl run SPEC'")  # fmt: skip
    return directory


def _stacked_on(directory: Path) -> tuple[Path, int] | None:
    """The run (and pool size) that the run in ``directory`` was trained on, if it is stacked."""
    data = checkpoint.read_meta(directory).get("data", "")  # as DataCall.text() wrote it
    call = _parse_call(data)
    if call is None or call[0] != "stacked":
        return None
    args = _bind_stacked(*call[1:])
    return _run_directory(args["run"]), args["pooling"]


def _parse_call(text: str):
    """``stacked('runs/a', pooling=2)``, as model.json records a data source (``DataCall.text``) →
    ("stacked", args, kwargs); None for anything else."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return None
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        return None
    return node.func.id, args, kwargs


def _bind_stacked(args: tuple, kwargs: dict) -> dict:
    return {"spec": None, "pooling": DEFAULT_POOL, **dict(zip(("run", "spec", "pooling"), args)), **kwargs}


def layers(directory: str | Path) -> list[nn.Module]:
    """Encoder and pooling modules from raw samples to the code of the run in ``directory``
    (no pooling after it): the runs it is stacked on first."""
    directory = _run_directory(directory)
    below = _stacked_on(directory)
    modules = [*layers(below[0]), L2Pool(below[1])] if below is not None else []
    return modules + [Encoder(load_run(directory))]


def export(*directories: str | Path, pool: int | None = None) -> nn.Sequential:
    """The trained layers as one ``nn.Sequential``: raw samples → the L2-pooled features of the last run.

    A run trained on ``stacked(...)`` data brings the runs below it, so exporting the
    layer-2 run gives image → layer-1 encoder → L2 pooling → layer-2 encoder → L2
    pooling (``pool``×``pool`` windows) → flatten.  Naming the lower runs too
    (``export("runs/layer1", "runs/layer2")``) is allowed when each is the one the next
    is stacked on.  ``pool`` defaults to 2 for code maps and to 1 (no pooling) for a vector
    latent such as DrSAE's.
    """
    if not directories:
        raise ExportError("export needs at least one run directory")
    if pool is not None and pool < 1:
        raise ExportError(f"pool must be at least 1, got {pool}")
    for lower, upper in itertools.pairwise(directories):
        below = _stacked_on(_run_directory(upper))
        if below is None or below[0].resolve() != _run_directory(lower).resolve():
            raise ExportError(f"{upper} is not stacked on {lower}: list the runs from the first layer up")
    modules = layers(directories[-1])
    last = modules[-1]
    if pool is None:
        pool = DEFAULT_POOL if len(last.output_shape) == 3 else 1
    if pool > 1 and len(last.output_shape) != 3:
        raise ExportError(f"{directories[-1]}: L2 pooling needs code maps, this latent is a vector; use pool = 1")
    network = nn.Sequential(*modules, L2Pool(pool), nn.Flatten())
    return network.eval()


def sample_shape(directory: str | Path) -> tuple[int, ...]:
    """The shape of one raw sample of the bottom run of ``directory``'s chain."""
    directory = _run_directory(directory)
    while (below := _stacked_on(directory)) is not None:
        directory = below[0]
    return tuple(checkpoint.read_meta(directory)["sample_shape"])


def to_torchscript(network: nn.Sequential, shape: tuple[int, ...], path: str | Path) -> Path:
    """Trace ``network`` on raw samples of ``shape`` and save it; checks it on another batch size."""
    example = torch.zeros((2,) + tuple(shape))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still loads everywhere torch does
        traced = torch.jit.trace(network, example, check_trace=False)
        probe = torch.randn((3,) + tuple(shape), generator=torch.Generator().manual_seed(0)).abs()
        if not torch.allclose(traced(probe), network(probe), rtol=1e-4, atol=1e-5):
            raise ExportError("this encoder depends on the batch size in a way tracing cannot keep "
                              "(a recurrent encoder?); it cannot be exported as TorchScript")  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


# ---------------------------------------------------------------- the data source


def stacked(run: str, spec: str | None = None, pooling: int = DEFAULT_POOL, *, base_dir: Path | None = None) -> Dataset:
    """The L2-pooled output of another trained run: stacking a layer on another.

    Each training and test sample of the run's own data goes through the run's encoder
    (its code maps), then √(Σ z²) over non-overlapping ``pooling``×``pooling`` windows of each
    map; labels are kept.  Samples are ``[maps, rows / pooling, cols / pooling]``.

    Args:
        run: the trained run directory, relative to the current directory (where
            ``energydsl run`` writes ``runs/<model>``).
        spec: the spec that run trains (relative to this spec, like data files): lets
            ``energydsl check`` find the sample shape before the run exists.
        pooling: the side of the pooling windows (1: no pooling).
        base_dir: directory that ``spec`` is relative to; supplied by energydsl, not by
            the spec.
    """
    _check_stacked(run, spec, pooling)
    directory = _existing_run(run, spec, base_dir)
    network = nn.Sequential(*layers(directory), L2Pool(pooling)).eval()
    source = run_dataset(directory, load_run(directory))
    if not isinstance(source.x_train, torch.Tensor):
        raise DataError(f"data source 'stacked': run '{run}' streams its samples from disk ({source.name}); "
                        "stacking would hold the features of all of them in memory")  # fmt: skip

    empty = torch.zeros((0,) + _pooled_shape(network[-2].output_shape, pooling))

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # in chunks: code maps of a whole dataset at once would not fit
            return torch.cat([network(x[i : i + 512]) for i in range(0, x.shape[0], 512)] or [empty])

    return Dataset(
        name=f"stacked:{run}",
        x_train=features(source.x_train),
        x_test=features(source.x_test),
        y_train=source.y_train,
        y_test=source.y_test,
        num_classes=source.num_classes,
    )


def _check_stacked(run, spec, pooling) -> None:
    args = Args("stacked")
    args.path("run", run)
    args.path("spec", spec, optional=True)
    args.integer("pooling", pooling, 1, 64)


def describe_stacked(run: str, spec: str | None, pooling: int, *, base_dir: Path | None):
    """(sample shape, classes) of :func:`stacked`, from the run's files, or from its spec
    when it has not been trained yet (so that ``energydsl check`` works before training)."""
    program, data_dir = _program_below(run, spec, base_dir)
    shape = tuple(program.latent.layout or program.latent.shape)
    return _pooled_shape(shape, pooling), _classes_of(program, data_dir)


def footprint_stacked(batch: int, run: str, spec: str | None, pooling: int, *, base_dir: Path | None) -> int:
    """The data of the run below, as its own source holds it, and the features beside it: that many
    bytes again, scaled by a feature's values over a sample's (the code maps go through in chunks)."""
    program, data_dir = _program_below(run, spec, base_dir)
    shape = _pooled_shape(tuple(program.latent.layout or program.latent.shape), pooling)
    call = program.data
    below = data_footprint(call.name, call.args, dict(call.kwargs), base_dir=data_dir, batch=batch) or 0
    return below + below * math.prod(shape) // math.prod(program.sample_shape)


def _program_below(run: str, spec: str | None, base_dir: Path | None):
    """The program of the run to stack on (from its files, else from its spec) and the folder its
    data paths start from."""
    directory = Path(run)
    if (directory / "model.json").is_file():
        program = load_run(directory).program
        data_dir = spec_dir(checkpoint.read_meta(directory)["spec_path"])
    elif spec is not None:
        path = (base_dir or Path.cwd()) / spec
        if not path.is_file():
            raise DataError(f"data source 'stacked': spec file '{spec}' not found (looked at {path})")
        try:
            program = compile_program(path)
        except SpecError as error:  # about the other spec: its own location, in one line
            raise DataError(f"data source 'stacked': {error.render().splitlines()[0]}") from None
        data_dir = spec_dir(str(path))
    else:
        raise _missing_run(run, spec, base_dir)
    if program.encoder is None:
        raise DataError(f"data source 'stacked': spec '{program.name}' has no encoder to stack on")
    return program, data_dir


STACKED = Source("stacked", load=stacked, describe=describe_stacked, check=_check_stacked, paths=("spec",),
                 footprint=footprint_stacked)
"""The ``stacked`` data source, registered in :data:`energydsl.data.SOURCES` by :mod:`energydsl.runs`."""


def _classes_of(program, base_dir: Path) -> int | None:
    """The classes of the labels of a run's data (its spec may not declare the label)."""
    call = program.data
    return describe_source(call.name, call.args, dict(call.kwargs), base_dir=base_dir)[1]


def _pooled_shape(shape: tuple[int, ...], pool: int) -> tuple[int, ...]:
    if len(shape) != 3:
        if pool > 1:
            raise DataError("data source 'stacked': L2 pooling needs code maps [maps, rows, cols]; "
                              "this run's latent is a vector (use pool = 1)")  # fmt: skip
        return shape
    maps, rows, cols = shape
    if rows < pool or cols < pool:
        raise DataError(f"data source 'stacked': pool = {pool} is larger than the {rows}x{cols} code maps")
    return (maps, rows // pool, cols // pool)


def _existing_run(run: str, spec: str | None, base_dir: Path | None = None) -> Path:
    directory = Path(run)
    if not (directory / "model.json").is_file():
        raise _missing_run(run, spec, base_dir)
    return directory


def _shown(path: Path) -> str:
    """A path as a user would type it here: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _missing_run(run: str, spec: str | None, base_dir: Path | None = None) -> DataError:
    how = f"energydsl run {_shown(Path(base_dir or Path.cwd()) / spec)}" if spec else "energydsl run SPEC"
    return DataError(f"data source 'stacked': run directory '{run}' not found (relative to {Path.cwd()}); "
                     f"train the first layer with '{how}'")  # fmt: skip

