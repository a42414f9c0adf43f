"""Dead units: the activity tracker, its window, the alarm, and resampling (Bricken et al. 2023)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import safetensors.torch
import torch
from rich.console import Console

import energydsl
from energydsl.compiler.program import MAX_DEAD_WINDOW
from energydsl.compiler.roles import _encoder_bias
from energydsl.data import Dataset
from energydsl.errors import SpecError
from energydsl.lang.parser import parse
from energydsl.runs import checkpoint
from energydsl.training import activity
from energydsl.training.loop import initial_state, make_optimizers, train_step
from energydsl.training.loop import train as train_loop
from energydsl.training.progress import ConsoleProgress, dead_alarm_line
from energydsl.training.resampling import ENCODER_SCALE, resample_dead_units

CODES = """
data synthetic(dim = 4, atoms = 4, count = 40, k = 1, seed = 0)
input x[4]
latent z[4]
param D[4, 4]
energy
  recon : 0.5 * sqerr(x, D @ z)
infer z by fista(steps = 5)
train
  dead after 10 samples
"""

# A ReLU sparse auto-encoder whose units can be silenced through their bias.
SAE = """
model sae
data synthetic(dim = 16, atoms = 24, count = 400, k = 2, seed = 3)
input x[16]
latent z[32] >= 0
param D[16, 32] init samples(x) constrain col_norm <= 1
param E[32, 16] init D.T
param b[32] init 0
encoder z = relu(E @ x + b)
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : 0.01 * l1(z)
infer z by encoder
train
  optimizer adam(lr = 1e-3)
  batch 20
  epochs 2
  dead after 40 samples
"""

SILENCED = 20  # of the SAE's 32 units


def silenced_sae(source: str = SAE, **load) -> energydsl.EnergyModel:
    model = energydsl.load(source, **load)
    with torch.no_grad():
        model.params["b"][:SILENCED] = -100.0  # E @ x never reaches 100: these units never fire
    return model


# --------------------------------------------------------------------------- the tracker


def test_tracker_counts_samples_since_each_unit_last_fired():
    model = energydsl.load(CODES)
    batches = [  # batches of 4, 4, 4 and 3 samples; a unit fires where its code is nonzero
        torch.tensor([[1.0, 0, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
        torch.tensor([[0.0, -2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
        torch.zeros(4, 4),
        torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 3], [0, 0, 0, 0]]),
    ]
    expected = [[0, 4, 0, 4], [4, 0, 4, 8], [8, 4, 8, 12], [11, 7, 11, 0]]
    for codes, counts in zip(batches, expected):
        activity.track(model, codes, codes.shape[0])
        assert activity.counts(model).tolist() == counts
    # dead after 10 samples: units 0 and 2 (11 samples without firing), not 1 (7) nor 3 (just fired)
    assert model.dead_units().tolist() == [True, False, True, False]
    x = model.dataset.x_test[:3]
    assert model.env(model.preprocess(x), None)["dead"].tolist() == [True, False, True, False]
    assert activity.dead_count(model) == 2


def test_a_training_step_counts_its_batch_and_the_count_saturates():
    model = energydsl.load(CODES)
    with torch.no_grad():
        model.params["D"].copy_(torch.eye(4))
    x = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # FISTA on an identity dictionary: z = x
    activity.counts(model).fill_(MAX_DEAD_WINDOW - 1)
    train_step(model, make_optimizers(model), x, None, ("recon",))
    assert activity.counts(model).tolist() == [0, MAX_DEAD_WINDOW, MAX_DEAD_WINDOW, MAX_DEAD_WINDOW]


def test_the_default_window_is_one_epoch_at_most_ten_million_samples():
    spec = CODES.replace("dead after 10 samples", "batch 8")
    model = energydsl.load(spec)
    activity.counts(model).fill_(1e6)
    assert not model.dead_units().any()  # no window yet: nothing is dead
    activity.set_default_window(model, 32)
    assert float(model.state["dead_window"]) == 32 and model.dead_units().all()
    activity.set_default_window(model, 64)  # a window once set stays (a resumed run keeps its own)
    assert float(model.state["dead_window"]) == 32
    other = energydsl.load(spec)
    activity.set_default_window(other, 10**9)
    assert float(other.state["dead_window"]) == activity.DEFAULT_WINDOW_CAP


@pytest.mark.parametrize(("setting", "message"), [
    (f"dead after {MAX_DEAD_WINDOW + 1} samples", "'dead after' takes at most 16777216 samples"),
    ("dead after 0 samples", "at least 1"),
    ("warn dead above 1.5", "'warn dead above' takes a share of the units, from 0 to 1, got 1.5"),
    ("resample dead every 5 steps", "resampling dead units needs a decoder"),
])  # fmt: skip
def test_dead_unit_settings_are_checked(setting, message):
    spec = CODES.replace("dead after 10 samples", setting).replace("D @ z", "D @ tanh(z)")  # no plain decoder
    with pytest.raises(SpecError, match=message.replace("(", r"\(")) as error:
        energydsl.load(spec)
    assert error.value.span.line == 10  # the setting's own line


def test_resampling_an_encoder_it_cannot_find_is_refused():
    spec = SAE.replace("relu(E @ x + b)", "relu(E @ normalize(x) + b)") + "  resample dead every 5 steps\n"
    with pytest.raises(SpecError, match="needs the encoder's matrix"):
        energydsl.load(spec)


@pytest.mark.parametrize(("encoder", "bias"), [
    ("encoder z = relu(E @ x + b)", "b"),
    ("encoder z = relu(E @ x + S @ z - b)", "b"),  # DrSAE's
    ("let pre = E @ (x - c) + b\nencoder z = relu(pre)", "b"),  # through a let; c is the decoder's bias
    ("encoder z = relu(E @ (x - c))", None),
])  # fmt: skip
def test_the_encoder_bias_is_found_in_the_encoder_and_its_lets(encoder, bias):
    spec = parse("input x[16]\nlatent z[32]\nparam b[32]\nparam c[16]\n" + encoder)
    lets = {decl.name.name: decl.value for decl in spec.lets}
    shapes = {"E": (32, 16), "S": (32, 32), "b": (32,), "c": (16,)}
    assert _encoder_bias([d.value for d in spec.encoders], lets, "E", shapes, 32) == bias


# --------------------------------------------------------------------------- the alarm


def test_the_alarm_is_recorded_in_the_metrics_and_said_once_per_epoch_on_stderr(capsys):
    model = silenced_sae()
    history = energydsl.train(model)
    assert [m["units.dead"] for m in history] == [SILENCED, SILENCED]
    assert [m["units.dead_alarm"] for m in history] == [0.625, 0.625]  # 20 of 32 units, above 0.5
    assert history[-1]["units.unused"] == SILENCED
    errors = io.StringIO()
    with ConsoleProgress(2, quiet=True, errors=Console(file=errors, width=80)) as progress:
        for metrics in history:
            progress.epoch(metrics)
    lines = errors.getvalue().splitlines()
    assert len(lines) == 2 and lines[0] == dead_alarm_line(history[0])
    assert lines[1].startswith("energydsl: warning: epoch 2: 20 units (62.5%) are dead")
    assert "resample dead every N steps" in lines[1]


def test_no_alarm_below_the_share():
    model = silenced_sae(SAE.replace("dead after 40 samples", "dead after 40 samples\n  warn dead above 0.7"))
    history = energydsl.train(model)
    assert history[-1]["units.dead"] == SILENCED and "units.dead_alarm" not in history[-1]
    assert dead_alarm_line(history[-1]) is None


# --------------------------------------------------------------------------- resampling


def test_resampling_restarts_dead_units_on_badly_reconstructed_inputs():
    """Only 10 of 200 training inputs are nonzero: the others are reconstructed exactly (error 0),
    so every restarted unit must point at one of the 10."""
    rng = np.random.default_rng(0)
    x = np.zeros((200, 16), np.float32)
    x[rng.choice(200, 10, replace=False)] = rng.normal(size=(10, 16))
    data = Dataset("hand", torch.from_numpy(x), torch.from_numpy(x[:20]), None, None, None)
    model = energydsl.load(SAE + "  resample dead every 5 steps\n", data=data)
    with torch.no_grad():
        model.params["b"][:SILENCED] = -100.0
    optimizers = make_optimizers(model)
    train_step(model, optimizers, data.x_train[:20], None, ("recon", "sparse"))  # Adam has moments now
    for p in model.params.values():
        for key in ("exp_avg", "exp_avg_sq"):
            optimizers.descent.state[p][key].uniform_(0.5, 1.0)  # silent units have none: give them some
    dead = torch.arange(SILENCED)
    activity.counts(model)[dead] = 40
    before = {name: p.detach().clone() for name, p in model.params.items()}
    moments = {name: {k: v.clone() for k, v in optimizers.descent.state[p].items()} for name, p in model.params.items()}

    assert resample_dead_units(model, (optimizers.descent, None), data.x_train, torch.Generator().manual_seed(0)) == 20

    D, E, b = (model.params[n].detach() for n in "DEb")
    nonzero = torch.nn.functional.normalize(torch.from_numpy(x[np.abs(x).sum(1) > 0]), dim=1)
    cosines = nonzero @ D[:, dead]
    assert torch.allclose(cosines.max(dim=0).values, torch.ones(SILENCED), atol=1e-6)  # each column: one input
    assert torch.allclose(D[:, dead].norm(dim=0), torch.ones(SILENCED), atol=1e-6)
    alive_norm = before["E"][SILENCED:].norm(dim=1).mean()
    assert torch.allclose(E[dead], ENCODER_SCALE * alive_norm * D[:, dead].T, atol=1e-6)
    assert torch.equal(b[dead], torch.zeros(SILENCED))
    for name, axis in (("D", 1), ("E", 0), ("b", 0)):
        assert torch.equal(model.params[name].detach().index_select(axis, torch.arange(SILENCED, 32)),
                           before[name].index_select(axis, torch.arange(SILENCED, 32)))  # alive units unchanged
        for key in ("exp_avg", "exp_avg_sq"):
            state = optimizers.descent.state[model.params[name]][key]
            assert not state.index_select(axis, dead).any(), (name, key)
            assert torch.equal(state.index_select(axis, torch.arange(SILENCED, 32)),
                               moments[name][key].index_select(axis, torch.arange(SILENCED, 32)))
    assert not activity.counts(model)[dead].any() and not model.dead_units().any()
    fires = (model.infer(torch.from_numpy(x)) != 0).any(dim=0)
    assert fires.all()  # every restarted unit fires on the input it was restarted on


def test_silenced_units_fire_again_after_training_with_resampling():
    control = energydsl.train(silenced_sae())[-1]
    assert control["units.unused"] == SILENCED
    model = silenced_sae(SAE + "  resample dead every 5 steps\n")
    final = energydsl.train(model)[-1]
    assert final["units.dead"] == 0 and final["units.unused"] == 0
    assert final["fvu"] < control["fvu"]  # the restarted units reconstruct what the others did not


def test_resampling_then_resume_is_bitwise_identical(tmp_path):
    """Every unit starts dead (E small, b = -1) and the run resamples every 5 steps.  A run that dies
    after step 27 (its last checkpoint at step 21; epochs of 16 steps) and resumes ends exactly where
    an unbroken run does: parameters, and the tracker's counts."""
    spec = (SAE.replace("init D.T", "init 0.01 * D.T").replace("param b[32] init 0", "param b[32] init -1")
            .replace("epochs 2", "epochs 3") + "  resample dead every 5 steps\n")  # fmt: skip
    reference = energydsl.load(spec)
    train_loop(reference, reference.dataset)

    class Killed(Exception):
        pass

    steps = []

    def die_after_step_27(done, total, energy):
        steps.append(done)
        if len(steps) == 27:
            raise Killed

    model = energydsl.load(spec)
    with pytest.raises(Killed):
        train_loop(model, model.dataset, checkpoint_every=7, on_step=die_after_step_27,
                   on_checkpoint=lambda state: checkpoint.save_state(tmp_path, model, state, spec))  # fmt: skip
    resumed = energydsl.load(spec)
    state = initial_state(resumed)
    checkpoint.load_state(tmp_path, resumed, state, spec)
    assert (state.step, state.epoch, state.batch) == (21, 1, 5)  # mid-epoch
    train_loop(resumed, resumed.dataset, state=state)
    for name, p in reference.params.items():
        assert torch.equal(resumed.params[name], p), name
    for name, t in reference.state.items():
        assert torch.equal(resumed.state[name], t), name
    assert (reference.params["b"] > -0.5).all()  # every unit restarted (b = 0 then trained), none left at -1


def test_a_model_file_from_before_the_tracker_loads_with_fresh_counts(tmp_path):
    model = silenced_sae()
    activity.counts(model).fill_(7)
    checkpoint.save_model(tmp_path, model, SAE)
    assert activity.counts(energydsl.load_run(tmp_path)).tolist() == [7] * 32  # the counts travel with the model
    path = tmp_path / checkpoint.MODEL_FILE
    tensors = safetensors.torch.load_file(str(path))
    path.write_bytes(safetensors.torch.save({k: v for k, v in tensors.items() if not k.startswith("state.")}))
    loaded = energydsl.load_run(tmp_path)
    assert torch.equal(loaded.params["b"], model.params["b"].detach())
    assert not activity.counts(loaded).any() and not loaded.dead_units().any()
