"""Ramps during training: the value each step uses, what each epoch records and evaluates with,
a resumed run that continues the ramp bitwise, and the final value after training."""

from __future__ import annotations

import json
import os
import signal

import pytest
import safetensors.torch
import torch

import energydsl
import energydsl.api
from energydsl.runs.checkpoint import METRICS_FILE, MODEL_FILE
from energydsl.training.loop import Interrupted, evaluate

SPEC = """
model ramped
data synthetic(dim = 8, atoms = 12, count = 150, k = 2, seed = 3)
const lam = 0.1
input x[8]
latent z[12]
param W[8, 12] init samples(x) constrain col_norm == 1
param E[12, 8] init W.T
encoder z = relu(E @ x - lam)
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by encoder
train
  optimizer adam(lr = 0.01)
  batch 10
  epochs 3
  ramp lam from 0 over 20 steps
"""
RAMP_STEPS, LAM = 20, 0.1


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """A run directory without its pictures (seconds of matplotlib that these tests do not look at)."""
    monkeypatch.setattr(energydsl.api, "write_pictures", lambda *args, **kwargs: {})


def lam_after(steps: int) -> float:
    """The ramp's value after ``steps`` steps: a straight line from 0 to 0.1 over 20 steps."""
    return LAM * min(steps / RAMP_STEPS, 1)


def schedule(model):
    (ramp,) = model.program.schedules
    return ramp


def steps_per_epoch(model) -> int:
    return -(-model.dataset.x_train.shape[0] // model.program.training.batch)


def test_each_step_uses_the_ramps_value_at_its_position_and_training_ends_at_the_final_value():
    model = energydsl.load(SPEC)
    used = []
    history = energydsl.train(model, on_step=lambda done, total, energy: used.append(schedule(model).value))
    per_epoch = steps_per_epoch(model)
    assert per_epoch * 2 > RAMP_STEPS > per_epoch  # the ramp ends during the second epoch
    assert used == pytest.approx([lam_after(step) for step in range(3 * per_epoch)], rel=1e-12, abs=0)
    assert used[0] == 0 and used[-1] == LAM
    assert [m["schedule.lam"] for m in history] == pytest.approx([lam_after(per_epoch), LAM, LAM], rel=1e-12)
    assert schedule(model).value == LAM


def test_each_epoch_evaluates_with_the_value_at_its_end_and_metrics_jsonl_records_it(tmp_path):
    model = energydsl.load(SPEC)
    first_epoch = {}

    def keep_first(metrics):
        if metrics["epoch"] == 1:
            first_epoch["params"] = {name: p.detach().clone() for name, p in model.params.items()}

    history = energydsl.train(model, out=tmp_path / "run", on_epoch=keep_first)
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["schedule.lam"] for r in records] == [m["schedule.lam"] for m in history]
    lam = records[0]["schedule.lam"]
    assert 0 < lam < LAM
    # the same parameters in a model whose λ is that value as a constant evaluate to the same metrics
    fixed = energydsl.load(SPEC.replace("const lam = 0.1", f"const lam = {lam!r}").replace("  ramp lam", "# ramp"))
    with torch.no_grad():
        for name, value in first_epoch["params"].items():
            fixed.params[name].copy_(value)
    expected = evaluate(fixed, fixed.dataset)
    assert {key: records[0][key] for key in expected} == expected
    assert schedule(energydsl.load_run(tmp_path / "run")).value == LAM  # a loaded run: the final value


def test_a_resumed_run_continues_the_ramp_bitwise(tmp_path):
    reference = energydsl.train(energydsl.load(SPEC), out=tmp_path / "reference")
    model = energydsl.load(SPEC)

    def press_ctrl_c(metrics):
        if metrics["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled as a flag: the loop saves after the next step

    with pytest.raises(Interrupted) as stop:
        energydsl.train(model, out=tmp_path / "run", on_epoch=press_ctrl_c)
    assert 0 < lam_after(stop.value.step) < LAM  # stopped half-way up the ramp
    assert schedule(model).value == LAM  # an interrupted training leaves the final value too
    resumed = energydsl.load(SPEC)
    history = energydsl.train(resumed, out=tmp_path / "run", resume=True)
    assert [m["schedule.lam"] for m in history] == [m["schedule.lam"] for m in reference]
    before = safetensors.torch.load_file(str(tmp_path / "reference" / MODEL_FILE))
    after = safetensors.torch.load_file(str(tmp_path / "run" / MODEL_FILE))
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), f"{name} differs"
