"""The public API: load a spec, train it, write and read run directories.

The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from energydsl.building import compile_program, dataset_footprint, load_dataset, read_spec
from energydsl.data import Dataset
from energydsl.errors import RunError
from energydsl.model import EnergyModel
from energydsl.reporting.amortisation import GAP_FILE, GAP_PICTURE, GAP_SAMPLES, amortisation_gap, gap_png
from energydsl.reporting.analysis import run_metrics
from energydsl.reporting.recovery import recovery_metrics
from energydsl.reporting.report import REPORT_FILE, write_report
from energydsl.reporting.resources import check_fits
from energydsl.reporting.viz import write_pictures
from energydsl.runs import checkpoint, guard
from energydsl.runs.directory import load_run, run_dataset
from energydsl.training.distributed import SINGLE, Workers
from energydsl.training.loop import check_enough_data, initial_state
from energydsl.training.loop import train as _train_loop
from energydsl.training.metrics import held_out

__all__ = ["compile_program", "evaluate_run", "gap_run", "load", "load_dataset", "load_run", "plot_run", "read_spec",
           "run_dataset", "train"]

DEFAULT_CHECKPOINT_EVERY = 200  # steps; a checkpoint also follows every epoch
ANALYSIS_SAMPLES = 4096  # held-out samples whose firings feed the analyses and pictures


def load(
    spec: str | Path,
    set: Mapping[str, object] | None = None,
    *,
    data: str | Dataset | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> EnergyModel:
    """Compile a spec (a path or source text) into an initialised :class:`EnergyModel`.

    ``set`` overrides named constants (``{"lam": 0.05}``); ``data`` replaces the
    spec's data source, by name (``"patches(size=8)"``; a relative file path starts from the
    working directory, where in the spec's data line it starts from the spec's folder) or as a
    :class:`Dataset`.
    The dataset is kept as ``model.dataset`` for :func:`train`.
    """
    if isinstance(data, Dataset):
        program = compile_program(spec, set, data_info=data.description)
        check_fits(program, samples=0)  # the data is loaded, so the memory still available excludes it
        dataset = data
    else:
        program = compile_program(spec, set, data)
        check_fits(program, samples=0, data_bytes=dataset_footprint(program))  # before the data is read
        dataset = load_dataset(program)
    model = EnergyModel(program, dataset.x_train, seed=seed)  # samples on disk: initialisers read a sample
    model.dataset = dataset
    model.overrides = {k: float(v) for k, v in (set or {}).items()}
    model.data_text = data if isinstance(data, str) else None
    return model.to(device) if device is not None else model


def train(
    model: EnergyModel,
    data: Dataset | str | None = None,
    *,
    out: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    seed: int | None = None,
    resume: bool = False,
    force: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    workers: Workers = SINGLE,
) -> list[dict]:
    """Train through the spec's phases; with ``out``, write a run directory as it goes.

    The run directory's checkpoint is rewritten every ``checkpoint_every`` steps
    (0: only after each epoch), after every epoch and on Ctrl-C; ``resume=True``
    continues from it.  ``on_step(done, total, energy)`` follows every step.
    With several ``workers`` (:mod:`energydsl.training.distributed`) only rank 0 writes.
    Returns one metrics dict per epoch (on rank 0).

    ``out`` is refused (:class:`RunError`) when another run is writing it, when it
    holds a run already — unless ``resume=True`` continues it, or ``force=True`` starts
    over and moves the old run to ``OUT.old-N`` (said on stderr) — and when it holds
    files that are not a run's.  A write that fails (a full disk, a read-only
    directory) raises a :class:`RunError` that names the file; the last good
    checkpoint stays.
    """
    dataset = _dataset_for(model, data)
    if out is None and resume:
        raise RunError("resume needs the run directory to resume (out=...)")
    check_enough_data(model, dataset)  # before anything is written
    state = initial_state(model, seed)
    writer = _RunWriter(Path(out), model) if out is not None else None
    refusal = None
    if writer is not None and workers.main:  # only rank 0 writes, so only rank 0 holds the lock
        try:
            writer.claim(resume=resume, force=force)
        except RunError as error:
            refusal = error
    if workers.any(refusal is not None):  # every worker stops, not only rank 0
        raise refusal or RunError(f"{out}: rank 0 could not take the run directory")
    try:
        return _train_into(model, dataset, writer, state, resume, on_epoch, on_step, checkpoint_every, workers)
    finally:
        if writer is not None:
            writer.release()


def _train_into(model, dataset, writer, state, resume, on_epoch, on_step, checkpoint_every, workers) -> list[dict]:
    if resume:
        checkpoint.load_state(writer.directory, model, state, writer.source)  # every worker reads it
        writer.saved_step = state.step
        workers.barrier()  # before rank 0 may overwrite it
    if not workers.main:
        writer = None
    if writer is not None:
        writer.start(state.history)

    def each_epoch(metrics: dict) -> None:
        if writer is not None:
            writer.epoch(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    history = _train_loop(model, dataset, on_epoch=each_epoch, on_step=on_step, state=state, workers=workers,
                          checkpoint_every=checkpoint_every, on_checkpoint=writer.checkpoint if writer else None)  # fmt: skip
    if writer is not None:
        with writer.writing():
            summary = {"spec": model.name, "epochs": len(history), **_final_metrics(model, dataset, writer.directory,
                                                                                   history, writer.source)}  # fmt: skip
            summary["seconds"] = round(sum(m["seconds"] for m in history), 3)
            checkpoint.atomic_write_json(writer.directory / checkpoint.SUMMARY_FILE, summary)
    return history


def _final_metrics(model: EnergyModel, dataset: Dataset, directory: Path | None, history, source) -> dict:
    """Held-out metrics and analyses (with feature recovery where the data know the truth); with a
    directory, also its pictures and report.html.

    One pass of inference over the held-out set: it keeps where the codes fire (sparse, bounded:
    :func:`held_out`) for the analyses (the first ANALYSIS_SAMPLES samples) and the recovery metrics
    (every held-out sample, where the data know their true codes).
    """
    keep = dataset.x_test.shape[0] if "codes_test" in dataset.extras else 0
    measured = held_out(model, dataset, keep=max(keep, ANALYSIS_SAMPLES))
    analysed = measured.firing[:ANALYSIS_SAMPLES]
    notes: list[str] = []
    samples = dataset.x_test.shape[0] or dataset.x_train.shape[0]
    if analysed.shape[0] < min(samples, ANALYSIS_SAMPLES):
        notes.append(f"analyses and pictures from the first {analysed.shape[0]:,} held-out samples (their firings "
                     "fill the bound on what is kept)")  # fmt: skip
    metrics = {**measured.metrics, **run_metrics(model, analysed, notes),
               **recovery_metrics(model, dataset, firing=measured.firing, notes=notes)}  # fmt: skip
    if directory is not None:
        pictures = write_pictures(model, directory, history, analysed, measured.density)
        write_report(directory, {"spec": model.name, **metrics}, history, pictures, source, notes)
    return metrics


def _dataset_for(model: EnergyModel, data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        program = compile_program(model.program.spec, model.program.constants, data)
        return load_dataset(program)
    dataset = getattr(model, "dataset", None)
    if dataset is None:
        raise ValueError("no data: pass data=... or build the model with energydsl.load()")
    return dataset


class _RunWriter:
    """Keeps a run directory current: metrics and model after every epoch, the checkpoint as asked."""

    def __init__(self, directory: Path, model: EnergyModel):
        self.directory = directory
        self.model = model
        overrides = getattr(model, "overrides", {})
        self.source = checkpoint.resolved_source(model.program, overrides, getattr(model, "data_text", None))
        self.lines: list[str] = []
        self.lock: guard.RunLock | None = None
        self.saved_step: int | None = None  # the step of the last checkpoint on disk, when known

    def claim(self, resume: bool, force: bool) -> None:
        """Lock the directory for this run (see :func:`energydsl.runs.guard.claim`)."""
        self.lock, moved = guard.claim(self.directory, resume=resume, force=force)
        if moved is not None:
            print(guard.moved_note(self.directory, moved), file=sys.stderr)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    @contextmanager
    def writing(self):
        """A write that fails becomes one line: the file, why, and the last good checkpoint."""
        try:
            yield
        except OSError as error:
            raise guard.disk_error(error, self.directory, self.saved_step) from None

    def start(self, history: list[dict]) -> None:
        """Begin (or, resuming, continue) with the epochs already done."""
        with self.writing():
            self.directory.mkdir(parents=True, exist_ok=True)
            self.lines = [json.dumps(metrics, sort_keys=True) for metrics in history]
            self._write_metrics()
            checkpoint.save_model(self.directory, self.model, self.source)

    def epoch(self, metrics: dict) -> None:
        with self.writing():
            self.lines.append(json.dumps(metrics, sort_keys=True))
            self._write_metrics()
            checkpoint.save_model(self.directory, self.model, self.source)

    def checkpoint(self, state) -> None:
        with self.writing():
            checkpoint.save_state(self.directory, self.model, state, self.source)
        self.saved_step = state.step

    def _write_metrics(self) -> None:
        text = "".join(line + "\n" for line in self.lines)
        checkpoint.atomic_write(self.directory / checkpoint.METRICS_FILE, text.encode())


def evaluate_run(directory: str | Path, data: str | Dataset | None = None) -> dict:
    """The held-out metrics of a trained run, without retraining (``energydsl eval``).

    ``data`` replaces the data the run trained on (e.g. when it has moved), see :func:`run_dataset`.
    """
    model = load_run(directory)
    return _final_metrics(model, run_dataset(directory, model, data), None, None, None)


def plot_run(directory: str | Path, data: str | Dataset | None = None) -> list[Path]:
    """Rewrite a run's pictures and report.html (``energydsl plot``); returns the files written."""
    directory = Path(directory)
    model = load_run(directory)
    source = checkpoint.read_meta(directory)["spec_source"]
    _final_metrics(model, run_dataset(directory, model, data), directory, _history(directory), source)
    return sorted(directory.glob("*.png")) + [directory / REPORT_FILE]


def _history(directory: Path) -> list[dict]:
    metrics_file = directory / checkpoint.METRICS_FILE
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line] if metrics_file.exists() else []


def gap_run(directory: str | Path, data: str | Dataset | None = None, samples: int = GAP_SAMPLES) -> dict:
    """The amortisation gap of a trained run's encoder (``energydsl gap``, see
    :mod:`energydsl.reporting.amortisation`): its figures, also written into the run directory
    (``amortisation.json``, ``amortisation.png``) and as a section of its report.html."""
    directory = Path(directory)
    model = load_run(directory)
    figures, energies = amortisation_gap(model, run_dataset(directory, model, data), samples)
    checkpoint.atomic_write_json(directory / GAP_FILE, figures)
    gap_png(energies, directory / GAP_PICTURE, bool(figures["amortisation.certified"]))
    summary_file = directory / checkpoint.SUMMARY_FILE
    if summary_file.exists():  # the report as the run left it, with the section added
        summary = json.loads(summary_file.read_text())
        pictures = [path for path in sorted(directory.glob("*.png")) if path.name != GAP_PICTURE]
        write_report(directory, summary, _history(directory), pictures, checkpoint.read_meta(directory)["spec_source"])
    return figures
