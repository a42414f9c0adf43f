"""Structured sparsity is solved exactly: group proxes, FISTA and ISTA against cvxpy.

Everything runs in float64.  Every reference is written out independently with
cvxpy (or, for the nonconvex inhibition energy, in closed form), and the two
answers are compared by their objective value, evaluated the same way in numpy at
both points: ours must not be worse than cvxpy's by more than a relative 1e-6,
and the two points must be close.
"""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import energydsl
from energydsl.ops import structures as st
from energydsl.ops.pools import GroupNorms, PoolFamily
from energydsl.solvers.admm import admm
from energydsl.solvers.fista import fista
from energydsl.solvers.prox import Splitting, make_prox

REL = 1e-6  # relative objective gap allowed
DIST = 1e-5  # max |ours − cvxpy| per coordinate, for strongly convex problems
SOLVER = (
    {"solver": cp.CLARABEL, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    if cp.CLARABEL in cp.installed_solvers()
    else {}
)


# ---------------------------------------------------------------- helpers


def make_family(name, members, weights=None, size=None) -> PoolFamily:
    members = tuple(tuple(m) for m in members)
    size = size if size is not None else 1 + max(u for m in members for u in m)
    names = tuple(f"{name}[{i}]" for i in range(len(members)))
    return PoolFamily(name, size, names, members, None if weights is None else tuple(map(tuple, weights)))


def pool_scales(fam: PoolFamily) -> list[np.ndarray]:
    """a = sqrt(w) per pool: the pool's norm is ‖a ⊙ z_P‖."""
    if fam.weights is None:
        return [np.ones(len(m)) for m in fam.members]
    return [np.sqrt(np.array(w)) for w in fam.weights]


def group_penalty(u: np.ndarray, fam: PoolFamily) -> float:
    return float(sum(np.linalg.norm(a * u[list(m)]) for m, a in zip(fam.members, pool_scales(fam))))


def cvx_group_penalty(u: cp.Variable, fam: PoolFamily):
    return sum(cp.norm(cp.multiply(a, u[list(m)])) for m, a in zip(fam.members, pool_scales(fam)))


def solve(objective, variable: cp.Variable) -> np.ndarray:
    problem = cp.Problem(cp.Minimize(objective))
    with warnings.catch_warnings():  # at these tolerances CLARABEL may call its answer "inaccurate"
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(**SOLVER)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return np.asarray(variable.value, dtype=np.float64)


def assert_optimal(ours: float, reference: float, what: str) -> None:
    assert ours <= reference * (1 + REL) + 1e-12, f"{what}: objective {ours!r} vs cvxpy {reference!r}"


def per_sample(values, batch: int, m: int) -> np.ndarray:
    """A threshold given as a float, (B, 1) or (B, m): its (B, m) array."""
    if values is None:
        return np.zeros((batch, m))
    return np.broadcast_to(torch.as_tensor(values, dtype=torch.float64).numpy(), (batch, m)).copy()


def check_prox(gn: GroupNorms, v: torch.Tensor, tau, l1, nonneg: bool = False, u: torch.Tensor | None = None):
    """``u`` (default: gn.prox(v, tau, l1)) against cvxpy, sample by sample."""
    fam = gn.family
    batch, m = v.shape
    if u is None:
        u = gn.prox(v, tau, l1)
    assert u.shape == v.shape and u.dtype == torch.float64
    taus = per_sample(tau, batch, 1)[:, 0]
    thresholds = per_sample(l1, batch, m)
    V, U = v.numpy(), u.numpy()

    def objective(z, b):
        return 0.5 * np.sum((z - V[b]) ** 2) + taus[b] * group_penalty(z, fam) + thresholds[b] @ np.abs(z)

    for b in range(batch):
        x = cp.Variable(m, nonneg=nonneg)
        cost = 0.5 * cp.sum_squares(x - V[b]) + taus[b] * cvx_group_penalty(x, fam)
        if l1 is not None:
            cost = cost + thresholds[b] @ cp.abs(x)
        reference = solve(cost, x)
        if nonneg:
            reference = np.clip(reference, 0, None)
        assert_optimal(objective(U[b], b), objective(reference, b), f"sample {b}")
        np.testing.assert_allclose(U[b], reference, atol=DIST, rtol=0, err_msg=f"sample {b}")
    if nonneg:  # a hard constraint: not even a rounding error below zero
        assert (U >= 0).all(), U.min()
    return u


def random(shape, seed, scale=1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def dictionary(dim: int, n: int, seed: int) -> torch.Tensor:
    """A random ``(dim, n)`` dictionary with unit-norm columns."""
    W = random((dim, n), seed)
    return W / W.norm(dim=0)


TORUS = st.torus("M", 4, 4)
TREE = st.balanced_tree("T", 2, 3)  # 15 units
WINDOWS = make_family("P", st.windows(TORUS, 2, 1)[0])  # 16 windows, every unit in 4
B = 4

# ---------------------------------------------------------------- GroupNorms.prox


L1_CASES = {
    "none": lambda: None,
    "scalar": lambda: 0.15,
    "per-sample": lambda: torch.tensor([[0.05], [0.1], [0.2], [0.3]], dtype=torch.float64),
    "per-unit": lambda: random((B, 16), 7).abs() * 0.3,
}


@pytest.mark.parametrize("l1", L1_CASES)
def test_overlapping_windows_prox(l1):
    gn = GroupNorms(WINDOWS)
    assert gn.levels is None  # overlapping: the dual solver
    v = random((B, 16), 1)
    check_prox(gn, v, 0.3, L1_CASES[l1]())
    # again with other inputs and a per-sample tau: the warm start must not leak
    tau = torch.tensor([[0.1], [0.25], [0.4], [0.6]], dtype=torch.float64)
    check_prox(gn, random((B, 16), 2, scale=1.5), tau, L1_CASES[l1]())


def test_overlapping_windows_prox_many_memberships_with_l1():
    """8 × 8 torus, 4 × 4 windows every unit: each unit lies in 16 pools."""
    fam = make_family("P", st.windows(st.torus("M", 8, 8), 4, 1)[0])
    v = random((3, 64), 0)
    check_prox(GroupNorms(fam), v, 0.15, 0.5)


@pytest.mark.parametrize("l1", ["none", "scalar", "per-unit"])
def test_weighted_windows_prox(l1):
    pools, weights = st.windows(TORUS, 3, 1, sigma=1.0)  # 16 windows of 9, each unit in 9
    fam = make_family("P", pools, weights)
    gn = GroupNorms(fam)
    assert gn.levels is None
    v = random((B, 16), 3, scale=2.0)
    u = check_prox(gn, v, 0.6, L1_CASES[l1]())
    assert u.abs().max() > 0.1 and (u - v).abs().max() > 0.1  # neither zero nor the identity


@pytest.mark.parametrize("l1", ["none", "scalar", "per-sample", "per-unit"])
def test_subtree_prox_by_laminar_composition(l1):
    fam = make_family("T", st.subtrees(TREE), size=TREE.size)
    gn = GroupNorms(fam)
    assert gn.levels is not None and len(gn.levels) == 4  # laminar: block shrinks, leaves first
    v = random((B, 15), 4)
    thresholds = L1_CASES[l1]()
    if isinstance(thresholds, torch.Tensor) and thresholds.shape[1] == 16:
        thresholds = thresholds[:, :15]
    u = check_prox(gn, v, 0.12, thresholds)
    active = u.numpy() != 0
    assert active.any() and not active.all()
    if thresholds is None:
        # the support is a rooted subtree: a unit is active only if its parent is
        # (with an l1 part a parent can be thresholded away on its own)
        for b in range(B):
            for i in range(1, 15):
                assert not active[b, i] or active[b, TREE.parents[i]]
    # the same pools with unit weights take the dual path and must agree
    weighted = GroupNorms(make_family("T", fam.members, [[1.0] * len(m) for m in fam.members], size=15))
    assert weighted.levels is None
    check_prox(weighted, v, 0.12, thresholds)


def test_prox_warm_start_does_not_leak_between_calls():
    """The dual solver warm-starts from its previous call; a later call with or
    without an l1 part, another batch size or another τ must still be exact."""
    gn = GroupNorms(WINDOWS)
    v = random((B, 16), 13)
    check_prox(gn, v, 0.3, 0.2)
    check_prox(gn, v, 0.3, None)  # the l1 part dropped
    check_prox(gn, v[:3], 0.5, None)  # fewer samples
    check_prox(gn, v[:3], 0.2, 0.1)  # the l1 part back
    check_prox(gn, random((B, 16), 14), 0.4, L1_CASES["per-unit"]())


def test_float32_prox_is_not_slower_than_float64():
    """A warm-started prox at its own solution (FISTA near convergence) returns
    at the first gap check in float64; float32 must not run to its iteration cap
    instead (a tolerance below float32 precision)."""
    pools, weights = st.windows(TORUS, 3, 1, sigma=1.0)
    fam = make_family("P", pools, weights)
    v = random((B, 16), 3, scale=2.0)
    seconds, results = {}, {}
    for dtype in (torch.float64, torch.float32):
        gn = GroupNorms(fam)
        gn.prox(v.to(dtype), 0.3, 0.1)
        start = time.process_time()  # CPU time: other jobs on the machine do not count
        for _ in range(30):
            results[dtype] = gn.prox(v.to(dtype), 0.3, 0.1)
        seconds[dtype] = time.process_time() - start
    torch.testing.assert_close(results[torch.float32].double(), results[torch.float64], atol=1e-3, rtol=0)
    assert seconds[torch.float32] <= 5 * seconds[torch.float64] + 0.1, seconds


@pytest.mark.parametrize("sigma", [None, 1.0])
@pytest.mark.parametrize("l1", ["none", "scalar"])
def test_prox_with_units_in_no_pool(sigma, l1):
    """Grid windows every 3 units leave a row and a column uncovered: those units
    see only the l1 part (or nothing)."""
    pools, weights = st.windows(st.grid("G", 5, 5), 2, 3, sigma=sigma)
    fam = make_family("P", pools, weights, size=25)
    gn = GroupNorms(fam)
    assert (gn.levels is None) == (sigma is not None)
    v = random((3, 25), 15)
    u = check_prox(gn, v, 0.4, L1_CASES[l1]())
    free = sorted(set(range(25)) - {i for p in pools for i in p})
    assert free == [2, 7, 10, 11, 12, 13, 14, 17, 22]
    threshold = 0.0 if l1 == "none" else 0.15
    expected = torch.sign(v[:, free]) * torch.clamp(v[:, free].abs() - threshold, min=0)
    torch.testing.assert_close(u[:, free], expected, atol=1e-7, rtol=0)


def test_neighborhood_prox():
    fam = make_family("N", st.neighborhoods(TORUS, 1))
    check_prox(GroupNorms(fam), random((3, 16), 5), 0.2, 0.05)


def test_prox_edge_cases():
    gn = GroupNorms(WINDOWS)
    v = random((3, 16), 6)
    zeros = torch.zeros_like(v)
    torch.testing.assert_close(gn.prox(v, 0.0), v)  # no penalty: the identity
    torch.testing.assert_close(gn.prox(v, 100.0), zeros, atol=1e-12, rtol=0)  # a huge penalty: zero
    torch.testing.assert_close(gn.prox(v, 0.0, 100.0), zeros, atol=1e-12, rtol=0)
    # norms: one per sample and pool
    norms = gn.norms(v)
    assert norms.shape == (3, 16)
    expected = [[np.linalg.norm(v[b, list(m)].numpy()) for m in WINDOWS.members] for b in range(3)]
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-12)


# ---------------------------------------------------------------- make_prox

PROX_SPEC = """
model prox
data synthetic(dim = 8, atoms = {n}, count = 40)
const lam = {lam}
const mu = {mu}
input x[8]
latent z[{n}]{bound}
graph M = torus(4, 4)
graph T = tree(branching = 2, depth = 3)
pools P = windows(M, size = 2, stride = 1)
param W[8, {n}]
energy
  recon : 0.5 * sqerr(x, W @ z)
  {terms}
"""


def bound_terms(terms: str, n: int = 16, lam: float = 0.4, mu: float = 0.2, nonneg: bool = True):
    source = PROX_SPEC.format(n=n, lam=lam, mu=mu, bound=" >= 0" if nonneg else "", terms=terms)
    graphs = "graph M = torus(4, 4)\n" if n == 16 else "graph T = tree(branching = 2, depth = 3)\n"
    source = source.replace("graph M = torus(4, 4)\ngraph T = tree(branching = 2, depth = 3)\n", graphs)
    if n != 16:
        source = source.replace("pools P = windows(M, size = 2, stride = 1)\n", "")
    program = energydsl.compile_program(source)
    assert program.nonneg is nonneg
    return {t.name: t for t in program.terms}


STEP = torch.tensor([[0.5], [1.0], [0.8], [0.3]], dtype=torch.float64)


def test_make_prox_nonneg_group():
    terms = bound_terms("group : lam * group_l2(z, P)")
    prox, curvature = make_prox([(terms["group"], ())], nonneg=True)
    assert curvature == 0
    v = random((B, 16), 8)
    u = prox(v, STEP, v)
    check_prox(terms["group"].term.norms, v, STEP * 0.4, None, nonneg=True, u=u)


def test_make_prox_nonneg_l1_and_overlapping_group():
    terms = bound_terms("group : lam * group_l2(z, P)\n  sparse : mu * l1(z)")
    parts = [(terms["sparse"], ()), (terms["group"], ())]
    prox, curvature = make_prox(parts, nonneg=True)
    assert curvature == 0
    v = random((B, 16), 9, scale=1.5)
    u = prox(v, STEP, v)
    check_prox(terms["group"].term.norms, v, STEP * 0.4, STEP * 0.2, nonneg=True, u=u)
    assert (u > 0).any()


@pytest.mark.parametrize("nonneg", [True, False])
def test_make_prox_tree_group_and_l1(nonneg):
    terms = bound_terms("tree : lam * tree_group(z, T)\n  sparse : mu * l1(z)", n=15, lam=0.15, mu=0.1,
                        nonneg=nonneg)  # fmt: skip
    prox, _ = make_prox([(terms["tree"], ()), (terms["sparse"], ())], nonneg=nonneg)
    v = random((B, 15), 10)
    u = prox(v, STEP, v)
    check_prox(terms["tree"].term.norms, v, STEP * 0.15, STEP * 0.1, nonneg=nonneg, u=u)


def test_make_prox_inhibition_threshold_and_curvature(tree_inhibition_source):
    source = tree_inhibition_source
    terms = {t.name: t for t in energydsl.compile_program(source).terms}
    S = torch.from_numpy(st.tree_inhibition(TREE)).double()
    prox, curvature = make_prox([(terms["sparse"], ()), (terms["inhibit"], (S,))], nonneg=False)
    assert curvature == pytest.approx(2 * 0.05 * np.linalg.eigvalsh(S.numpy())[-1], rel=1e-9)
    v, at = random((B, 15), 11), random((B, 15), 12)
    threshold = STEP * (0.1 + 2 * 0.05 * at.abs() @ S)  # S symmetric: (S + Sᵀ)|z| = 2S|z|
    expected = torch.sign(v) * torch.clamp(v.abs() - threshold, min=0)
    torch.testing.assert_close(prox(v, STEP, at), expected)


# ---------------------------------------------------------------- inference with group terms

GROUP_SPEC = """
model structured
data synthetic(dim = {dim}, atoms = {n}, count = 40)
const lam = {lam}
input x[{dim}]
latent z[{n}]{bound}
{structure}
param W[{dim}, {n}] init samples(x) constrain col_norm == 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : lam * {term}
{extra}
infer z by fista(steps = 50, tol = 1e-3)
"""
CASES = {
    "windows": dict(n=16, lam=0.4, term="group_l2(z, P)",
                    structure="graph M = torus(4, 4)\npools P = windows(M, size = 2, stride = 1)"),
    "weighted windows": dict(n=16, lam=0.35, term="group_l2(z, P)",
                             structure="graph M = torus(4, 4)\npools P = windows(M, size = 3, stride = 1, sigma = 1)"),
    "tree": dict(n=15, lam=0.1, term="tree_group(z, T)", structure="graph T = tree(branching = 2, depth = 3)"),
}  # fmt: skip
DIM = 24  # more inputs than units: a unique optimum, so the points can be compared too


def structured_model(case: str, bound: str = "", extra: str = ""):
    options = CASES[case]
    source = GROUP_SPEC.format(dim=DIM, bound=bound, extra=extra, **options)
    model = energydsl.load(source).double()
    n = options["n"]
    W = dictionary(DIM, n, seed=20)
    with torch.no_grad():
        model.params["W"].copy_(W)
    generator = torch.Generator().manual_seed(21)
    # inputs made from a structured code plus noise
    codes = torch.randn(B, n, generator=generator, dtype=torch.float64) * (torch.rand(B, n, generator=generator) < 0.4)
    x = codes @ W.T + 0.1 * torch.randn(B, DIM, generator=generator, dtype=torch.float64)
    return model, x, W.numpy(), options


def group_reference(model, x: np.ndarray, W: np.ndarray, lam: float, l1: float = 0.0, nonneg: bool = False):
    fam = next(t for t in model.program.terms if t.name == "group").term.family()

    def energy(z, b):
        return 0.5 * np.sum((x[b] - W @ z) ** 2) + lam * group_penalty(z, fam) + l1 * np.abs(z).sum()

    references = []
    for b in range(len(x)):
        z = cp.Variable(W.shape[1], nonneg=nonneg)
        cost = 0.5 * cp.sum_squares(x[b] - W @ z) + lam * cvx_group_penalty(z, fam) + l1 * cp.norm1(z)
        reference = solve(cost, z)
        references.append(np.clip(reference, 0, None) if nonneg else reference)
    return energy, np.array(references)


def check_inference(z: torch.Tensor, energy, references: np.ndarray):
    Z = z.detach().numpy()
    for b in range(len(Z)):
        assert_optimal(energy(Z[b], b), energy(references[b], b), f"sample {b}")
        np.testing.assert_allclose(Z[b], references[b], atol=DIST, rtol=0, err_msg=f"sample {b}")
    assert (np.abs(Z) < 1e-9).any() and (np.abs(Z) > 1e-2).any()  # sparse, not all zero


@pytest.mark.parametrize("case", CASES)
def test_fista_reaches_the_structured_optimum(case):
    model, x, W, options = structured_model(case)
    problem = model.problem(x, None, None)  # what model.infer solves, in float64
    z = fista(problem, x.new_zeros(B, options["n"]), 3000, 1e-12)
    assert z.dtype == torch.float64
    energy, references = group_reference(model, x.numpy(), W, options["lam"])
    check_inference(z, energy, references)


def test_fista_nonneg_tree_group_and_l1():
    model, x, W, options = structured_model("tree", bound=" >= 0", extra="  sparse : 0.05 * l1(z)")
    z = fista(model.problem(x, None, None), x.new_zeros(B, 15), 3000, 1e-12)
    energy, references = group_reference(model, x.numpy(), W, options["lam"], l1=0.05, nonneg=True)
    check_inference(z, energy, references)
    assert (z >= 0).all()


@pytest.mark.parametrize("case", ["windows", "tree"])
def test_float64_model_infers_in_float64(case):
    """``model.double()`` then ``model.infer``: the documented way to solve in float64."""
    model, x, W, options = structured_model(case)
    z = model.infer(x, steps=3000, tol=1e-12)
    assert z.dtype == torch.float64
    energy, references = group_reference(model, x.numpy(), W, options["lam"])
    check_inference(z, energy, references)


def test_nonneg_latent_with_overlapping_groups_is_never_negative():
    model, x, W, options = structured_model("windows", bound=" >= 0")
    z = fista(model.problem(x, None, None), x.new_zeros(B, 16), 3000, 1e-12)
    energy, references = group_reference(model, x.numpy(), W, options["lam"], nonneg=True)
    check_inference(z, energy, references)
    assert (z >= 0).all(), z.min()
    z32 = model.float().infer(x.float())
    assert (z32 >= 0).all(), z32.min()


def test_float32_inference_is_close():
    model, x, W, options = structured_model("windows")
    model = model.float()
    z = model.infer(x.float(), steps=1000, tol=1e-7)
    assert z.dtype == torch.float32
    energy, references = group_reference(model, x.float().double().numpy(), W.astype(np.float32).astype(np.float64),
                                         options["lam"])  # fmt: skip
    for b in range(B):
        assert energy(z[b].double().numpy(), b) <= energy(references[b], b) * (1 + 1e-4)


# ---------------------------------------------------------------- ADMM on the whole problem

ADMM_CASES = {
    "windows": {"pools": st.windows(TORUS, 2, 1), "lam": 0.4, "l1": 0.0, "nonneg": False, "dim": DIM},
    "weighted windows": {"pools": st.windows(TORUS, 3, 1, sigma=1.0), "lam": 0.35, "l1": 0.0, "nonneg": False,
                         "dim": DIM},
    "windows, l1 and z >= 0": {"pools": st.windows(TORUS, 2, 1), "lam": 0.3, "l1": 0.1, "nonneg": True, "dim": DIM},
    # fewer inputs than units, as in a topographic spec: WᵀW is singular
    "weighted windows, overcomplete": {"pools": st.windows(TORUS, 3, 1, sigma=1.0), "lam": 0.2, "l1": 0.05,
                                       "nonneg": False, "dim": 10},
}  # fmt: skip


@pytest.mark.parametrize("case", ADMM_CASES)
def test_admm_reaches_the_optimum(case):
    """ADMM on min ½‖x − Wz‖² + λΣⱼ‖Aⱼz‖ + μ‖z‖₁ against cvxpy, sample by sample,
    with a zero sample and a sample 1000 times smaller than the others in the batch."""
    options = ADMM_CASES[case]
    pools, weights = options["pools"]
    fam = make_family("P", pools, weights)
    W = dictionary(options["dim"], 16, seed=40)
    generator = torch.Generator().manual_seed(41)
    codes = torch.randn(B, 16, generator=generator, dtype=torch.float64) * (
        torch.rand(B, 16, generator=generator) < 0.4
    )
    x = codes @ W.T + 0.1 * torch.randn(B, options["dim"], generator=generator, dtype=torch.float64)
    x = torch.cat([x, torch.zeros_like(x[:1]), 1e-3 * x[:1]])
    split = Splitting(GroupNorms(fam), options["lam"], options["l1"], options["nonneg"])
    z = admm(W.T @ W, -x @ W, split, torch.zeros(len(x), 16, dtype=torch.float64), 5000, 1e-10)

    X, Wn, Z = x.numpy(), W.numpy(), z.numpy()
    lam, mu = options["lam"], options["l1"]

    def energy(u, b):
        return 0.5 * np.sum((X[b] - Wn @ u) ** 2) + lam * group_penalty(u, fam) + mu * np.abs(u).sum()

    for b in range(len(X)):
        u = cp.Variable(16, nonneg=options["nonneg"])
        cost = 0.5 * cp.sum_squares(X[b] - Wn @ u) + lam * cvx_group_penalty(u, fam) + mu * cp.norm1(u)
        reference = solve(cost, u)
        assert_optimal(energy(Z[b], b), energy(reference, b), f"sample {b}")
        if options["dim"] > 16:  # strongly convex: one optimum
            np.testing.assert_allclose(Z[b], reference, atol=DIST, rtol=0, err_msg=f"sample {b}")
    assert (Z[B] == 0).all()  # the zero sample's code is exactly zero
    assert (Z[:B] == 0).any() and (np.abs(Z[:B]) > 1e-2).any()  # exactly sparse, not all zero
    if options["nonneg"]:
        assert (Z >= 0).all()


def test_admm_zeros_are_the_optimum_zeros():
    """A unit is exactly 0 only where cvxpy's optimum is 0 (below 1e-7), and every
    unit the optimum uses (above 1e-6) is nonzero."""
    W = dictionary(DIM, 16, seed=42)
    x = random((B, DIM), 43)
    split = Splitting(GroupNorms(WINDOWS), 0.6, 0.0, False)
    z = admm(W.T @ W, -x @ W, split, torch.zeros(B, 16, dtype=torch.float64), 5000, 1e-10).numpy()
    for b in range(B):
        u = cp.Variable(16)
        reference = solve(0.5 * cp.sum_squares(x[b].numpy() - W.numpy() @ u) + 0.6 * cvx_group_penalty(u, WINDOWS), u)
        assert (np.abs(reference[z[b] == 0]) < 1e-7).all(), f"sample {b}"
        assert (z[b][np.abs(reference) > 1e-6] != 0).all(), f"sample {b}"
    zeros = (z == 0).sum(1)
    assert zeros.max() > 0 and zeros.min() < 16  # partly sparse: pools set to zero, others active


def test_fista_takes_admm_for_overlapping_pools_only():
    """The dual-prox path remains for laminar pools (closed-form prox) and for
    inhibition (ISTA, a z-dependent threshold)."""

    def splitting(source):
        model = energydsl.load(source).double()
        return model.problem(model.preprocess(model.dataset.x_train[:B]), None, None).prox.splitting()

    windows = splitting(GROUP_SPEC.format(dim=DIM, bound="", extra="", **CASES["windows"]))
    assert windows is not None and windows.group_weight == 0.4 and windows.l1_weight == 0 and not windows.nonneg
    with_l1 = splitting(GROUP_SPEC.format(dim=DIM, bound=" >= 0", extra="  sparse : 0.05 * l1(z)", **CASES["windows"]))
    assert with_l1 is not None and with_l1.l1_weight == 0.05 and with_l1.nonneg
    assert splitting(GROUP_SPEC.format(dim=DIM, bound="", extra="", **CASES["tree"])) is None


# ---------------------------------------------------------------- lateral inhibition

INHIBITION_SPEC = """
model inhibition
data synthetic(dim = {dim}, atoms = 15, count = 40)
const lam = {lam}
const beta = {beta}
input x[{dim}]
latent z[15]{bound}
graph T = tree(branching = 2, depth = 3)
param W[{dim}, 15] init samples(x) constrain col_norm == 1
param S[15, 15] init tree_inhibition(T) learn fixed
energy
  recon   : 0.5 * sqerr(x, W @ z)
  sparse  : lam * l1(z)
  inhibit : beta * inhibition(z, S)
infer z by {method}(steps = 100, tol = 1e-4)
"""


def inhibition_model(dim: int, lam: float, beta: float, nonneg: bool, seed: int):
    source = INHIBITION_SPEC.format(dim=dim, lam=lam, beta=beta, bound=" >= 0" if nonneg else "", method="ista")
    model = energydsl.load(source).double()
    W = dictionary(dim, 15, seed)
    with torch.no_grad():
        model.params["W"].copy_(W)
    x = random((B, dim), seed + 1)
    S = model.params["S"].detach().numpy()
    np.testing.assert_array_equal(S, st.tree_inhibition(TREE))

    def energy(z, b):
        a = np.abs(z)
        return 0.5 * np.sum((x[b].numpy() - W.numpy() @ z) ** 2) + lam * a.sum() + beta * a @ S @ a

    return model, x, W.numpy(), S, energy


def test_ista_reaches_the_optimum_of_convex_nonneg_inhibition():
    W = dictionary(40, 15, seed=30).numpy()
    S = st.tree_inhibition(TREE).astype(np.float64)
    # β small enough that WᵀW + 2βS is positive definite: the energy is convex on z ≥ 0
    beta = 0.4 * np.linalg.eigvalsh(W.T @ W)[0] / (2 * abs(np.linalg.eigvalsh(S)[0]))
    lam = 0.05
    model, x, W, S, energy = inhibition_model(40, lam, beta, nonneg=True, seed=30)
    Q = W.T @ W + 2 * beta * S
    assert np.linalg.eigvalsh(Q)[0] > 0.05
    z = fista(model.problem(x, None, None), x.new_zeros(B, 15), 3000, 1e-13, accelerate=False)
    Z, X = z.numpy(), x.numpy()
    for b in range(B):
        v = cp.Variable(15, nonneg=True)
        cost = 0.5 * cp.quad_form(v, cp.psd_wrap(Q)) - (W.T @ X[b]) @ v + lam * cp.sum(v)
        reference = np.clip(solve(cost, v), 0, None)
        assert_optimal(energy(Z[b], b), energy(reference, b), f"sample {b}")
        np.testing.assert_allclose(Z[b], reference, atol=DIST, rtol=0)
    # the inhibition is active: co-active units on different branches
    assert any(np.abs(Z[b]) @ S @ np.abs(Z[b]) > 0 for b in range(B))
    assert (Z >= 0).all()


def test_ista_decreases_the_signed_inhibition_energy_to_a_coordinatewise_minimum():
    lam, beta = 0.05, 0.1
    model, x, W, S, energy = inhibition_model(8, lam, beta, nonneg=False, seed=31)
    problem = model.problem(x, None, None)
    z0 = x.new_zeros(B, 15)
    # one ISTA step at a time is the same as several in one call
    z = z0
    energies = [[energy(z0[b].numpy(), b) for b in range(B)]]
    for k in range(1, 201):
        z = fista(problem, z, 1, 0, accelerate=False)
        energies.append([energy(z[b].numpy(), b) for b in range(B)])
        if k in (1, 7, 200):
            torch.testing.assert_close(z, fista(problem, z0, k, 0, accelerate=False), rtol=1e-10, atol=1e-12)
    energies = np.array(energies)
    increase = np.diff(energies, axis=0)
    assert (increase <= 1e-12 * np.abs(energies[:-1])).all(), increase.max()
    assert (energies[-1] < energies[0]).all()

    # a fixed point: every unit is the exact 1-D minimiser of the energy, the others fixed
    z = fista(problem, z0, 3000, 0, accelerate=False)
    Z, X = z.numpy(), x.numpy()
    H = W.T @ W
    for b in range(B):
        g = H @ Z[b] - W.T @ X[b]
        u = Z[b] - g / np.diag(H)
        threshold = (lam + 2 * beta * S @ np.abs(Z[b])) / np.diag(H)
        best = np.sign(u) * np.maximum(np.abs(u) - threshold, 0)
        np.testing.assert_allclose(Z[b], best, atol=1e-6, rtol=0, err_msg=f"sample {b}")
    # signed codes, with inhibition between active units on different branches
    assert (Z < 0).any() and (Z > 0).any()
    assert any(np.abs(Z[b]) @ S @ np.abs(Z[b]) > 0 for b in range(B))


def test_inhibition_with_fista_is_a_spec_error():
    source = INHIBITION_SPEC.format(dim=8, lam=0.1, beta=0.01, bound="", method="fista")
    with pytest.raises(energydsl.SpecError, match="nonconvex") as info:
        energydsl.compile_program(source)
    error = info.value
    assert "ista(" in str(error)
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "inhibit :" in text)
    assert error.span.line == line
    assert str(error).startswith(f"<spec>:{line}:")
    # the same spec by ista compiles
    energydsl.compile_program(source.replace("by fista(", "by ista("))
