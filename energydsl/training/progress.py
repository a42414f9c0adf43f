"""Where a training run reports as it goes: the terminal, and TensorBoard if asked.

On a terminal, a live bar per epoch shows the batches done and the running mean
energy; after each epoch one line gives the epoch's held-out metrics.  Piped to a
file or a CI log, only those lines are printed.  ``metrics.jsonl`` in the run
directory is written whatever is shown here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from energydsl.errors import UserError


def format_epoch(metrics: dict, total: int) -> str:
    """One line: epoch, phase, the ramped constants' values, energy and each term, L0, reconstruction
    error, FVU and test error, the dead units (when any), the share of training samples whose inference
    stopped at its step cap (when any did), time."""
    parts = [f"epoch {metrics['epoch']}/{total} [{metrics['phase']}]"]
    parts += [f"{key[9:]} {value:.4g}" for key, value in metrics.items() if key.startswith("schedule.")]
    parts.append(f"energy {metrics['energy']:.4g}")
    parts += [f"{key[5:]} {value:.4g}" for key, value in metrics.items() if key.startswith("term.")]
    parts.append(f"L0 {metrics['l0']:.3g}")
    for key in ("recon_error", "fvu", "test_error"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4g}")
    if metrics.get("units.dead"):
        parts.append(f"dead {metrics['units.dead']}")
    if metrics.get("infer.capped"):
        parts.append(f"infer capped {metrics['infer.capped']:.1%}")
    parts.append(f"({metrics['seconds']:.1f} s)")
    return "  ".join(parts)


def dead_alarm_line(metrics: dict) -> str | None:
    """The warning of an epoch whose share of dead units passed the spec's ``warn dead above``, else None."""
    share = metrics.get("units.dead_alarm")
    if share is None:
        return None
    return (f"energydsl: warning: epoch {metrics['epoch']}: {metrics['units.dead']} units ({share:.1%}) are dead, "
            "silent on every training sample of the 'dead after' window; try a lower learning rate, "
            "'resample dead every N steps' in the train block, an auxk term, or a smaller sparsity weight")  # fmt: skip


class ConsoleProgress:
    """A rich progress bar on a terminal, plain epoch lines elsewhere, nothing when quiet; the
    dead-unit alarm of an epoch on stderr (``errors``), quiet or not."""

    def __init__(self, epochs: int, quiet: bool = False, console: Console | None = None,
                 errors: Console | None = None):  # fmt: skip
        self.epochs = epochs
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.errors = errors or Console(stderr=True, highlight=False)
        self.live = not quiet and self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.finished = 0  # epochs done
        self.energy_sum = 0.0

    def __enter__(self) -> ConsoleProgress:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("energy {task.fields[energy]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )  # fmt: skip
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def step(self, done: int, total: int, energy: float) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.energy_sum = 0.0
            self.task = self.progress.add_task(f"epoch {self.finished + 1}/{self.epochs}", total=total, energy="")
        self.energy_sum += energy
        self.progress.update(self.task, completed=done, energy=f"{self.energy_sum / done:.4g}")

    def epoch(self, metrics: dict) -> None:
        self.finished = metrics["epoch"]
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if not self.quiet:
            self.console.print(format_epoch(metrics, self.epochs), soft_wrap=True, markup=False, highlight=False)
        alarm = dead_alarm_line(metrics)
        if alarm is not None:
            self.errors.print(alarm, soft_wrap=True, markup=False, highlight=False)


class TensorBoardLog:
    """Per-step energy and per-epoch metrics as TensorBoard scalars (``pip install energydsl[tensorboard]``)."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'energydsl[tensorboard]'") from None
        self.directory = directory
        self.summary_writer = SummaryWriter
        self._writer = None  # opened at the first value: by then the run has claimed its directory
        self.steps = 0

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self.summary_writer(log_dir=str(self.directory))
        return self._writer

    def step(self, done: int, total: int, energy: float) -> None:
        self.steps += 1
        self.writer.add_scalar("train/energy", energy, self.steps)

    def epoch(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "seconds"):
                self.writer.add_scalar(f"test/{key}", value, metrics["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
