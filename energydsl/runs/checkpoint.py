"""Run directories: what a trained run leaves behind, and how it comes back.

A run directory holds

- ``spec.energy``: the spec as it ran, with ``--set`` values and ``--data`` written in;
- ``model.safetensors``: the parameters, named exactly as in the spec;
- ``model.json``: the sidecar — spec source and hash, constants, data, shapes, versions;
- ``metrics.jsonl``: one line per epoch; ``summary.json``: the final metrics;
- ``checkpoint.safetensors``: the training state to resume from — parameters,
  optimizer state, random generators, position in the data (the epoch's order, or
  for samples read from disk the seed it follows from) — in ONE file, so
  that a crash can never pair parameters with the optimizer state of another step.

Every file is written atomically (temporary file, flush, fsync, rename), so a run
directory never holds a half-written file.  Nothing here uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from energydsl._version import __version__
from energydsl.atomic import atomic_write, atomic_write_json
from energydsl.compiler import Program, spec_dir
from energydsl.data import SOURCES
from energydsl.data.streamed import StreamOrder
from energydsl.errors import RunError, Span
from energydsl.lang import spec as S
from energydsl.lang.parser import parse_source_call

SPEC_FILE = "spec.energy"
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 1
STATE_KEY = "state."  # model.safetensors names a state slot S "state.S" (a parameter name has no dot)


def resolved_source(program: Program, overrides: dict[str, float], data_text: str | None) -> str:
    """The spec's text as it ran, self-contained: reopening it needs no other file.

    Overridden constants and the data source are written in; a tree read from a file
    is written by its edges; data file paths become the absolute paths they were found at
    (relative ones start from the spec's folder in its data line, from the working directory in
    ``--data``: ``program.data_dir``).
    """
    spec = program.spec
    base = (program.data_dir or spec_dir(spec.path)).resolve()
    edits = [(decl.value.span, _number(overrides[decl.name.name])) for decl in spec.consts
             if decl.name.name in overrides]  # fmt: skip
    edits += _tree_file_edits(program)
    if data_text is not None:
        node_text = f"data {data_text}"  # parse_source_call's spans count from this
        data_text = edit_source(node_text, _data_path_edits(parse_source_call(data_text), base))[len("data ") :]
        if spec.data is not None:
            edits.append((spec.data.call.span, data_text))
    elif spec.data is not None:
        edits += _data_path_edits(spec.data.call, base)
    text = edit_source(spec.source, edits)
    if data_text is not None and spec.data is None:
        text = f"data {data_text}\n" + text
    return text


def _data_path_edits(call: S.Call, base: Path) -> list[tuple[Span, str]]:
    """The data call's file paths (the source's ``paths``) as absolute, resolved paths."""
    if call.func not in SOURCES:
        return []
    source = SOURCES[call.func]
    named = list(zip((p.name for p in source.parameters), call.args)) + [(kw.name, kw.value) for kw in call.kwargs]
    return [(node.span, f'"{(base / node.value).resolve().as_posix()}"') for name, node in named
            if name in source.paths and isinstance(node, S.String)]  # fmt: skip


def _tree_file_edits(program: Program) -> list[tuple[Span, str]]:
    """``tree(file = "...")`` rewritten as ``tree(edges = [...], root = r)``.

    Inlined rather than copied beside the spec: the run's spec then says everything
    (``energydsl prune`` writes its trees the same way), and wrapped at EDGES_PER_LINE
    edges a line, a tree of thousands of units stays a readable block of a few hundred lines.
    """
    edits = []
    for decl in program.spec.graphs:
        node = decl.value
        if not (isinstance(node, S.Call) and node.func == "tree"):
            continue
        if len(node.args) < 4 and all(kw.name != "file" for kw in node.kwargs):
            continue  # tree(branching, depth) or tree(edges = ...): already in the spec
        tree = program.structures[decl.name.name]
        edges = [[int(tree.parents[child]), child] for child in range(tree.size) if tree.parents[child] >= 0]
        edits.append((node.span, tree_text(edges, tree.root, indent=node.span.column - 1)))
    return edits


EDGES_PER_LINE = 10


def tree_text(edges: list[list[int]], root: int, indent: int = 0) -> str:
    """``tree(edges = [[p, c], ...], root = r)``, EDGES_PER_LINE edges a line, continuation
    lines aligned under the first edge (``indent``: the column where ``tree(`` starts, from 0)."""
    opening = "tree(edges = ["
    rows = [", ".join(json.dumps(edge) for edge in edges[i : i + EDGES_PER_LINE])
            for i in range(0, len(edges), EDGES_PER_LINE)] or [""]  # fmt: skip
    separator = ",\n" + " " * (indent + len(opening))
    return f"{opening}{separator.join(rows)}], root = {root})"


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
    tensors.update({STATE_KEY + name: t.detach().cpu().contiguous() for name, t in model.state.items()})
    atomic_write(directory / SPEC_FILE, source.encode())
    atomic_write(directory / MODEL_FILE, safetensors.torch.save(tensors))
    meta = {
        "format": FORMAT,
        "spec_name": program.name,
        "spec_path": program.spec.path,
        "spec_source": source,
        "spec_sha256": _sha256(source),
        "constants": program.constants,
        "data": program.data.text(),
        "sample_shape": list(program.sample_shape),
        "num_classes": program.classes,
        "target_shape": list(program.target.shape) if program.target is not None else None,
        "parameters": {name: list(p.shape) for name, p in model.params.items()},
        "versions": {"energydsl": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(directory / META_FILE, meta)


def data_info(meta: dict) -> tuple:
    """The description of the data a run trained on, as the compiler takes it: (sample shape, classes,
    target shape; None: no targets, as in runs saved before targets existed)."""
    target = meta.get("target_shape")
    return tuple(meta["sample_shape"]), meta["num_classes"], None if target is None else tuple(target)


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
    if _sha256(meta["spec_source"]) != meta.get("spec_sha256"):
        raise RunError(f"{directory / META_FILE}: the spec source does not match its recorded hash")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise RunError(f"{path}: unreadable ({error})") from None
    expected = {plan.name: plan.shape for plan in program.params}
    # a state slot the file lacks keeps its initial value: runs saved before every model kept activity counts
    expected.update({STATE_KEY + slot.name: slot.shape for slot in program.states if STATE_KEY + slot.name in tensors})
    if set(tensors) != set(expected):
        raise RunError(f"{path}: holds parameters {sorted(tensors)}, the spec declares {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            what = f"state {name.removeprefix(STATE_KEY)}" if name.startswith(STATE_KEY) else f"parameter {name}"
            raise RunError(f"{path}: {what} has shape {list(tensors[name].shape)}, "
                           f"the spec declares {list(shape)}")  # fmt: skip
    return tensors


# ---------------------------------------------------------------- training state


def save_state(directory: Path, model, state, source: str) -> None:
    """The loop's whole state (see :class:`energydsl.training.loop.LoopState`) as one safetensors file.

    Tensors go in the tensor section; counters, history and optimizer
    hyper-parameters in the header's JSON metadata.
    """
    tensors = {f"param/{name}": p.detach().cpu().contiguous() for name, p in model.params.items()}
    tensors.update({f"state/{name}": t.detach().cpu().contiguous() for name, t in model.state.items()})
    tensors["rng/order"] = state.generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    if isinstance(state.order, torch.Tensor):
        tensors["order"] = state.order.cpu()
    if model.step_size_estimate.vector is not None:  # the warm start of code maps' step size
        tensors["power_iteration"] = model.step_size_estimate.vector.cpu()
    optimizers = {}
    for direction in ("descent", "ascent"):
        optimizer = getattr(state.optimizers, direction)
        if optimizer is not None:
            optimizers[direction] = _optimizer_state(optimizer.state_dict(), f"optim/{direction}", tensors)
    position = {"step": state.step, "epoch": state.epoch, "batch": state.batch, "history": state.history,
                "optimizers": optimizers}  # fmt: skip
    if isinstance(state.order, StreamOrder):  # samples on disk: the seed their order follows from, not the order
        position["stream_order"] = state.order.as_dict()
    metadata = {"format": str(FORMAT), "spec_sha256": _sha256(source), "state": json.dumps(position)}
    atomic_write(directory / CHECKPOINT_FILE, safetensors.torch.save(tensors, metadata=metadata))


def _optimizer_state(state_dict: dict, prefix: str, tensors: dict) -> dict:
    """An optimizer's state_dict with its tensors moved into ``tensors``."""
    per_param = {}
    for index, entries in state_dict["state"].items():
        plain = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        per_param[str(index)] = plain
    return {"state": per_param, "param_groups": state_dict["param_groups"]}


def load_state(directory: Path, model, state, source: str) -> None:
    """Restore a checkpoint into ``model`` and the fresh loop ``state``, in place.

    Refuses a checkpoint written for a different spec (or other ``--set``/``--data``).
    """
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        raise nothing_to_resume(directory)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        position = json.loads(metadata["state"])
    except (OSError, KeyError, ValueError, safetensors.SafetensorError) as error:
        raise RunError(f"{path}: unreadable checkpoint ({error})") from None
    if metadata.get("format") != str(FORMAT):
        raise RunError(f"{path}: unknown format {metadata.get('format')!r} (this energydsl reads {FORMAT})")
    if metadata.get("spec_sha256") != _sha256(source):
        raise RunError(f"{path}: written for a different spec (or other --set/--data values); "
                       f"resume with the spec as it ran: {directory / SPEC_FILE}")  # fmt: skip
    with torch.no_grad():
        for name, p in model.params.items():
            p.copy_(tensors[f"param/{name}"])
        for name, t in model.state.items():
            if f"state/{name}" in tensors:  # else its initial value (a checkpoint from before the slot existed)
                t.copy_(tensors[f"state/{name}"])
    for direction, saved in position["optimizers"].items():
        getattr(state.optimizers, direction).load_state_dict(_restored(saved, f"optim/{direction}", tensors))
    state.generator.set_state(tensors["rng/order"])
    torch.set_rng_state(tensors["rng/torch"])
    state.order = StreamOrder(**position["stream_order"]) if "stream_order" in position else tensors.get("order")
    if "power_iteration" in tensors:
        model.step_size_estimate.vector = tensors["power_iteration"].to(model.device)
    state.step, state.epoch, state.batch = position["step"], position["epoch"], position["batch"]
    state.history = position["history"]


def nothing_to_resume(directory: Path) -> RunError:
    return RunError(f"{directory}: nothing to resume ({CHECKPOINT_FILE} is missing)")


def _restored(saved: dict, prefix: str, tensors: dict) -> dict:
    per_param = {}
    for index, plain in saved["state"].items():
        entries = dict(plain)
        marker = f"{prefix}/{index}/"
        entries.update({key[len(marker) :]: t for key, t in tensors.items() if key.startswith(marker)})
        per_param[int(index)] = entries
    return {"state": per_param, "param_groups": saved["param_groups"]}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
