"""Certified inference: the duality gap bounds the true distance to the optimum, found by cvxpy.

For every structure the certificate covers (the lasso, with and without z ≥ 0, and with a weight
per unit, ``l1(z * s)``; disjoint,
nested, overlapping and tree-structured pools beside an l1 term), codes at several stages
of FISTA are certified, and each sample's bound is compared with its true gap E(z) − E*,
E* from cvxpy in float64: never below it, and down to 1e-9 of the energy at convergence.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import energydsl
from energydsl.errors import SpecError

SPEC = """
model certified
data synthetic(dim = 16, atoms = {units}, k = 4, count = 60, noise = 0.3)
const lam = 0.05
input x[16]
latent z[{units}] {bound}
{structure}
param W[16, {units}] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  {sparse}
{group}
infer z by fista(steps = 20000, gap = 1e-9)
"""

STRUCTURES = {
    "lasso": ("", "sparse : lam * l1(z)", "", 40),
    "nonneg lasso": ("", "sparse : lam * l1(z)", "", 40),
    "weighted lasso": ("param s[40] init uniform(2) learn fixed", "sparse : lam * l1(z * s)", "", 40),
    "disjoint pools": ("pools P = blocks(z, 4)", "sparse : lam * l1(z)", "  group : 0.1 * group_l2(z, P)", 40),
    "nested pools": ("pools A = blocks(z, 4)\npools B = blocks(z, 8)\npools P = [A, B]", "sparse : lam * l1(z)",
                     "  group : 0.1 * group_l2(z, P)", 40),
    "overlapping pools": ("graph M = torus(6, 6)\npools P = windows(M, size = 3, stride = 1)", "sparse : lam * l1(z)",
                          "  group : 0.05 * group_l2(z, P)", 36),
    "tree": ("graph T = tree(branching = 2, depth = 4)", "sparse : lam * l1(z)", "  tree : 0.1 * tree_group(z, T)", 31),
}


def build(name: str, double: bool = True):
    structure, sparse, group, units = STRUCTURES[name]
    bound = ">= 0" if name == "nonneg lasso" else ""
    model = energydsl.load(SPEC.format(units=units, bound=bound, structure=structure, sparse=sparse, group=group))
    model = model.double() if double else model
    return model, model.dataset.x_test[:8].double()


def optimum(model, x: torch.Tensor) -> np.ndarray:
    """E* per sample by cvxpy, from the model's own dictionary, weights and pools, in float64."""
    W = model.params["W"].detach().double().numpy()
    units = W.shape[1]
    terms = {t.name: t for t in model.program.terms}
    best = []
    for xi in x.numpy():
        u = cp.Variable(units)
        scale = model.params["s"].detach().double().abs().numpy() if "s" in model.params else 1.0
        objective = 0.5 * cp.sum_squares(xi - W @ u) + terms["sparse"].weight * cp.norm1(cp.multiply(scale, u))
        for name in ("group", "tree"):
            if name in terms:
                family = terms[name].term.norms.family
                weights = family.weights or [[1.0] * len(pool) for pool in family.members]
                objective += terms[name].weight * sum(cp.norm(cp.multiply(np.sqrt(w), u[list(pool)]), 2)
                                                     for pool, w in zip(family.members, weights))  # fmt: skip
        constraints = [u >= 0] if model.program.nonneg else []
        problem = cp.Problem(cp.Minimize(objective), constraints)
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
        best.append(problem.value)
    return np.array(best)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_the_gap_bounds_the_true_gap_and_vanishes_at_the_optimum(name):
    model, x = build(name)
    best = optimum(model, x)
    for steps in (2, 10, 50):  # far from the optimum, then closer
        certificate = model.infer(x, steps=steps, tol=0, certify=True)
        true = certificate.energy.numpy() - best
        assert (certificate.gap.numpy() >= true - 1e-9 * np.abs(best)).all(), (steps, certificate.gap, true)
        assert (certificate.lower.numpy() <= best + 1e-9 * np.abs(best)).all()
    converged = model.infer(x, certify=True)  # the spec's fista(gap = 1e-9)
    assert (converged.relative <= 1e-9).all()
    np.testing.assert_allclose(converged.energy.numpy(), best, rtol=1e-8)


def test_the_gap_shrinks_as_fista_converges():
    model, x = build("disjoint pools")
    gaps = [model.infer(x, steps=steps, tol=0, certify=True).gap.max().item() for steps in (5, 50, 500)]
    assert gaps[0] > gaps[1] > gaps[2]


def test_fista_stops_on_the_gap_in_float32_too():
    model, x = build("lasso", double=False)
    certificate = model.infer(x.float(), gap=1e-5, certify=True)
    assert (certificate.relative <= 1e-5).all()


def test_codes_that_break_z_nonneg_have_no_finite_gap():
    model, x = build("nonneg lasso")
    z = model.infer(x)
    z[0, 0] = -1.0
    gap = model.certificate(x, z).gap
    assert gap[0] == float("inf") and bool(gap[1:].isfinite().all())


INHIBITED = SPEC.format(units=40, bound=">= 0", structure="param S[40, 40] init zeros",
                        sparse="sparse : lam * l1(z)\n  inhibit : 0.1 * inhibition(z, S)", group="")  # fmt: skip


def test_an_energy_without_a_dual_is_refused_in_one_line():
    model = energydsl.load(INHIBITED.replace("fista(steps = 20000, gap = 1e-9)", "ista(steps = 50)"))
    with pytest.raises(ValueError, match="no duality gap for this energy: the term 'inhibit' is not a norm"):
        model.infer(model.dataset.x_test[:4], certify=True)


def test_a_gap_stopping_rule_on_an_energy_without_one_is_a_spec_error():
    with pytest.raises(SpecError, match="no duality gap to stop on: the term 'inhibit'"):
        energydsl.load(INHIBITED.replace("infer z by fista", "infer z by ista"))
