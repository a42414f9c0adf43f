"""The shipped sparse auto-encoder specs train as they say, on a small world of the ``features`` source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import energydsl
from energydsl.api import read_spec
from energydsl.training.metrics import evaluate

SPECS = Path(__file__).resolve().parents[2] / "specs"
WORLD = "features(dim = 16, features = 32, count = 6000, max_prob = 0.3, seed = 2)"


def load(name: str, **settings):
    spec = SPECS / f"sae_{name}.energy"
    declared = {decl.name.name for decl in read_spec(spec).consts}
    assert settings.keys() <= declared, f"{spec.name} declares no {settings.keys() - declared}"
    return energydsl.load(spec, set=settings, data=WORLD)


def held_out_l0(model) -> float:
    with torch.no_grad():
        return float((model.infer(model.dataset.x_test) != 0).sum(dim=1).float().mean())


def test_jumprelu_thresholds_move_and_the_run_reaches_its_target_l0():
    """The thresholds start at 0.1; the straight-through estimate of the L0 penalty's gradient moves
    them until the held-out L0 sits at the target k (the quadratic penalty of Gemma Scope 2)."""
    model = load("jumprelu", units=32, k=3, epochs=6, batch=64, warmup=20)
    theta = model.params["theta"].detach().clone()
    before = held_out_l0(model)
    energydsl.train(model)
    after = held_out_l0(model)
    moved = (model.params["theta"].detach() - theta).abs()
    assert float(moved.mean()) > 0.1  # each threshold moves by a tenth at least on average
    assert before > 6 and after == pytest.approx(3, rel=0.25)


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka"])
def test_k_specs_keep_k_units_per_sample_and_explain_most_of_the_variance(name):
    model = load(name, units=32, k=3, k_aux=8, epochs=4, batch=64)
    energydsl.train(model)
    metrics = evaluate(model, model.dataset)
    assert held_out_l0(model) == pytest.approx(3, rel=0.2 if name != "topk" else 1e-6)  # batchtopk: on average
    assert metrics["explained_variance"] > 0.5


def tree_model(lam: float):
    spec = SPECS / "sae_tree.energy"
    world = "features(dim = 16, features = 28, count = 1500, max_prob = 0.3, roots = 2, branching = 2, depth = 2, seed = 2)"
    return energydsl.load(spec, set={"trees": 4, "lam": lam, "epochs": 2, "batch": 64}, data=world, seed=0)


def test_tree_spec_trains_and_its_tree_term_sparsifies_the_codes():
    """sae_tree's ReLU encoder learns to reconstruct, and the tree term (a sum of subtree norms,
    checked by hand) lowers the held-out L0 against the same run without it."""
    free, sparse = tree_model(0.0), tree_model(0.3)
    z = torch.zeros(1, 28)
    # forest(4, 2, 2): roots 0-3, children 4-11 (4, 5 of root 0), grandchildren 12-27 (14, 15 of unit 5)
    z[0, [0, 5, 14]] = torch.tensor([1.0, 2.0, 2.0])  # groups: 0 holds all three, 5 holds 5 and 14, 14 itself
    assert sparse.terms(sparse.dataset.x_test[:1], z)["tree"].item() == pytest.approx(0.3 * (3 + 8**0.5 + 2))
    for model in (free, sparse):
        energydsl.train(model)
    assert evaluate(free, free.dataset)["explained_variance"] > 0.6
    assert held_out_l0(sparse) < 0.5 * held_out_l0(free)
