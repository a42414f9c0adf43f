"""Atomic file writes: readers see the old file or the new one, never half of one.

A foundation module (standard library only), so that every layer can write files
safely without importing torch: the formatter, run directories, reports.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Temporary file, flush, fsync, rename; a file that is replaced keeps its permissions.
    A write that fails (a full disk, a read-only directory) leaves the old file as it was,
    and no temporary file; its ``OSError`` names ``path`` (``error.filename``).
    """
    try:
        _write(path, data)
    except OSError as error:
        if error.filename == str(path) or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON with sorted keys and a final newline, written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
