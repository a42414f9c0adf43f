"""The generic learning loop: dictionary recovery, ascent/descent, constraints, fixed parameters, phases."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import energydsl
from energydsl.data import Dataset

RECOVERY_SPEC = Path(__file__).parents[1] / "specs" / "ok" / "synthetic_recovery.energy"




def matched_fraction(learned: torch.Tensor, true: torch.Tensor, threshold: float = 0.95) -> float:
    """Fraction of the true atoms (columns) matched by some learned atom with |cosine| ≥ threshold."""
    learned = learned / learned.norm(dim=0, keepdim=True)
    true = true / true.norm(dim=0, keepdim=True)
    cosines = (true.T @ learned).abs()
    return (cosines.max(dim=1).values >= threshold).double().mean().item()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.params.items()}


# --------------------------------------------------------------------------- dictionary recovery


@pytest.mark.slow
def test_sparse_coding_recovers_the_synthetic_dictionary():
    model = energydsl.load(RECOVERY_SPEC)
    true = model.dataset.extras["dictionary"]
    assert true.shape == model.params["W"].shape
    before = matched_fraction(model.params["W"].detach(), true)
    assert before < 0.5  # samples of x are mixtures, not atoms: the start is far from D

    history = energydsl.train(model)

    W = model.params["W"].detach()
    assert matched_fraction(W, true) >= 0.9
    torch.testing.assert_close(W.norm(dim=0), torch.ones(W.shape[1]), rtol=1e-5, atol=1e-5)
    assert len(history) == 8
    assert history[-1]["energy"] < history[0]["energy"]
    assert history[-1]["recon_error"] < 0.05
    # the codes are sparse: about k = 3 active atoms per sample
    assert history[-1]["l0"] < 6


# --------------------------------------------------------------------------- ascent and descent


UPDOWN_SPEC = """
model updown
data synthetic(dim = 8, atoms = 6, k = 2, count = 64, noise = 0.1, seed = 2)
const lam = 0.1
input x[8]
latent z[6]
param W[8, 6] init normal(0.3)
param B[6, 8] init normal(0.3) learn ascent(lr = 0.05)
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
  pred   : 0.5 * sqerr(z, B @ x)
infer z by fista(steps = 500, tol = 1e-7)
train
  optimizer sgd(lr = 0.02)
  batch 51
  epochs 1
"""


def mean_energy(model, x, z, **params) -> float:
    """Mean energy at fixed codes z, with some parameters replaced."""
    saved = snapshot(model)
    with torch.no_grad():
        for name, value in params.items():
            model.params[name].copy_(value)
        value = model.energy(x, z).mean().item()
        for name, value_saved in saved.items():
            model.params[name].copy_(value_saved)
    return value


def test_ascent_increases_and_descent_decreases_the_energy():
    model = energydsl.load(UPDOWN_SPEC)
    x = model.dataset.x_train
    assert x.shape[0] == 51  # one batch: the epoch is a single step
    z = model.infer(x)  # what the step infers (deterministic)
    before = snapshot(model)

    energydsl.train(model)
    after = snapshot(model)
    assert not torch.equal(after["W"], before["W"]) and not torch.equal(after["B"], before["B"])

    E0 = mean_energy(model, x, z, **before)
    # each direction alone, the other held at its old value
    assert mean_energy(model, x, z, W=before["W"], B=after["B"]) > E0  # ascent raises it
    assert mean_energy(model, x, z, W=after["W"], B=before["B"]) < E0  # descent lowers it

    # and the step is exactly plain SGD with each parameter's own learning rate and sign
    xs, zs = x.double().numpy(), z.double().numpy()
    W0, B0 = before["W"].double().numpy(), before["B"].double().numpy()
    n = xs.shape[0]
    grad_W = -((xs - zs @ W0.T).T @ zs) / n  # ∂/∂W of mean ½‖x − Wz‖²
    grad_B = -((zs - xs @ B0.T).T @ xs) / n  # ∂/∂B of mean ½‖z − Bx‖²
    np.testing.assert_allclose(after["W"].double().numpy(), W0 - 0.02 * grad_W, atol=1e-5)
    np.testing.assert_allclose(after["B"].double().numpy(), B0 + 0.05 * grad_B, atol=1e-5)


# --------------------------------------------------------------------------- constraints and fixed parameters


CONSTRAINED_SPEC = """
model constrained
data synthetic(dim = 8, atoms = 6, k = 2, count = 200, noise = 0.05, seed = 4)
const lam = 0.05
input x[8]
latent z[6]
param W[8, 6]  init normal(0.5)  constrain col_norm == 1
param S[6, 6]  init normal(0.3)  constrain nonneg, symmetric, zero_diag, norm <= 0.5
param Q[6, 6]  init normal(0.3)  constrain mask ones - I, row_norm <= 0.4
param G[6, 8]  init normal(0.5)  constrain col_norm <= 0.3
param F[8, 6]  init normal(0.5)  learn fixed
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
  lat    : 0.2 * sqerr(z, S @ z)
  lat2   : 0.2 * sqerr(z, Q @ z)
  pred   : 0.3 * sqerr(z, G @ x)
  aux    : 0.1 * sqerr(x, F @ z)
infer z by fista(steps = 200, tol = 1e-5)
train
  optimizer sgd(lr = 0.2, momentum = 0.9)
  batch 20
  epochs 2
"""


def check_constraints(params):
    W, S, Q, G = (params[n].double() for n in ("W", "S", "Q", "G"))
    torch.testing.assert_close(W.norm(dim=0), torch.ones(6, dtype=W.dtype), rtol=1e-5, atol=1e-6)
    assert (S >= 0).all() and torch.equal(S, S.T) and (S.diagonal() == 0).all()
    assert S.norm() <= 0.5 * (1 + 1e-6)
    assert (Q.diagonal() == 0).all() and (Q.norm(dim=1) <= 0.4 * (1 + 1e-6)).all()
    assert (G.norm(dim=0) <= 0.3 * (1 + 1e-6)).all()


def test_constraints_hold_after_training_and_fixed_parameters_do_not_move():
    model = energydsl.load(CONSTRAINED_SPEC)
    check_constraints(snapshot(model))  # projected at initialisation
    assert not model.params["F"].requires_grad
    start = snapshot(model)

    steps = []
    energydsl.train(model, on_epoch=lambda metrics: steps.append(snapshot(model)))

    for params in steps:
        check_constraints(params)
    end = snapshot(model)
    # learning really pushed on every learned parameter (so the checks above are not vacuous)
    for name in ("W", "S", "Q", "G"):
        assert not torch.equal(end[name], start[name]), name
    # the gradient of 'lat' pulls S towards the identity; the zero diagonal must have won
    assert end["S"].abs().sum() > 0
    assert torch.equal(end["F"], start["F"])


# --------------------------------------------------------------------------- phases


DRSAE_TINY = """
model drsae_tiny
data synthetic(dim = 10)
const lam = 0.05
const T = 3
input x[10] normalize l2
label y : 3 classes
latent z[12] >= 0
param D[10, 12] init samples(x) constrain col_norm <= 1
param E[12, 10] init 0.5 * D.T
param S[12, 12] init I - 0.5 * D.T @ D
param b[12]     init 0.01
param C[3, 12]  init normal(0.5) constrain row_norm <= 5
encoder z = recurrent(T) { relu(E @ x + S @ z - b) }
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : lam * l1(z)
  class  : xent(C @ normalize(z), y)
infer z by encoder
train
  optimizer adam(lr = 1e-2)
  batch 16
  seed 1
  phase pretrain epochs 1 terms recon, sparse
  phase finetune epochs 1
"""


@pytest.fixture(scope="module")
def labelled_data() -> Dataset:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(120, 10, generator=gen)
    y = (x @ torch.randn(10, 3, generator=gen)).argmax(dim=1)  # a linear rule: learnable labels
    return Dataset("toy", x[:96], x[96:], y[:96], y[96:], 3)


def test_phase_without_a_term_leaves_its_only_parameter_unchanged(labelled_data):
    model = energydsl.load(DRSAE_TINY, data=labelled_data)
    start = snapshot(model)
    epochs = []
    history = energydsl.train(model, on_epoch=lambda metrics: epochs.append(snapshot(model)))
    assert [m["phase"] for m in history] == ["pretrain", "finetune"]
    pretrained, finetuned = epochs

    assert torch.equal(pretrained["C"], start["C"])  # the classifier is used by 'class' only
    for name in ("D", "E", "S", "b"):
        assert not torch.equal(pretrained[name], start[name]), name
    assert not torch.equal(finetuned["C"], pretrained["C"])  # switched on, it learns


def test_term_switched_off_gives_no_gradient(labelled_data):
    """The loss of a phase, differentiated: zero for parameters only an inactive term uses."""
    model = energydsl.load(DRSAE_TINY, data=labelled_data)
    x, y = labelled_data.x_train[:16], labelled_data.y_train[:16]
    xp = model.preprocess(x)
    pretrain = model.program.training.phases[0].terms
    assert set(pretrain) == {"recon", "sparse"}

    z = model.infer_prepared(xp, y, pretrain, differentiable=True)
    model.energy_of(xp, z, y, pretrain).mean().backward()
    grad_C = model.params["C"].grad
    assert grad_C is None or torch.count_nonzero(grad_C) == 0
    assert model.params["D"].grad is not None and torch.count_nonzero(model.params["D"].grad) > 0

    model.zero_grad(set_to_none=True)
    z = model.infer_prepared(xp, y, None, differentiable=True)
    model.energy_of(xp, z, y, None).mean().backward()
    assert model.params["C"].grad is not None and torch.count_nonzero(model.params["C"].grad) > 0


LISTA_SPEC = """
model lista_small
data synthetic(dim = 16, atoms = 24, k = 3, count = 1500, noise = 0.05, seed = 4)
const lam = 0.05
const alpha = 0.1
input x[16]
latent z[24]
param D[16, 24] init samples(x) constrain col_norm == 1 learn fixed
param E[24, 16] init alpha * D.T
param S[24, 24] init I - alpha * D.T @ D
param theta[24] init alpha * lam
let prediction = recurrent(2) { shrink(E @ x + S @ z, theta) }
encoder z = prediction
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : lam * l1(z)
  fit    : 0.5 * sqerr(z, prediction)
infer z by fista(steps = 300, tol = 1e-4) terms recon, sparse
train
  optimizer adam(lr = 0.003)
  batch 50
  epochs 8
"""


@pytest.mark.slow
def test_lista_learns_to_approximate_fista_codes_better_than_ista():
    """Two learned steps approach the optimal codes z* of the fixed dictionary better than
    two ISTA steps of size 1/L (the point of LISTA), and far better than at initialisation."""
    from energydsl.solvers.fista import fista

    model = energydsl.load(LISTA_SPEC)
    x = model.dataset.x_test
    z_star = model.infer(x, steps=5000, tol=1e-9)

    def error(z):
        return ((z - z_star).norm() / z_star.norm()).item()

    xp = model.preprocess(x)
    ista = fista(model.problem(xp, None, None), torch.zeros_like(z_star), 2, tol=0, accelerate=False)
    before = error(model.encode(x))  # the init is 2 ISTA steps of size α
    D = snapshot(model)["D"]
    energydsl.train(model)
    assert torch.equal(model.params["D"], D)  # the dictionary is fixed
    after = error(model.encode(x))
    assert after < 0.6 * before and after < 0.75 * error(ista), (before, error(ista), after)


@pytest.mark.slow
def test_cosine_schedule_sets_each_epochs_learning_rate(monkeypatch):
    """`schedule cosine` multiplies every group's rate (lr_scale ratios kept) by ½(1 + cos(πk/N))
    in the phase's epoch k; a constant phase keeps the optimizer's rates."""
    rates = first_rate_of_each_epoch(monkeypatch, "phase warm epochs 2\n  phase decay epochs 4 schedule cosine")
    factors = [1, 1] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert len(rates) == len(factors)
    for rate, factor in zip(rates, factors):
        assert rate == pytest.approx([0.003 * factor, 0.003 * factor, 0.03 * factor])


def first_rate_of_each_epoch(monkeypatch, phases: str) -> list[list[float]]:
    """Train LISTA_SPEC with these phases (theta at lr_scale 10); each epoch's first step's rates."""
    loop = importlib.import_module("energydsl.training.loop")
    source = LISTA_SPEC.replace("epochs 8", phases).replace(
        "param theta[24] init alpha * lam", "param theta[24] init alpha * lam lr_scale 10")
    seen = []
    step = loop.train_step

    def recording(model, optimizers, *args):
        seen.append([group["lr"] for group in optimizers.descent.param_groups])
        return step(model, optimizers, *args)

    monkeypatch.setattr(loop, "train_step", recording)
    history = energydsl.train(energydsl.load(source))
    per_epoch = len(seen) // len(history)
    return seen[::per_epoch]


@pytest.mark.slow
def test_phase_lr_scale_multiplies_every_rate_on_top_of_the_schedule(monkeypatch):
    """A phase's `lr_scale` multiplies every group's rate (the parameters' lr_scale ratios kept),
    alone or times the cosine factor; a phase without it keeps the optimizer's rates."""
    phases = "phase warm epochs 2 lr_scale 0.1\n  phase decay epochs 2 schedule cosine lr_scale 0.5\n  phase plain epochs 1"
    rates = first_rate_of_each_epoch(monkeypatch, phases)
    factors = [0.1, 0.1, 0.5, 0.5 * 0.5 * (1 + math.cos(math.pi / 2)), 1]
    assert len(rates) == len(factors)
    for rate, factor in zip(rates, factors):
        assert rate == pytest.approx([0.003 * factor, 0.003 * factor, 0.03 * factor])


@pytest.mark.parametrize("setting, optimizer, message", [
    ("lr_scale 0", "adam(lr = 0.003)", "lr_scale must be positive, got 0"),
    ("lr_scale 0.5", "bcd(forget = 50)",
     "phase 'warm': optimizer bcd has no learning rate to scale (remove 'lr_scale' from the phase)"),
    ("lr_scale 0.5 lr_scale 2", "adam(lr = 0.003)", "'lr_scale' of phase 'warm' is given twice (remove one of them)"),
])  # fmt: skip
def test_a_wrong_phase_lr_scale_is_a_spec_error(setting, optimizer, message):
    source = LISTA_SPEC.replace("epochs 8", f"phase warm epochs 2 {setting}").replace("adam(lr = 0.003)", optimizer)
    with pytest.raises(energydsl.SpecError) as info:
        energydsl.compile_program(source)
    assert str(info.value).splitlines()[0].endswith(": " + message)


@pytest.mark.parametrize("spec, part_units", [("drsae", False), ("drsae_sgd", True)])
def test_drsae_keeps_part_units_with_sgd_and_loses_them_with_adam(spec, part_units):
    """One pretraining epoch of the two DrSAE specs (100 units): plain SGD with per-parameter
    scales keeps the ISTA-consistent encoder rows aligned with the decoder columns (part
    units, < 0.5 rad); Adam's steps of about lr on entries of about 2e-4 turn every unit away."""
    from energydsl.reporting.analysis import infer_all, unit_kinds

    source = (Path(__file__).parents[2] / "specs" / f"{spec}.energy").read_text(encoding="utf-8")
    source = re.sub(r"  phase pretrain.*\n  phase finetune.*\n", "  phase pretrain epochs 1 terms recon, sparse\n", source)
    model = energydsl.load(source, set={"units": 100})
    energydsl.train(model)
    fires = (infer_all(model, model.dataset.x_test[:500]) > 0).any(dim=0)
    kinds = unit_kinds(model, fires)
    if part_units:
        assert kinds["units.part"] >= 80 and fires.sum() >= 95, kinds
    else:
        assert kinds["units.part"] == 0 and kinds["units.categorical"] >= 80, kinds
