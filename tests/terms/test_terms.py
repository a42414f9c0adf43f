"""Numerical tests of the energy terms, their proximal operators and the constraint projections.

Every prox is checked against a generic convex solver (cvxpy): the solution of
argmin_u ½‖u − v‖² + τ·h(u), solved per sample in float64, must match the closed
form to ~1e-6.  Energies are checked against direct numpy formulas, and the
projections against their defining properties (feasible, idempotent, nearest).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from energydsl.api import compile_program
from energydsl.model import EnergyModel
from energydsl.ops.constraints import Constraint
from energydsl.ops.pools import PoolFamily, blocks
from energydsl.solvers.prox import make_prox
from energydsl.terms import TERMS

M = 12  # latent size of the prox tests
# two disjoint pools; units 3, 4, 9, 10, 11 belong to no pool
POOLS = ((0, 1, 2, 5), (6, 7, 8))
FAMILY = PoolFamily("P", M, ("p1", "p2"), POOLS)
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-6}



PROX_SPEC = """
model proxes
data synthetic(dim = 4)
const a = 1
const b = 1
input x[4]
latent z[12] {bound}
pool p1 = z[0:3, 5]
pool p2 = z[6:9]
pools P = [p1, p2]
param W[4, 12]
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : a * l1(z)
  group  : b * group_l2(z, P)
"""


# --------------------------------------------------------------------------- reference solver


def solve(problem: cp.Problem) -> None:
    """Solve to high accuracy: SCS (first-order, converges linearly on these small problems) reaches
    ~1e-10 where an interior-point method stops ~1e-5 away from the kinks of the norms."""
    problem.solve(solver="SCS", eps_abs=1e-12, eps_rel=1e-12, max_iters=200_000)
    assert problem.status == cp.OPTIMAL


def cvx_prox(v: np.ndarray, tau: float, *, l1: float = 0.0, group: float = 0.0, groups=POOLS, nonneg=False):
    """argmin_u ½‖u − v‖² + τ(l1·‖u‖₁ + group·Σ_g ‖u_g‖₂)  (s.t. u ≥ 0), by cvxpy, in float64."""
    u = cp.Variable(v.shape[0])
    penalty = 0
    if l1:
        penalty = penalty + l1 * cp.norm1(u)
    if group:
        penalty = penalty + group * sum(cp.norm(u[list(g)], 2) for g in groups)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(u - v) + tau * penalty), [u >= 0] if nonneg else [])
    solve(problem)
    return np.asarray(u.value)


def cvx_batch(v: torch.Tensor, tau: torch.Tensor, **kw) -> np.ndarray:
    v64 = v.double().numpy()
    taus = tau.double().numpy().reshape(-1)
    return np.stack([cvx_prox(v64[i], float(taus[i]), **kw) for i in range(v64.shape[0])])


def random_batch(dtype, seed, batch=4, m=M, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    v = (scale * torch.randn(batch, m, generator=gen, dtype=torch.float64)).to(dtype)
    tau = (0.2 + torch.rand(batch, 1, generator=gen, dtype=torch.float64)).to(dtype)
    return v, tau


def bound_terms(nonneg: bool, a: float, b: float):
    """The compiled l1 and group_l2 terms (weights a and b) of a spec with disjoint pools."""
    source = PROX_SPEC.format(bound=">= 0" if nonneg else "")
    program = compile_program(source, set={"a": a, "b": b}, data_info=((4,), None))
    terms = {t.name: t for t in program.terms}
    assert program.nonneg == nonneg
    return program, terms["sparse"], terms["group"]


def composed_prox(terms, nonneg: bool):
    """The prox FISTA takes for these compiled terms: (v, τ) ↦ argmin_u ½‖u − v‖² + τ·Σ terms(u)."""
    prox, curvature = make_prox([(t, ()) for t in terms], nonneg)
    assert curvature == 0  # l1 and group norms need no extra step-size margin
    return lambda v, tau: prox(v, tau, v)


def l1_prox():
    _, l1_term, _ = bound_terms(False, 1.0, 1.0)
    return composed_prox([l1_term], False)


# --------------------------------------------------------------------------- single proxes


@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_prox_matches_cvxpy(dtype):
    v, tau = random_batch(dtype, 1)
    out = l1_prox()(v, tau)
    assert out.dtype == dtype and out.shape == v.shape
    np.testing.assert_allclose(out.double().numpy(), cvx_batch(v, tau, l1=1.0), atol=TOL[dtype])


def test_l1_prox_scalar_tau_matches_cvxpy():
    v, _ = random_batch(torch.float64, 2)
    out = l1_prox()(v, 0.6)
    np.testing.assert_allclose(out.numpy(), cvx_batch(v, torch.full((v.shape[0], 1), 0.6), l1=1.0), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l2_prox_matches_cvxpy_with_unpooled_units(dtype):
    v, tau = random_batch(dtype, 3)
    v[0, [6, 7, 8]] = 0.05  # a pool shrunk to exactly zero
    v[1, [0, 1, 2, 5]] = 0.0  # a pool already at zero: no division by zero
    term = TERMS["group_l2"]({"pools": FAMILY})
    out = term.prox(v, tau)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = cvx_batch(v, tau, group=1.0)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=TOL[dtype])
    # units in no pool are untouched, bit for bit
    free = [3, 4, 9, 10, 11]
    assert torch.equal(out[:, free], v[:, free])
    assert torch.equal(out[0, [6, 7, 8]], torch.zeros(3, dtype=dtype))


def test_group_l2_prox_blocks_with_partial_last_block():
    family = blocks("P", 11, 4)  # blocks of 4, 4 and 3 units
    groups = family.members
    assert [len(g) for g in groups] == [4, 4, 3]
    v, tau = random_batch(torch.float64, 4, m=11)
    out = TERMS["group_l2"]({"pools": family}).prox(v, tau)
    np.testing.assert_allclose(out.numpy(), cvx_batch(v, tau, group=1.0, groups=groups), atol=1e-6)


# --------------------------------------------------------------------------- composed proxes


COMBINATIONS = {
    "nonneg+l1": dict(nonneg=True, use_l1=True, use_group=False),
    "l1+group": dict(nonneg=False, use_l1=True, use_group=True),
    "nonneg+l1+group": dict(nonneg=True, use_l1=True, use_group=True),
    "nonneg+group": dict(nonneg=True, use_l1=False, use_group=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("combo", list(COMBINATIONS))
@pytest.mark.parametrize("seed", [0, 1])
def test_composed_prox_matches_cvxpy(combo, dtype, seed):
    case = COMBINATIONS[combo]
    rng = np.random.default_rng(100 + seed)
    a, b = (float(w) for w in rng.uniform(0.1, 1.0, 2))
    _, l1_term, group_term = bound_terms(case["nonneg"], a, b)
    assert (l1_term.weight, group_term.weight) == pytest.approx((a, b))
    chosen = [t for t, used in ((group_term, case["use_group"]), (l1_term, case["use_l1"])) if used]
    prox = composed_prox(chosen, case["nonneg"])  # given out of order on purpose
    v, tau = random_batch(dtype, 10 + seed, batch=5)
    out = prox(v, tau)
    assert out.dtype == dtype and out.shape == v.shape
    expected = cvx_batch(
        v, tau, l1=a if case["use_l1"] else 0.0, group=b if case["use_group"] else 0.0, nonneg=case["nonneg"]
    )
    np.testing.assert_allclose(out.double().numpy(), expected, atol=TOL[dtype])


def test_model_problem_prox_is_the_composed_prox():
    """The prox FISTA uses for a spec is the exact prox of its nonsmooth terms (and z ≥ 0)."""
    a, b = 0.37, 0.81
    source = PROX_SPEC.format(bound=">= 0")
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(20))
    model = EnergyModel(compile_program(source, set={"a": a, "b": b}, data_info=((4,), None)), x)
    problem = model.problem(model.preprocess(x[:5]), None, None)
    v, tau = random_batch(torch.float32, 21, batch=5)
    out = problem.prox(v, tau, v)
    expected = cvx_batch(v, tau, l1=a, group=b, nonneg=True)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=TOL[torch.float32])


# nested (laminar) and overlapping families, with and without l1 and z >= 0
FAMILIES = {
    "nested": ((0, 1, 2, 3, 4, 5), (0, 1, 2), (3, 4), (8, 9, 10)),
    "overlapping": ((0, 1, 2, 3), (2, 3, 4, 5), (5, 6, 7), (9, 10, 11)),
}


def family_prox(members, with_l1: bool, nonneg: bool):
    """The prox FISTA takes for a spec with these pools (each declared as a range)."""
    pools = "\n".join(f"pool p{i} = z[{g[0]}:{g[-1] + 1}]" for i, g in enumerate(members))
    assert all(list(g) == list(range(g[0], g[-1] + 1)) for g in members)
    names = ", ".join(f"p{i}" for i in range(len(members)))
    source = f"""
model families
data synthetic(dim = 4)
input x[4]
latent z[12] {">= 0" if nonneg else ""}
{pools}
pools P = [{names}]
param W[4, 12]
energy
  recon  : 0.5 * sqerr(x, W @ z)
  group  : group_l2(z, P)
{"  sparse : 0.3 * l1(z)" if with_l1 else ""}
"""
    program = compile_program(source, data_info=((4,), None))
    return composed_prox([t for t in program.terms if not t.term.smooth], nonneg)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("with_l1", [False, True])
@pytest.mark.parametrize("kind", list(FAMILIES))
def test_group_prox_of_nested_and_overlapping_pools_matches_cvxpy(kind, with_l1, nonneg):
    members = FAMILIES[kind]
    v, tau = random_batch(torch.float64, 80 + len(kind), batch=4)
    out = family_prox(members, with_l1, nonneg)(v, tau).numpy()
    expected = cvx_batch(v, tau, l1=0.3 if with_l1 else 0.0, group=1.0, groups=members, nonneg=nonneg)

    def objective(u):
        vv, t = v.numpy(), tau.numpy().ravel()
        pen = sum(np.linalg.norm(u[:, list(g)], axis=1) for g in members) + (0.3 * np.abs(u).sum(1) if with_l1 else 0)
        return 0.5 * ((u - vv) ** 2).sum(1) + t * pen

    # overlapping pools are solved iteratively (by the dual, to a small duality gap): compare the
    # objectives tightly and the points to what such a gap allows (strong convexity: ‖Δu‖² ≤ 2·gap)
    assert np.all(objective(out) <= objective(expected) * (1 + 1e-9) + 1e-12)
    np.testing.assert_allclose(out, expected, atol=1e-6 if kind == "nested" else 1e-4)
    if nonneg:
        assert (out >= 0).all()


# --------------------------------------------------------------------------- prox properties


def test_moreau_decomposition_l1():
    """prox_{τλ‖·‖₁}(v) + Π_{‖·‖∞ ≤ τλ}(v) = v  (the conjugate is the indicator of the ∞-ball)."""
    v, tau = random_batch(torch.float64, 30, batch=6, scale=3.0)
    lam = 0.7
    radius = tau * lam
    prox_f = l1_prox()(v, radius)
    prox_conj = torch.maximum(torch.minimum(v, radius), -radius)
    torch.testing.assert_close(prox_f + prox_conj, v, rtol=0, atol=1e-12)
    # and the two parts are orthogonal-complementary: <prox_f, prox_conj> = τλ‖prox_f‖₁
    inner = (prox_f * prox_conj).sum(dim=1)
    torch.testing.assert_close(inner, radius.squeeze(1) * prox_f.abs().sum(dim=1), rtol=1e-12, atol=1e-12)


def test_moreau_decomposition_group_l2():
    """The conjugate of Σ_g‖u_g‖ is the indicator of {‖y_g‖ ≤ 1 per pool, y = 0 off the pools}."""
    v, tau = random_batch(torch.float64, 31, batch=6, scale=2.0)
    prox_f = TERMS["group_l2"]({"pools": FAMILY}).prox(v, tau)
    projection = torch.zeros_like(v)
    for g in POOLS:
        block = v[:, list(g)]
        norms = block.norm(dim=1, keepdim=True)
        projection[:, list(g)] = block * torch.clamp(tau / norms, max=1)
    torch.testing.assert_close(prox_f + projection, v, rtol=0, atol=1e-12)


def all_proxes():
    _, l1_term, group_term = bound_terms(True, 0.4, 0.9)
    overlapping = PoolFamily("Q", M, ("a", "b", "c"), FAMILIES["overlapping"][:3])
    return {
        "l1": l1_prox(),
        "group_l2": TERMS["group_l2"]({"pools": FAMILY}).prox,
        "overlapping": TERMS["group_l2"]({"pools": overlapping}).prox,
        "nonneg+l1+group": composed_prox([l1_term, group_term], True),
        "l1+group": composed_prox([l1_term, group_term], False),
    }


@pytest.mark.parametrize("name", ["l1", "group_l2", "overlapping", "nonneg+l1+group", "l1+group"])
def test_prox_is_nonexpansive(name):
    prox = all_proxes()[name]
    gen = torch.Generator().manual_seed(40)
    a = torch.randn(200, M, generator=gen, dtype=torch.float64)
    b = a + torch.randn(200, M, generator=gen, dtype=torch.float64) * torch.rand(200, 1, generator=gen)
    tau = 0.1 + torch.rand(200, 1, generator=gen, dtype=torch.float64)
    pa, pb = prox(a, tau), prox(b, tau)
    slack = 1e-12 if name != "overlapping" else 1e-6  # an iterative prox is exact to its tolerance
    moved = (pa - pb).norm(dim=1)
    assert (moved <= (a - b).norm(dim=1) + slack).all()
    # firmly non-expansive: ‖Pa − Pb‖² ≤ <Pa − Pb, a − b>
    inner = ((pa - pb) * (a - b)).sum(dim=1)
    assert (moved**2 <= inner + slack).all()


@pytest.mark.parametrize("name", ["l1", "group_l2", "nonneg+l1+group"])
def test_prox_with_zero_tau_is_identity_on_feasible_points(name):
    prox = all_proxes()[name]
    v, _ = random_batch(torch.float64, 41)
    if name.startswith("nonneg"):
        v = v.abs()
    torch.testing.assert_close(prox(v, torch.zeros(v.shape[0], 1, dtype=v.dtype)), v, rtol=0, atol=0)


# --------------------------------------------------------------------------- energies


def test_sqerr_energy_matches_numpy():
    gen = torch.Generator().manual_seed(50)
    a = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    out = TERMS["sqerr"]({}).energy(a, b)
    assert out.shape == (5,)
    expected = ((a.numpy() - b.numpy()) ** 2).reshape(5, -1).sum(axis=1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_l1_energy_matches_numpy():
    v, _ = random_batch(torch.float64, 51)
    np.testing.assert_allclose(TERMS["l1"]({}).energy(v).numpy(), np.abs(v.numpy()).sum(axis=1), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l2_energy_matches_numpy(dtype):
    v, _ = random_batch(dtype, 52)
    out = TERMS["group_l2"]({"pools": FAMILY}).energy(v)
    assert out.dtype == dtype
    v64 = v.double().numpy()
    expected = sum(np.linalg.norm(v64[:, list(g)], axis=1) for g in POOLS)  # unpooled units do not count
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_xent_energy_matches_numpy():
    gen = torch.Generator().manual_seed(53)
    logits = 4 * torch.randn(7, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,), generator=gen)
    out = TERMS["xent"]({"classes": 5}).energy(logits, labels)
    z = logits.numpy()
    expected = logsumexp(z, axis=1) - z[np.arange(7), labels.numpy()]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


MODEL_SPEC = """
model energies
data synthetic(dim = 6)
const lam = 0.3
const mu = 0.7
input x[6] normalize l2
label y : 3 classes
latent z[8]
pool p1 = z[0:3]
pool p2 = z[4:7]
pools P = [p1, p2]
param W[6, 8] init normal(0.5)
param C[3, 8] init normal(1.0)
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
  group  : mu / 2 * group_l2(z, P)
  class  : 2 * xent(C @ normalize(z), y)
"""


def test_compiled_model_terms_match_numpy():
    """model.terms: each weighted term of a spec against the formula written out in numpy."""
    gen = torch.Generator().manual_seed(54)
    x = torch.randn(5, 6, generator=gen)
    z = torch.randn(5, 8, generator=gen)
    y = torch.tensor([0, 2, 1, 1, 0])
    program = compile_program(MODEL_SPEC, data_info=((6,), 3))
    model = EnergyModel(program, x)
    terms = model.terms(x, z, y)
    assert list(terms) == ["recon", "sparse", "group", "class"]
    W, C = (model.params[n].detach().double().numpy() for n in ("W", "C"))
    xs = x.double().numpy()
    xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)  # normalize l2 is part of the model
    zs = z.double().numpy()
    logits = (zs / np.linalg.norm(zs, axis=1, keepdims=True)) @ C.T
    expected = {
        "recon": 0.5 * ((xs - zs @ W.T) ** 2).sum(axis=1),
        "sparse": 0.3 * np.abs(zs).sum(axis=1),
        "group": 0.35 * (np.linalg.norm(zs[:, 0:3], axis=1) + np.linalg.norm(zs[:, 4:7], axis=1)),
        "class": 2 * (logsumexp(logits, axis=1) - logits[np.arange(5), y.numpy()]),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name].detach().double().numpy(), value, rtol=1e-5, err_msg=name)
    total = model.energy(x, z, y).detach().double().numpy()
    np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-5)
    # without a label the class term is left out
    assert list(model.terms(x, z)) == ["recon", "sparse", "group"]


# --------------------------------------------------------------------------- constraints


def random_matrix(seed, shape=(6, 5), scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def projected(constraint: Constraint, p: torch.Tensor, mask=None) -> torch.Tensor:
    out = p.clone()
    constraint.project(out, mask)
    return out


NORMS = {
    "col_norm": lambda p: p.norm(dim=0),
    "row_norm": lambda p: p.norm(dim=1),
    "norm": lambda p: p.norm().reshape(1),
}


@pytest.mark.parametrize("kind", list(NORMS))
def test_norm_equality_projection(kind):
    c = 1.7
    constraint = Constraint(kind, "==", c)
    p = random_matrix(60)
    out = projected(constraint, p)
    torch.testing.assert_close(NORMS[kind](out), torch.full_like(NORMS[kind](out), c), rtol=1e-12, atol=0)
    # the nearest point of the sphere is the rescaled direction: same direction as p
    direction = {"col_norm": 0, "row_norm": 1}.get(kind)
    if direction is None:
        torch.testing.assert_close(out, p * (c / p.norm()))
    else:
        torch.testing.assert_close(out, p * (c / p.norm(dim=direction, keepdim=True)))
    torch.testing.assert_close(projected(constraint, out), out, rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", list(NORMS))
def test_norm_ball_projection(kind):
    c = {"col_norm": 2.5, "row_norm": 2.5, "norm": 8.0}[kind]
    constraint = Constraint(kind, "<=", c)
    p = random_matrix(61)
    norms = NORMS[kind](p)
    assert (norms > c).any() and (norms < c).any() or kind == "norm"  # a mix of inside and outside
    out = projected(constraint, p)
    assert (NORMS[kind](out) <= c * (1 + 1e-12)).all()
    # entries of columns/rows already inside the ball are untouched; the others land on the sphere
    inside = norms <= c
    new_norms = NORMS[kind](out)
    torch.testing.assert_close(new_norms[~inside], torch.full_like(new_norms[~inside], c), rtol=1e-12, atol=0)
    if kind == "col_norm":
        assert torch.equal(out[:, inside], p[:, inside])
    elif kind == "row_norm":
        assert torch.equal(out[inside, :], p[inside, :])
    torch.testing.assert_close(projected(constraint, out), out, rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", list(NORMS))
def test_norm_ball_leaves_inside_points_unchanged(kind):
    p = random_matrix(62, scale=0.05)
    out = projected(Constraint(kind, "<=", 3.0), p)
    assert torch.equal(out, p)


def test_norm_ball_projection_is_nearest_point():
    """Column-norm ball: the result is the Euclidean projection (checked with cvxpy)."""
    p = random_matrix(63)
    c = 2.0
    out = projected(Constraint("col_norm", "<=", c), p)
    U = cp.Variable(p.shape)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(U - p.numpy())), [cp.norm(U, 2, axis=0) <= c])
    solve(problem)
    np.testing.assert_allclose(out.numpy(), U.value, atol=1e-6)


def test_nonneg_projection():
    p = random_matrix(64)
    out = projected(Constraint("nonneg"), p)
    assert (out >= 0).all()
    assert torch.equal(out[p >= 0], p[p >= 0])
    assert torch.equal(projected(Constraint("nonneg"), out), out)


def test_symmetric_projection():
    p = random_matrix(65, shape=(5, 5))
    out = projected(Constraint("symmetric"), p)
    assert torch.equal(out, out.T)
    torch.testing.assert_close(out, (p + p.T) / 2)
    torch.testing.assert_close(projected(Constraint("symmetric"), out), out, rtol=0, atol=0)


def test_zero_diag_projection():
    p = random_matrix(66, shape=(5, 5))
    out = projected(Constraint("zero_diag"), p)
    assert torch.equal(out.diagonal(), torch.zeros(5, dtype=out.dtype))
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(out[off], p[off])
    assert torch.equal(projected(Constraint("zero_diag"), out), out)


def test_mask_projection():
    p = random_matrix(67)
    gen = torch.Generator().manual_seed(68)
    mask = (torch.rand(p.shape, generator=gen) < 0.5).double()
    out = projected(Constraint("mask"), p, mask)
    assert torch.equal(out[mask == 0], torch.zeros_like(out[mask == 0]))
    assert torch.equal(out[mask == 1], p[mask == 1])
    assert torch.equal(projected(Constraint("mask"), out, mask), out)


CONSTRAINED_SPEC = """
model constrained
data synthetic(dim = 4)
input x[4]
latent z[5]
param W[4, 5]
param S[5, 5] init normal(2.0) constrain {constraints}
energy
  recon : 0.5 * sqerr(x, W @ z)
  lat   : 0.5 * sqerr(z, S @ z)
"""


def build_constrained(constraints: str) -> EnergyModel:
    program = compile_program(CONSTRAINED_SPEC.format(constraints=constraints), data_info=((4,), None))
    return EnergyModel(program, torch.randn(4, 4))


def test_mask_constraint_of_a_spec_is_idempotent():
    """A mask is a support: projecting twice must not shrink the kept entries again.

    (A mask whose entries are not 0/1 would rescale them at every step; either the
    spec is refused, or the projection keeps the entries where the mask is nonzero.)
    """
    from energydsl.errors import SpecError

    try:
        model = build_constrained("mask 0.5 * (ones - I)")
    except SpecError:
        return  # refusing a non-binary mask is a correct answer too
    S = model.params["S"]
    with torch.no_grad():
        S.copy_(random_matrix(69, shape=(5, 5)).float())
    model.project_()
    once = S.detach().clone()
    model.project_()
    assert torch.equal(S.detach(), once)
    assert torch.equal(once.diagonal(), torch.zeros(5))


def test_combined_projection_is_exact():
    """``S ≥ 0, symmetric, zero_diag, mask M, norm ≤ c`` is projected exactly (constraints.py docstring)."""
    model = build_constrained("nonneg, symmetric, zero_diag, mask ones - I, norm <= 1.5")
    S = model.params["S"]
    start = random_matrix(70, shape=(5, 5)).float()
    with torch.no_grad():
        S.copy_(start)
    model.project_()
    out = S.detach().double()
    # feasible
    assert (out >= 0).all() and torch.equal(out, out.T) and (out.diagonal() == 0).all()
    assert out.norm() <= 1.5 * (1 + 1e-6)
    # idempotent
    model.project_()
    torch.testing.assert_close(S.detach().double(), out, rtol=1e-6, atol=1e-7)
    # nearest feasible point
    U = cp.Variable((5, 5))
    constraints = [U >= 0, U == U.T, cp.diag(U) == 0, cp.norm(U, "fro") <= 1.5]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(U - start.double().numpy())), constraints)
    solve(problem)
    np.testing.assert_allclose(out.numpy(), U.value, atol=1e-5)


@pytest.mark.parametrize(
    "constraints, check",
    [
        ("nonneg", lambda S: (S >= 0).all()),
        ("symmetric", lambda S: torch.equal(S, S.T)),
        ("zero_diag", lambda S: (S.diagonal() == 0).all()),
        ("col_norm == 1", lambda S: torch.allclose(S.norm(dim=0), torch.ones(5))),
        ("row_norm <= 0.5", lambda S: (S.norm(dim=1) <= 0.5 + 1e-6).all()),
        ("mask ones - I", lambda S: (S.diagonal() == 0).all()),
    ],
)
def test_model_projection_feasible_and_idempotent(constraints, check):
    model = build_constrained(constraints)
    S = model.params["S"]
    assert check(S.detach())  # already projected at initialisation
    with torch.no_grad():
        S.copy_(random_matrix(71, shape=(5, 5)).float())
    model.project_()
    once = S.detach().clone()
    assert check(once)
    model.project_()
    torch.testing.assert_close(S.detach(), once, rtol=1e-6, atol=0)
