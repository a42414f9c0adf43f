"""Run directories: what a trained run leaves behind, and how it comes back.

A run directory holds

- ``spec.energy``: the spec as it ran, with ``--set`` values and ``--data`` written in;
- ``model.safetensors``: the parameters, named exactly as in the spec;
- ``model.json``: the sidecar — spec source and hash, constants, data, shapes, versions;
- ``metrics.jsonl``: one line per epoch; ``summary.json``: the final metrics.

Every file is written atomically (temporary file, flush, fsync, rename), so a run
directory never holds a half-written file.  Nothing here uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import safetensors.torch
import torch

from . import __version__
from .compile import Program
from .errors import RunError, Span

SPEC_FILE = "spec.energy"
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FORMAT = 1


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def resolved_source(program: Program, overrides: dict[str, float], data_text: str | None) -> str:
    """The spec's text with overridden constants and the data source written in."""
    spec = program.spec
    edits = [(decl.value.span, _number(overrides[decl.name.name])) for decl in spec.consts
             if decl.name.name in overrides]  # fmt: skip
    if data_text is not None and spec.data is not None:
        edits.append((spec.data.call.span, data_text))
    text = edit_source(spec.source, edits)
    if data_text is not None and spec.data is None:
        text = f"data {data_text}\n" + text
    return text


def edit_source(source: str, edits: list[tuple[Span, str]]) -> str:
    """Replace the text under each span (spans must not overlap)."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offsets(span: Span) -> tuple[int, int]:
        return starts[span.line - 1] + span.column - 1, starts[span.end_line - 1] + span.end_column - 1

    for span, text in sorted(edits, key=lambda edit: offsets(edit[0]), reverse=True):
        start, end = offsets(span)
        source = source[:start] + text + source[end:]
    return source


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(float(value))


def save_model(directory: Path, model, source: str) -> None:
    """``spec.energy``, ``model.safetensors`` and ``model.json`` for a compiled model."""
    program: Program = model.program
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.params.items()}
    atomic_write(directory / SPEC_FILE, source.encode())
    atomic_write(directory / MODEL_FILE, safetensors.torch.save(tensors))
    meta = {
        "format": FORMAT,
        "spec_name": program.name,
        "spec_path": program.spec.path,
        "spec_source": source,
        "spec_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "constants": program.constants,
        "data": program.data.text(),
        "sample_shape": list(program.sample_shape),
        "num_classes": program.classes,
        "parameters": {name: list(t.shape) for name, t in tensors.items()},
        "versions": {"energydsl": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(directory / META_FILE, meta)


def read_meta(directory: Path) -> dict:
    path = directory / META_FILE
    if not directory.is_dir():
        raise RunError(f"{directory}: no such run directory")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{directory}: not a run directory ({META_FILE} is missing)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: unreadable ({error})") from None
    if meta.get("format") != FORMAT:
        raise RunError(f"{path}: unknown format {meta.get('format')!r} (this energydsl reads {FORMAT})")
    return meta


def load_tensors(directory: Path, program: Program, meta: dict) -> dict[str, torch.Tensor]:
    """The saved parameters, checked against the spec they are meant for."""
    path = directory / MODEL_FILE
    if hashlib.sha256(meta["spec_source"].encode()).hexdigest() != meta.get("spec_sha256"):
        raise RunError(f"{directory / META_FILE}: the spec source does not match its recorded hash")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise RunError(f"{path}: unreadable ({error})") from None
    expected = {plan.name: plan.shape for plan in program.params}
    if set(tensors) != set(expected):
        raise RunError(f"{path}: holds parameters {sorted(tensors)}, the spec declares {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise RunError(f"{path}: parameter {name} has shape {list(tensors[name].shape)}, "
                           f"the spec declares {list(shape)}")  # fmt: skip
    return tensors
