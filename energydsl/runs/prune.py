"""Pruning a trained tree: remove the branches whose units are rarely active.

A node is kept when some unit of its subtree is active on at least ``threshold`` of
the training samples; otherwise its whole subtree goes (the root always stays).
The result is an ordinary run directory: its spec names the smaller tree by its
edges, every size that was the latent's is the new size, and the parameters are
the old ones restricted to the kept units.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from energydsl.compiler import compile_spec
from energydsl.data.streamed import in_memory
from energydsl.errors import RunError
from energydsl.lang import spec as S
from energydsl.lang.parser import parse
from energydsl.model import EnergyModel
from energydsl.ops.structures import Structure
from energydsl.runs import checkpoint
from energydsl.runs.directory import load_run, run_dataset
from energydsl.training.metrics import eval_rows


def prune_run(directory: str | Path, threshold: float, out: str | Path) -> dict:
    """Prune the run in ``directory`` into ``out``; returns a report of what was kept."""
    directory, out = Path(directory), Path(out)
    if not 0 <= threshold <= 1:
        raise RunError(f"--threshold {threshold}: expected an activation frequency in [0, 1]")
    model = load_run(directory)
    meta = checkpoint.read_meta(directory)
    try:
        name, tree = _the_tree(model)
    except RunError as error:
        raise RunError(f"{directory}: {error}") from None
    frequency = activation_frequency(model, in_memory(run_dataset(directory, model).x_train))  # shards: a sample
    kept = kept_units(tree, frequency, threshold)
    source = _pruned_source(model, name, tree, kept)
    spec = parse(source, str(out / checkpoint.SPEC_FILE))
    program = compile_spec(spec, data_info=checkpoint.data_info(meta))
    pruned = EnergyModel(program, train_x=None)
    index = torch.tensor(kept)
    with torch.no_grad():
        for name, target in pruned.params.items():
            target.copy_(_kept(model.params[name].detach(), tree.size, index))
        for name, target in pruned.state.items():  # e.g. the activity counts of the kept units
            target.copy_(_kept(model.state[name], tree.size, index))
    checkpoint.save_model(out, pruned, source)
    report = {
        "pruned_from": str(directory),
        "threshold": threshold,
        "units_before": tree.size,
        "units_after": len(kept),
        "kept_units": kept,
        "activation_frequency": [round(float(f), 6) for f in frequency],
    }
    checkpoint.atomic_write_json(out / checkpoint.SUMMARY_FILE, report)
    return report


def _the_tree(model: EnergyModel) -> tuple[str, Structure]:
    program = model.program
    trees = [(name, s) for name, s in program.structures.items() if s.kind == "tree"]
    if len(trees) != 1 or len(program.structures) != 1:
        raise RunError("pruning needs a spec whose one structure is a tree (graph T = tree(...))")
    for decl in program.spec.pools:
        if not (isinstance(decl, S.PoolsDecl) and isinstance(decl.value, S.Call) and decl.value.func == "subtrees"):
            raise RunError(f"pool '{decl.name.name}' is not built from the tree: pruning cannot renumber it")
    if math.prod(program.input.shape) == trees[0][1].size:
        raise RunError("the input and the latent have the same size: pruning cannot tell their axes apart")
    return trees[0]


@torch.no_grad()
def activation_frequency(model: EnergyModel, x: torch.Tensor) -> torch.Tensor:
    """Share of samples on which each unit is non-zero, a bounded batch of codes at a time."""
    active = torch.zeros(model.program.latent.shape[0])
    for batch in x.split(eval_rows(active.numel())):
        active += (model.infer(batch) != 0).sum(dim=0).cpu()
    return active / x.shape[0]


def kept_units(tree: Structure, frequency: torch.Tensor, threshold: float) -> list[int]:
    """Units whose subtree holds a unit active at least ``threshold`` of the time, plus the root."""
    kept = {i for i, subtree in enumerate(tree.descendants) if frequency[list(subtree)].max() >= threshold}
    return sorted(kept | {tree.root})


def _kept(tensor: torch.Tensor, size: int, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` restricted to the kept units along each of its axes of the latent's ``size``."""
    for axis in _latent_axes(tensor.shape, size):
        tensor = tensor.index_select(axis, index)
    return tensor


def _latent_axes(shape, size: int) -> list[int]:
    return [axis for axis, dim in enumerate(shape) if dim == size]


def _pruned_source(model: EnergyModel, name: str, tree: Structure, kept: list[int]) -> str:
    """The spec with the kept tree written out by its edges and the new latent size."""
    spec = model.program.spec
    new = {old: i for i, old in enumerate(kept)}
    edges = [[new[int(tree.parents[c])], new[c]] for c in kept if tree.parents[c] >= 0]
    edits = []
    graph = next(d for d in spec.graphs if d.name.name == name)
    edits.append((graph.value.span, checkpoint.tree_text(edges, new[tree.root], indent=graph.value.span.column - 1)))
    latent = spec.latents[0]
    for plan_shape, dims in [(model.program.latent.shape, latent.shape)] + [
        (plan.shape, decl.shape) for plan, decl in zip(model.program.params, spec.params)
    ]:
        edits += [(dim.span, str(len(kept))) for size, dim in zip(plan_shape, dims) if size == tree.size]
    return checkpoint.edit_source(spec.source, edits)
