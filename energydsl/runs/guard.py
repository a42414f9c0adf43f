"""Who may write a run directory: one run at a time, never over another run by accident.

- :func:`claim` takes the directory for a run: it refuses a directory that another
  run is writing (a ``flock`` on ``.lock`` inside it, held for the run's lifetime; the
  OS drops it when the process ends, even after ``kill -9``), a directory that holds a
  run already (unless resuming it, or ``force``, which moves the old run aside to
  ``DIR.old-N``), and a directory that holds files that are not a run's (``force``
  does not move those: they are the user's).
- :func:`disk_error` turns a failed write into one line that says which file, why,
  and where the last good checkpoint is.

With several workers only rank 0 writes, so only rank 0 claims the directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from energydsl.errors import RunError
from energydsl.runs.checkpoint import (
    CHECKPOINT_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    nothing_to_resume,
)

LOCK_FILE = ".lock"
# what a run writes: any one of these makes a directory a run
RUN_FILES = (SPEC_FILE, MODEL_FILE, META_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE)
# what a run may also leave (pictures, the report, TensorBoard's folder): a run's, but not a run alone
RUN_EXTRAS = ("report.html", "tensorboard")


class RunLock:
    """An exclusive ``flock`` on ``DIRECTORY/.lock``; :meth:`release` (or the process's end) drops it.

    The file goes when the lock is released (a run directory holds no lock file afterwards,
    only after ``kill -9``, where the next run takes it over); a run that locked a file
    being removed notices (it is no longer the file at that path) and locks the new one.
    """

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays
            except OSError as error:
                raise RunError(f"{directory}: cannot write in this directory ({error.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise RunError(f"{directory}: another run is writing to this directory{pid}; "
                               "wait for it to end, or choose another --out") from None  # fmt: skip
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we locked it: lock the new one
        self.fd: int | None = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            if _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)  # while still locked
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def claim(
    directory: Path, *, resume: bool = False, force: bool = False, hold: bool = True
) -> tuple[RunLock | None, Path | None]:
    """Take ``directory`` for a run; returns the lock (``hold=False``: checked, then let go) and
    where an old run was moved (``force``), or None.

    ``hold=False`` is for a launcher whose workers will take the lock themselves: it
    creates nothing.
    """
    if resume and force:
        raise RunError(f"{directory}: --resume and --force exclude each other: --resume continues the run "
                       "there, --force starts over")  # fmt: skip
    if resume and not (directory / CHECKPOINT_FILE).is_file():
        raise nothing_to_resume(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"{directory}: not a directory; choose another --out")
    if not hold and not directory.exists():
        return None, None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"{directory}: cannot create the run directory ({error.strerror})") from None
    lock = RunLock(directory)
    moved = None
    try:
        if not resume:
            moved = _make_way(directory, force)
        if moved is not None:
            lock.path = moved / LOCK_FILE  # it moved with the old run
            lock.release()
            directory.mkdir(parents=True, exist_ok=True)
            lock = RunLock(directory)
    except BaseException:
        lock.release()
        raise
    if not hold:
        lock.release()
        lock = None
    return lock, moved


def moved_note(directory: Path, moved: Path) -> str:
    """What ``force`` says when it moved an old run aside."""
    return f"{directory}: moved the old run to {moved}"


def _make_way(directory: Path, force: bool) -> Path | None:
    """Nothing for an empty directory; the old run moved aside with ``force``; else a refusal."""
    entries = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if not entries:
        return None
    runs = [name for name in entries if name in RUN_FILES]
    if not runs:
        foreign = [name for name in entries if name not in RUN_EXTRAS and not name.endswith(".png")]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunError(f"{directory}: not empty and not a run directory (holds {shown}); "
                           "choose another --out (--force moves only runs aside)")  # fmt: skip
    aside = _aside(directory)
    if not force:
        if SUMMARY_FILE in runs:
            raise RunError(f"{directory}: holds a finished run; start over with --force "
                           f"(the old run moves to {aside}), or choose another --out")  # fmt: skip
        if CHECKPOINT_FILE in runs:
            raise RunError(f"{directory}: holds an unfinished run; continue it with --resume, or start over "
                           f"with --force (the old run moves to {aside})")  # fmt: skip
        raise RunError(f"{directory}: holds an unfinished run with no checkpoint to resume; start over "
                       f"with --force (the old run moves to {aside}), or choose another --out")  # fmt: skip
    try:
        directory.rename(aside)
    except OSError as error:
        raise RunError(f"{directory}: could not move the old run to {aside} ({error.strerror})") from None
    return aside


def _aside(directory: Path) -> Path:
    """``DIR.old-1``, ``DIR.old-2``, ...: the first name that is free."""
    directory = directory if directory.name else directory.resolve()  # "--out ." has no name of its own
    n = 1
    while (aside := directory.with_name(f"{directory.name}.old-{n}")).exists():
        n += 1
    return aside


def disk_error(error: OSError, directory: Path, checkpoint_step: int | None) -> RunError:
    """A write that failed (disk full, read-only, no permission), as one line."""
    where = error.filename or directory
    why = error.strerror or str(error)
    if checkpoint_step is None:
        kept = "no checkpoint had been written yet"
    else:
        kept = (f"the last good checkpoint (step {checkpoint_step}) is kept at {directory / CHECKPOINT_FILE}; "
                "once the disk can be written, continue with --resume")  # fmt: skip
    return RunError(f"{where}: could not write ({why}); {kept}")
