"""Transcoders: the code of an input x explains a separate target y (x → y).

The world: ``features(..., target_dim = e)`` draws x = A c and y = B c from the same sparse codes c,
with two known dictionaries.  A transcoder must find B in its decoder's columns; an SAE of x, the
model that ignores the target, finds A instead.  A and B are both orthonormal bases of R^16 here,
drawn independently, so a column of one has no close match among the other's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import energydsl
from energydsl.api import evaluate_run, run_dataset
from energydsl.cli import main
from energydsl.data import DataError, Dataset
from energydsl.errors import RunError
from energydsl.ops.recovery import best_matches
from energydsl.reporting.recovery import recovery_metrics
from energydsl.runs import checkpoint
from energydsl.training import activity
from energydsl.training.loop import make_optimizers, train_step
from energydsl.training.metrics import evaluate
from energydsl.training.resampling import ENCODER_SCALE, resample_dead_units

WORLD = ("features(dim = 16, features = 16, count = 3000, target_dim = 16, firing = linear, max_prob = 0.15, "
         "min_prob = 0.05, orthogonalize = 10, seed = 3)")  # fmt: skip

TRANSCODER = f"""
model tiny_transcoder
data {WORLD}
input  x[d]
target y[e]
latent z[32] >= 0
param D[e, 32]   constrain col_norm == 1
param E[32, d]   init normal(0.3)
param b_enc[32]  init zeros
param b_dec[e]   init zeros
let pre = E @ x + b_enc
encoder z = topk(relu(pre), 3)
energy
  recon : sqerr(y, D @ z + b_dec)
infer z by encoder
train
  optimizer adam(lr = 0.01)
  batch 64
  epochs 5
"""

# a transcoder whose code is the energy's minimiser: inference reads the target
LASSO = """
data features(dim = 6, features = 8, count = 200, target_dim = 4, seed = 1)
input  x[d]
target y[e]
latent z[8]
param D[e, 8]  init normal(0.5)
param E[8, d]  init normal(0.5)
energy
  recon  : 0.5 * sqerr(y, D @ z)
  fit    : 0.5 * sqerr(z, E @ x)
  sparse : 0.1 * l1(z)
infer z by fista(steps = 500, tol = 1e-7)
train
  optimizer adam(lr = 0.01)
  batch 32
  epochs 1
"""


def mmcs(decoder: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over the true columns of the best |cos| of a decoder column."""
    return best_matches(decoder.detach(), truth).feature_cosine.mean().item()


@pytest.fixture(scope="module")
def trained() -> energydsl.EnergyModel:
    torch.manual_seed(0)
    model = energydsl.load(TRANSCODER)
    model.history = energydsl.train(model)
    return model


# --------------------------------------------------------------------------- recovery


def test_a_transcoder_recovers_the_sparse_map_from_input_to_target(trained):
    truth = trained.dataset.extras
    assert mmcs(trained.params["D"], truth["target_dictionary"]) > 0.95  # B: the map to the target
    assert mmcs(trained.params["D"], truth["dictionary"]) < 0.75  # not A, the input's dictionary
    assert trained.history[-1]["fvu"] < 0.15  # of y, held out


def test_an_sae_of_the_input_finds_the_other_dictionary():
    """The control: the same world and training, reconstructing x instead of y."""
    source = TRANSCODER.replace("sqerr(y, D @ z + b_dec)", "sqerr(x, D @ z + b_dec)")
    model = energydsl.load(source.replace("target y[e]\n", "").replace("[e", "[d"))
    energydsl.train(model)
    truth = model.dataset.extras
    assert mmcs(model.params["D"], truth["dictionary"]) > 0.95
    assert mmcs(model.params["D"], truth["target_dictionary"]) < 0.75


def test_held_out_reconstruction_metrics_are_of_the_target(trained):
    data = trained.dataset
    with torch.no_grad():
        z = trained.infer(data.x_test)
        estimate = z @ trained.params["D"].T + trained.params["b_dec"]
    y = data.target_test.double()
    error = ((y - estimate.double()) ** 2).sum()
    metrics = evaluate(trained, data)
    assert metrics["fvu"] == pytest.approx(float(error / ((y - y.mean(0)) ** 2).sum()), rel=1e-4)
    assert metrics["recon_error"] == pytest.approx(float(error / (y**2).sum()), rel=1e-4)


# --------------------------------------------------------------------------- the model's API


def test_inference_and_energy_of_a_transcoder_read_the_target():
    model = energydsl.load(LASSO)
    x, y = model.dataset.x_test[:5], model.dataset.target_test[:5]
    with pytest.raises(ValueError, match="the inference of spec .* reads its target 'y': pass target="):
        model.infer(x)
    z = model.infer(x, target=y)
    D, E = model.params["D"].detach(), model.params["E"].detach()
    expected = 0.5 * ((y - z @ D.T) ** 2).sum(1) + 0.5 * ((z - x @ E.T) ** 2).sum(1) + 0.1 * z.abs().sum(1)
    torch.testing.assert_close(model.energy(x, z, target=y), expected)
    # z* minimises the energy: the optimality condition of the lasso holds at every unit
    gradient = (z @ D.T - y) @ D + (z - x @ E.T)
    assert ((gradient + 0.1 * z.sign()).abs()[z != 0] < 1e-4).all()
    assert (gradient.abs()[z == 0] <= 0.1 + 1e-4).all()
    with pytest.raises(ValueError, match="pass target="):
        model.terms(x, z)
    with pytest.raises(ValueError, match="expected a batch of targets with 4 values each"):
        model.energy(x, z, target=y[:, :3])


def test_a_spec_without_target_refuses_one():
    model = energydsl.load(TRANSCODER.replace("target y[e]\n", "").replace("[e", "[d").replace("(y,", "(x,"))
    x = model.dataset.x_test[:3]
    with pytest.raises(ValueError, match="declares no target"):
        model.infer(x, target=x)


def test_training_without_targets_is_refused():
    model = energydsl.load(TRANSCODER)
    data = model.dataset
    unpaired = Dataset("unpaired", data.x_train, data.x_test, None, None, None)
    with pytest.raises(DataError, match="no targets, but spec 'tiny_transcoder' reconstructs its target 'y'"):
        energydsl.train(model, unpaired)


# --------------------------------------------------------------------------- resampling


def test_resampling_restarts_a_transcoders_units_in_the_inputs_and_the_targets_spaces():
    """The decoder column of a dead unit points at a target, its encoder row at the same sample's input."""
    source = TRANSCODER.replace("target_dim = 16", "target_dim = 5").replace("epochs 5", "epochs 1")
    model = energydsl.load(source + "  resample dead every 5 steps\n")
    data = model.dataset
    optimizers = make_optimizers(model)
    train_step(model, optimizers, data.x_train[:64], None, ("recon",), target=data.target_train[:64])
    dead = torch.arange(4)
    activity.set_default_window(model, 100)
    activity.counts(model)[dead] = 100
    alive_norm = model.params["E"].detach()[4:].norm(dim=1).mean()
    assert resample_dead_units(model, (optimizers.descent, None), data.x_train, torch.Generator().manual_seed(0),
                               target_train=data.target_train) == 4  # fmt: skip
    D, E = model.params["D"].detach(), model.params["E"].detach()
    inputs = torch.nn.functional.normalize(data.x_train, dim=1)
    targets = torch.nn.functional.normalize(data.target_train, dim=1)
    for unit in dead:
        sample = int((targets @ D[:, unit]).argmax())
        assert float(targets[sample] @ D[:, unit]) == pytest.approx(1, abs=1e-5)
        torch.testing.assert_close(E[unit], ENCODER_SCALE * alive_norm * inputs[sample], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- runs


def test_a_transcoder_run_reopens_and_infers(trained, tmp_path):
    source = checkpoint.resolved_source(trained.program, {}, None)
    checkpoint.save_model(tmp_path, trained, source)
    reopened = energydsl.load_run(tmp_path)
    assert reopened.program.target.shape == (16,) and reopened.program.input.shape == (16,)
    x = trained.dataset.x_test[:50]
    torch.testing.assert_close(reopened.infer(x), trained.infer(x))
    assert evaluate_run(tmp_path)["fvu"] == pytest.approx(evaluate(trained, trained.dataset)["fvu"])
    with pytest.raises(RunError, match="has no targets, but this run's spec declares target y"):
        run_dataset(tmp_path, reopened, "features(dim = 16, features = 16, count = 100)")


def test_file_pairs_train_a_transcoder(tmp_path):
    """Pairs from an .npz (target = array name) and from .npy files (target_file =) give the same run."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = (x[:, :4] * 2).astype(np.float32)  # the target: a known linear function of the input
    np.savez(tmp_path / "pairs.npz", x=x, out=y)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "out.npy", y)
    spec = tmp_path / "t.energy"
    spec.write_text(TRANSCODER.replace(f"data {WORLD}", 'data file("pairs.npz", target = "out")'))
    runs = []
    for data in (None, f'file("{tmp_path / "in.npy"}", target_file = "{tmp_path / "out.npy"}")'):
        model = energydsl.load(spec, data=data)
        assert model.program.target.shape == (4,) and model.program.input.shape == (6,)
        runs.append(energydsl.train(model)[-1])
    assert runs[0]["energy"] == pytest.approx(runs[1]["energy"])


# --------------------------------------------------------------------------- the shipped spec

SHIPPED = Path(__file__).resolve().parents[2] / "specs" / "transcoder.energy"


def test_the_shipped_spec_recovers_the_target_map_of_a_small_world():
    model = energydsl.load(SHIPPED, set={"units": 32, "k": 3, "k_aux": 8, "batch": 64, "window": 2000}, data=WORLD)
    energydsl.train(model)
    recovery = recovery_metrics(model, model.dataset)
    assert recovery["recovery.mmcs"] > 0.95
    assert mmcs(model.params["D"], model.dataset.extras["dictionary"]) < 0.75


@pytest.mark.slow  # its own world: about 15 s of training on a busy machine
def test_the_shipped_spec_recovers_the_target_map_of_its_world(tmp_path):
    assert main(["run", str(SHIPPED), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recovery.mcc"] > 0.95 and summary["explained_variance"] > 0.7
