"""The memory guard: how many bytes a compiled spec will hold, and a refusal when it cannot fit.

:func:`estimate` reads a :class:`~energydsl.compiler.program.Program` (nothing is allocated)
and adds up what the model, the generic loop and inference really keep in memory;
:func:`check_fits` raises :class:`ResourceError` when that is more than the memory
available, so a spec with ``latent z[200000]`` is refused in one line instead of
being killed by the operating system half-way through building its Gram matrix.

The formula, part by part (``s``: bytes per value of the model's dtype, 4 for
float32; ``B``: the training batch; ``B_eval``: the evaluation batch, at most
``train.EVAL_BATCH`` = 1024; ``d``: input values per sample; ``m``: latent units):

* **parameters**: Σ values × s, exact.  **masks**: one full-size copy per
  ``constrain mask`` (the model keeps them).  **gradients**: the values of the
  parameters that learn (not ``learn fixed``) × s.  **optimizer state**: per
  learning value, Adam keeps 2 copies (first and second moments), SGD with
  momentum 1, plain SGD none.
* **activations**: the larger of one training step and one evaluation batch:
  the minibatch and its preprocessed copy (2·B·d); for FISTA/ISTA about 8 (B, m)
  tensors alive at once (z, y, the next iterate, the gradient, the affine term
  of the Gram path, prox and momentum temporaries) and, without the Gram path,
  the energy's autograd graph twice over (gradients and the Hessian-vector
  products that estimate the step); for an encoder 4 (B, m) temporaries and,
  when training goes through it (``infer z by encoder``), the T steps of
  ``recurrent(T)`` plus the hoisted input term stored for backprop ((T + 1)·B·m);
  for training, the energy's autograd graph: 2·B × the width of each term's first
  argument (d for a term on the input, m on the latent, m + classes for ``xent``,
  pools × largest pool for a group term).  This part is an approximation: it
  counts the tensors that the code keeps, not the allocator's rounding.
* **gram**: when FISTA/ISTA's smooth part is quadratic, the (m, m) Hessian read
  off the energy, the identity it is read with and the symmetrising temporary
  (3·m²·s), and, up to 2048 units, the exact λ_max in float64 (2·m²·8); an
  ``inhibition`` term's λ_max(S) in float64 (2·m²·8).
* **dual variables**: a group term over overlapping or weighted pools solves its
  prox by the dual, in float64: about 8 copies of the dual (ξ, its previous and
  next iterates, momentum, gradient, the gather, the warm start kept between
  calls) of B × pools × largest pool values, and 4 (B, m) vectors, at the larger
  of the two batches.
* **pool tables**: the group prox's index tables, as built (exact), and their
  copies in the model's dtype.
* **dataset**: what the data source says its load holds at its peak, from its headers
  and arguments before a byte is read (:attr:`energydsl.data.Source.footprint`: a file
  loaded whole counts its stored values and two float32 copies of them; ``shards`` counts
  its held-out samples, the batches read ahead and the sample initialisers may read);
  given a sample count instead, samples × d float32 values and one int64 label per
  sample when the spec has a label.

Parts are added as if all were alive at once.  What the formula leaves out (the C
library's and torch's allocator slack, caches, the transient copies made while data
loads) is not small for small models: DrSAE on MNIST, estimated at 54 MiB, grew a
process's peak resident memory by 73-79 MiB (``tests/reporting/test_resources.py`` checks the
two within a factor of 3).  For the models the guard is for, the exact parts
(parameters, optimizer state, Gram matrices) dominate.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from energydsl.compiler import Program
from energydsl.errors import UserError
from energydsl.solvers.stepsize import uses_power_iteration
from energydsl.training.metrics import EVAL_BATCH

__all__ = ["Estimate", "ResourceError", "available_memory", "check_fits", "estimate", "format_bytes", "parse_size"]

LIMIT_VARIABLE = "ENERGYDSL_MEMORY_LIMIT"
MEMINFO = Path("/proc/meminfo")

FISTA_TENSORS = 8  # (B, m) tensors alive in one FISTA iteration
ENCODER_TENSORS = 4  # (B, m) temporaries of one encoder evaluation
SPARSE_ENCODER_TENSORS = 2  # (B, m) of an encoder of sparse codes: its dense product and the selection's workspace
DUAL_COPIES = 8  # float64 copies of the dual variables in the dual prox
DUAL_VECTORS = 4  # float64 (B, m) vectors in the dual prox
EXACT_EIGEN_LIMIT = 2048  # infer.largest_eigenvalue: exact up to this many units
FLOAT64 = 8
INT64 = 8
DATA_BYTES = 4  # data sources give float32 samples

# What to change when a part is the largest, for the refusal's hint.
_REMEDIES = {
    "parameters": "smaller parameters",
    "masks": "smaller parameters",
    "gradients": "smaller parameters",
    "optimizer state": "smaller parameters or sgd without momentum",
    "activations": "a smaller batch or fewer latent units",  # evaluation batches are 1024
    "gram": "fewer latent units (the Gram matrix grows with their square)",
    "dual variables": "a smaller batch or fewer overlapping pools",
    "pool tables": "fewer pools",
    "dataset": "fewer samples",
}
STREAM_REMEDY = 'stream the samples from disk with data shards("...") (.npy or safetensors files)'



class ResourceError(UserError):
    """A spec that needs more memory than the machine has, or a bad memory limit."""


@dataclass(frozen=True)
class Estimate:
    """Bytes a compiled spec will hold, part by part (see the module docstring)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self, count: int = 3) -> list[tuple[str, int]]:
        """The ``count`` largest non-zero parts, largest first."""
        ranked = sorted(((n, b) for n, b in self.parts.items() if b > 0), key=lambda item: -item[1])
        return ranked[:count]

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.largest())
        return f"about {format_bytes(self.total)} ({parts})"


def format_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"8G"`` → 8·1024³ bytes; suffixes K, M, G, T (powers of 1024), optionally with B or iB."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ResourceError(f"{LIMIT_VARIABLE}={text!r}: expected a number of bytes, "
                            "optionally with a suffix K, M, G or T (e.g. 8G)")  # fmt: skip
    number, suffix = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(suffix or " "))


def available_memory() -> tuple[int | None, str]:
    """Bytes of memory a run may use, and where that figure comes from.

    ``ENERGYDSL_MEMORY_LIMIT`` when set; else MemAvailable from /proc/meminfo (free
    memory plus what the kernel can reclaim); else the free physical pages that
    ``os.sysconf`` reports (total pages where free ones are not reported); else None.
    """
    limit = os.environ.get(LIMIT_VARIABLE)
    if limit is not None:
        return parse_size(limit), LIMIT_VARIABLE
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE"), f"os.sysconf {pages}"
        except (ValueError, OSError, AttributeError):
            continue
    return None, "unknown"


def estimate(program: Program, samples: int = 0, dtype: torch.dtype | None = None,
             data_bytes: int | None = None) -> Estimate:  # fmt: skip
    """The bytes ``program`` will hold when trained on ``samples`` samples (0: data not counted).

    ``dtype`` is the model's (default: torch's default dtype, as :class:`EnergyModel` uses).
    ``data_bytes``, when given, is the data's part (what its source says it holds) in place of
    the ``samples`` count's.
    """
    size = (dtype or torch.get_default_dtype()).itemsize
    values = sum(math.prod(p.shape) for p in program.params)
    learning = sum(math.prod(p.shape) for p in program.params if p.learn != "fixed")
    masks = sum(len(p.masks) * math.prod(p.shape) for p in program.params)
    batch = program.training.batch
    eval_batch = min(EVAL_BATCH, samples) if samples else EVAL_BATCH
    activations = max(_activations(program, batch, True), _activations(program, eval_batch, False))
    per_sample = math.prod(program.sample_shape) * DATA_BYTES + (INT64 if program.label else 0)
    per_sample += math.prod(program.target.shape) * DATA_BYTES if program.target else 0  # a transcoder's targets
    parts = {
        "parameters": values * size,
        "masks": masks * size,
        "gradients": learning * size,
        "optimizer state": _optimizer_state_values(program, learning) * size,
        "activations": activations * size,
        "gram": _gram_bytes(program, size),
        "dual variables": 0,
        "pool tables": 0,
        "dataset": samples * per_sample if data_bytes is None else data_bytes,
    }
    for part, count in _entries_memory(program, max(batch, eval_batch), size):
        parts[part] = parts.get(part, 0) + count
    return Estimate(parts)


def check_fits(program: Program, samples: int, available: int | None = None,
               data_bytes: int | None = None) -> Estimate:  # fmt: skip
    """Raise :class:`ResourceError` when ``program`` needs more memory than is available.

    ``samples``: how many samples the run will load; pass 0 when the dataset is
    already in memory (the available memory then already accounts for it).
    ``data_bytes``: what the data source says its load will hold (:func:`estimate`), to
    check before it is read.  ``available``: bytes (default: :func:`available_memory`).
    Returns the estimate; when the available memory cannot be found, nothing is refused.
    """
    needed = estimate(program, samples, data_bytes=data_bytes)
    source = "given"
    if available is None:
        available, source = available_memory()
    if available is not None and needed.total > available:
        remedy = _remedy(program, needed.largest(1)[0][0])
        override = f"raise {LIMIT_VARIABLE}" if source == LIMIT_VARIABLE else f"set {LIMIT_VARIABLE} (e.g. 64G)"
        raise ResourceError(
            f"spec '{program.name}' needs {needed} but {format_bytes(available)} of memory is available "
            f"({source}); try {remedy}, or {override} to override"
        )
    return needed


def _remedy(program: Program, part: str) -> str:
    """What to change when ``part`` is the largest: for data loaded whole, streaming it."""
    if part == "dataset":
        streamed = program.data is not None and program.data.name == "shards"
        return "a smaller batch or test_samples" if streamed else f"fewer samples, or {STREAM_REMEDY}"
    return _REMEDIES.get(part, "a smaller batch or fewer latent units")


# ---------------------------------------------------------------- the parts


def _optimizer_state_values(program: Program, learning: int) -> int:
    """Values the optimizer keeps for the learning parameters (``learning`` of their values), as its entry counts them."""
    training = program.training
    return training.entry.state_values([p.shape for p in program.params if p.learn != "fixed"], training.options)


def _uses_prox(program: Program) -> bool:
    return any(method.solver.uses_prox for method in program.methods)


def _gram_path(program: Program) -> bool:
    """Whether FISTA reads a Gram matrix off the energy: its smooth part in z is quadratic.

    Terms that need a label are left out, as inference at evaluation time has none.
    """
    smooth = [t for t in program.terms if t.term.smooth and t.degree > 0 and not t.term.needs_label]
    dense = not uses_power_iteration(program.latent)  # large code maps never build it
    return _uses_prox(program) and dense and all(t.quadratic for t in smooth)


def _activations(program: Program, batch: int, training: bool) -> int:
    """Values (not bytes) alive in one training step or one evaluation batch."""
    d, m = math.prod(program.input.shape), program.latent.shape[0]
    graph = 2 * sum(_term_width(program, term) for term in program.terms)  # per sample
    values = 2 * d  # the minibatch and its preprocessed copy
    values += 2 * math.prod(program.target.shape) if program.target else 0  # and a transcoder's targets
    if _uses_prox(program):
        values += FISTA_TENSORS * m + (0 if _gram_path(program) else 2 * graph)
    if program.encoder is not None and program.sparse_codes:
        values += SPARSE_ENCODER_TENSORS * m  # the pre-activations without a gradient; the rest is O(k)
    elif program.encoder is not None:
        values += ENCODER_TENSORS * m
        if training and all(method.solver.runs_encoder for method in program.methods):
            values += (program.roles.recurrent_steps + 1) * m  # stored for backprop
    if training:
        values += graph
    return batch * values


def _term_width(program: Program, term) -> int:
    """Values per sample of a term's first argument, the size of its part of the graph."""
    m = program.latent.shape[0]
    observed = {variable.name: variable for variable in (program.input, program.reconstructed)}  # x, a target
    if term.first_arg in observed:
        return math.prod(observed[term.first_arg].shape)
    if term.term.needs_label:
        return m + (program.classes or 0)
    if term.term.prox_kind == "group":
        return term.term.norms.count * term.term.norms.width
    return m


def _gram_bytes(program: Program, size: int) -> int:
    m = program.latent.shape[0]
    total = 0
    if _gram_path(program):
        total += 3 * m * m * size  # H, the identity, (H + Hᵀ) / 2
        if m <= EXACT_EIGEN_LIMIT:
            total += 2 * m * m * FLOAT64  # eigvalsh on H.double(): the copy and its workspace
    return total


def _entries_memory(program: Program, batch: int, size: int) -> list[tuple[str, int]]:
    """What the terms and inference methods say they add, by part: pool tables, dual variables,
    λ_max workspaces (terms); the homotopy's Gram matrix and factors (lars)."""
    prox = _uses_prox(program)
    added = [item for term in program.terms for item in term.term.memory(batch, size, prox).items()]
    units = program.latent.shape[0]
    own = [method.solver.memory(units, size, **method.own_options) for method in program.methods]
    return added + [item for memory in own for item in memory.items()]
