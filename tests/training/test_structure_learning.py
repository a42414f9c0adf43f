"""What structured models learn: rooted supports on a tree, branch-wise co-activation
under tree inhibition, S learned by ascent within its constraints, and a topographic
map from group sparsity over overlapping windows."""

import pytest
import torch

import energydsl
from energydsl.reporting.analysis import neighbour_cosine_ratio, related_coactive_share, rooted_fraction
from energydsl.training.loop import make_optimizers, train_step

TREE_SPEC = """
model tree_small
data patches(size = 8, count = 3000, whiten = zca, seed = 1)
const lam = 0.05
const beta = 0.3
input x[64]
latent z[31]
graph T = tree(branching = 2, depth = 4)
param W[64, 31] init samples(x) constrain col_norm == 1
param S[31, 31] init tree_inhibition(T) learn ascent(lr = 1.0)
                constrain nonneg, symmetric, zero_diag, mask tree_inhibition(T), norm <= 24
energy
  recon   : 0.5 * sqerr(x, W @ z)
  sparse  : lam * l1(z)
  inhibit : beta * inhibition(z, S)
infer z by ista(steps = 150, tol = 1e-4)
train
  optimizer sgd(lr = 0.5, momentum = 0.9)
  batch 128
  epochs 2
"""

TREE_GROUP_SPEC = """
model tree_group_small
data patches(size = 8, count = 3000, whiten = zca, seed = 1)
const lam = 0.05
input x[64]
latent z[31]
graph T = tree(branching = 2, depth = 4)
param W[64, 31] init samples(x) constrain col_norm == 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  tree  : lam * tree_group(z, T)
infer z by fista(steps = 100, tol = 1e-4)
train
  optimizer sgd(lr = 0.5, momentum = 0.9)
  batch 128
  epochs 2
"""


# specs/topographic.energy in small: 64 units on an 8 x 8 torus, 3 x 3 windows
TOPOGRAPHIC_SPEC = """
model topographic_small
data patches(size = 8, count = 4000, whiten = zca, seed = 2)
const lam = 0.1
input x[64]
latent z[64]
graph M = torus(8, 8)
pools P = windows(M, size = 3, stride = 1)
param W[64, 64] init normal(1) constrain col_norm == 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : lam * group_l2(z, P)
infer z by fista(steps = 1000, tol = 1e-3)
train
  optimizer sgd(lr = 2, momentum = 0.9)
  batch 64
  epochs 6
"""


def test_tree_group_supports_are_rooted_subtrees():
    model = energydsl.load(TREE_GROUP_SPEC)
    energydsl.train(model)
    z = model.infer(model.dataset.x_test)
    coded = z[(z != 0).any(dim=1)]  # an empty support is trivially rooted: leave those out
    assert coded.shape[0] > 0.3 * z.shape[0]
    assert (coded != 0).sum(dim=1).float().mean() > 3  # supports have several units
    assert rooted_fraction(coded, model.program.structures["T"]) >= 0.95


def test_tree_inhibition_gathers_coactive_units_on_branches():
    tree_model = energydsl.load(TREE_SPEC)
    energydsl.train(tree_model)
    l1_source = TREE_SPEC.replace("  inhibit : beta * inhibition(z, S)\n", "")
    l1_model = energydsl.load(l1_source.replace("learn ascent(lr = 1.0)", "learn fixed"))
    energydsl.train(l1_model)
    tree = tree_model.program.structures["T"]
    x = tree_model.dataset.x_test
    inhibited = related_coactive_share(tree_model.infer(x), tree)
    plain = related_coactive_share(l1_model.infer(x), tree)
    assert inhibited >= 3 * plain, (inhibited, plain)


def test_ascent_keeps_every_constraint_and_grows_coactive_entries():
    model = energydsl.load(TREE_SPEC)
    optimizers = make_optimizers(model)
    mask = torch.from_numpy(~model.program.structures["T"].related)
    x = model.dataset.x_train
    coactive = torch.zeros(31, 31)
    before = model.params["S"].detach().clone()
    for batch in x[:1024].split(128):
        z = model.infer(batch)
        active = (z != 0).float()
        coactive += active.T @ active
        train_step(model, optimizers, batch, None, model.term_names)
        S = model.params["S"].detach()
        assert torch.equal(S, S.T)
        assert (S >= 0).all() and (S.diagonal() == 0).all()
        assert (S[~mask] == 0).all()
        assert S.norm() <= 24 * (1 + 1e-6)
    growth = (model.params["S"].detach() - before)[mask]
    together = coactive[mask]
    top = growth.topk(20).indices
    # the entries that grew most join units that fired together, more often than average
    assert (together[top] > 0).all()
    assert together[top].mean() > 1.3 * together.mean()


def test_pruning_removes_rare_branches_and_saves_like_any_run(tmp_path):
    from energydsl.runs.prune import activation_frequency, prune_run

    model = energydsl.load(TREE_GROUP_SPEC)
    energydsl.train(model, out=tmp_path / "run")
    threshold = activation_frequency(model, model.dataset.x_train).quantile(0.3).item()
    report = prune_run(tmp_path / "run", threshold=threshold, out=tmp_path / "pruned")
    kept = report["kept_units"]
    frequency = torch.tensor(report["activation_frequency"])
    tree = model.program.structures["T"]
    assert 1 <= len(kept) < 31
    # a removed unit's whole subtree was rarely active; a kept one has an active descendant or is the root
    for unit in range(31):
        busiest = frequency[list(tree.descendants[unit])].max()
        assert (unit in kept) == (busiest >= threshold or unit == tree.root)
    pruned = energydsl.load_run(tmp_path / "pruned")
    assert pruned.params["W"].shape == (64, len(kept))
    torch.testing.assert_close(pruned.params["W"], model.params["W"].detach()[:, kept])
    assert pruned.program.structures["T"].size == len(kept)
    assert rooted_fraction(pruned.infer(model.dataset.x_test), pruned.program.structures["T"]) >= 0.95


@pytest.mark.slow
def test_overlapping_windows_learn_a_topographic_map():
    """Units that share windows learn similar filters: neighbours on the torus end
    up well above random pairs in |cosine|, where the same training with l1 leaves
    them where they started."""
    grouped = energydsl.load(TOPOGRAPHIC_SPEC)
    torus = grouped.program.structures["M"]
    assert neighbour_cosine_ratio(grouped.params["W"], torus) < 1.1  # no map at initialisation
    energydsl.train(grouped)
    plain = energydsl.load(TOPOGRAPHIC_SPEC.replace("group_l2(z, P)", "l1(z)"))
    energydsl.train(plain)
    mapped, unmapped = (neighbour_cosine_ratio(m.params["W"], torus) for m in (grouped, plain))
    assert mapped >= 1.6 and unmapped <= 1.2, (mapped, unmapped)
