"""Ramps: constants that move during training (``ramp lam from 0 over 1000 steps``).

What a ramp compiles to (its values at given steps, its start read with the declared values),
how model expressions and term weights follow its current value — FISTA's threshold included —
and an error at every use that needs a fixed number.
"""

from __future__ import annotations

import math

import pytest
import torch

import energydsl
from energydsl.compiler import Schedule, finish_schedules, set_schedules
from energydsl.errors import Span, SpecError
from energydsl.lang.fmt import format_source

SPAN = Span(line=1, column=1, end_line=1, end_column=2)

RAMPED = """data synthetic(dim = 8, atoms = 12, count = 120, k = 2, seed = 1)
const lam = 0.2
const k = 3
input x[8]
latent z[12] >= 0
param W[8, 12] init samples(x) constrain col_norm == 1
param E[12, 8] init W.T
encoder z = relu(E @ x - lam)
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 2 * lam / k * l1(z)
infer z by fista(steps = 400, tol = 0)
train
  batch 20
  epochs 3
  ramp lam from 0 over 100 steps
  ramp k from 4 * k over 2 epochs cosine
"""


def ramps(program) -> dict[str, Schedule]:
    return {s.name: s for s in program.schedules}


# ---------------------------------------------------------------- the values


def test_a_linear_ramp_goes_from_its_start_to_the_final_value_then_stays():
    ramp = Schedule("lam", 0.0, 0.1, 1000, "steps", "linear", SPAN)
    assert ramp.value == 0.1  # outside training: the final value
    values = [ramp.at(step, epochs=0.0) for step in (0, 1, 250, 999, 1000, 5000)]
    assert values == pytest.approx([0.0, 1e-4, 0.025, 0.0999, 0.1, 0.1], abs=1e-15)
    assert ramp.at(1000, 0.0) == 0.1  # exactly the declared value once the ramp is done


def test_a_ramp_in_epochs_counts_fractions_of_an_epoch_and_the_cosine_eases():
    k = Schedule("k", 12.0, 3.0, 2, "epochs", "cosine", SPAN)
    for epochs in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 7.0):
        done = min(epochs / 2, 1)
        assert k.at(steps=10_000, epochs=epochs) == pytest.approx(3 + 9 * 0.5 * (1 + math.cos(math.pi * done)))
    assert (k.at(0, 0.0), k.at(0, 1.0), k.at(0, 2.0)) == (12.0, pytest.approx(7.5), 3.0)
    linear = Schedule("k", 12.0, 3.0, 2, "epochs", "linear", SPAN)
    assert linear.at(0, 0.5) == pytest.approx(9.75)


def test_set_and_finish_move_every_ramp():
    lam = Schedule("lam", 0.0, 0.1, 100, "steps", "linear", SPAN)
    k = Schedule("k", 12.0, 3.0, 2, "epochs", "linear", SPAN)
    set_schedules([lam, k], steps=50, epochs=1.0)
    assert (lam.value, k.value) == (pytest.approx(0.05), pytest.approx(7.5))
    finish_schedules([lam, k])
    assert (lam.value, k.value) == (0.1, 3.0)


def test_the_start_reads_every_constant_at_its_declared_value_and_set_moves_the_end():
    program = energydsl.compile_program(RAMPED)
    lam, k = ramps(program)["lam"], ramps(program)["k"]
    assert (lam.start, lam.end, lam.length, lam.unit, lam.shape) == (0.0, 0.2, 100, "steps", "linear")
    assert (k.start, k.end, k.length, k.unit, k.shape) == (12.0, 3.0, 2, "epochs", "cosine")
    assert program.constants == {"lam": 0.2, "k": 3.0}
    overridden = ramps(energydsl.compile_program(RAMPED, {"k": 8}))["k"]
    assert (overridden.start, overridden.end) == (32.0, 8.0)


# ---------------------------------------------------------------- what reads the current value


def test_a_terms_weight_follows_its_ramped_factors():
    program = energydsl.compile_program(RAMPED)
    sparse = next(t for t in program.terms if t.name == "sparse")
    lam, k = ramps(program)["lam"], ramps(program)["k"]
    assert sparse.fixed_weight == 2 and sparse.weight_text() == "2 * lam / k"
    assert sparse.weight == pytest.approx(2 * 0.2 / 3)
    lam.value, k.value = 0.05, 10.0
    assert sparse.weight == pytest.approx(2 * 0.05 / 10)
    lam.value = 0.0
    assert sparse.weight == 0.0
    finish_schedules(program.schedules)
    recon = next(t for t in program.terms if t.name == "recon")
    assert (recon.weight, recon.varying, recon.weight_text()) == (0.5, None, "0.5")


def test_the_encoder_reads_the_current_value():
    model = energydsl.load(RAMPED)
    x = model.dataset.x_test[:16]
    E = model.params["E"].detach()
    for value in (0.0, 0.07, 0.2):
        ramps(model.program)["lam"].value = value
        torch.testing.assert_close(model.encode(x), torch.relu(x @ E.T - value), rtol=0, atol=0)
    finish_schedules(model.program.schedules)


def with_constant(spec: str, **values) -> str:
    """The spec without its ramps, with these constants' values."""
    lines = [line for line in spec.splitlines() if not line.strip().startswith("ramp")]
    for name, value in values.items():
        lines = [f"const {name} = {value}" if line.startswith(f"const {name} ") else line for line in lines]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.05])
def test_fista_thresholds_follow_a_ramped_lambda(lam):
    """z* with λ ramped to a value is z* of the spec with that λ as a constant: the prox's threshold
    (τ·2λ/k) follows the ramp."""
    ramped = energydsl.load(RAMPED, seed=0)
    fixed = energydsl.load(with_constant(RAMPED, lam=lam), seed=0)
    fixed.load_state_dict(ramped.state_dict())
    ramps(ramped.program)["lam"].value = lam
    x = ramped.dataset.x_test[:32]
    z = ramped.infer(x)
    torch.testing.assert_close(z, fixed.infer(x), rtol=0, atol=1e-6)
    finish_schedules(ramped.program.schedules)


def test_a_larger_ramped_lambda_gives_sparser_codes():
    model = energydsl.load(RAMPED, seed=0)
    x = model.dataset.x_test[:32]
    active = []
    for value in (0.0, 0.05, 0.2):
        ramps(model.program)["lam"].value = value
        active.append(int((model.infer(x) != 0).sum()))
    finish_schedules(model.program.schedules)
    assert active[0] > active[1] > active[2]


def test_check_and_explain_show_the_ramps(tmp_path, capsys):
    from energydsl.cli import main

    path = tmp_path / "ramped.energy"
    path.write_text(RAMPED)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  term      sparse: 2 * lam / k * l1  (prox)" in out
    assert "  ramp      lam: 0 → 0.2 over 100 steps (linear)" in out
    assert "  ramp      k: 12 → 3 over 2 epochs (cosine)" in out
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  sparse = 2 * lam / k · ‖z‖₁\n" in out
    assert "prox = soft-threshold sign(v)·max(|v| − τ·(2 * lam / k), 0) per unit" in out
    flat = " ".join(out.split())
    assert "ramp lam: 0 → 0.2 over 100 steps (linear), from the run's first step; read by the encoder and term " \
           "sparse." in flat
    assert "ramp k: 12 → 3 over 2 epochs (cosine), from the run's first step; read by term sparse." in flat


def test_fmt_keeps_a_ramp_on_one_line():
    source = "train\n  batch 20\n  ramp   lam from 0 over 100 steps\n  ramp k from 4*k over 2 epochs cosine\n"
    assert format_source(source) == ("train\n  batch 20\n  ramp lam from 0 over 100 steps\n"
                                     "  ramp k from 4 * k over 2 epochs cosine\n")  # fmt: skip


# ---------------------------------------------------------------- mistakes


BASE = """data synthetic(dim = 8, atoms = 12, count = 120)
const lam = 0.2
const k = 3
input x[8]
latent z[12]
param W[8, 12]
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by fista(steps = 20)
train
  batch 20
  epochs 2
  ramp k from 1 over 10 steps
"""
CHANGES = "'k' changes during training (ramp at line {ramp}): "
FIXED = CHANGES + "a fixed number is needed here"
HINT = " (only the encoder, lets and energy terms read its value as it changes; declare another constant for this use)"

INIT = CHANGES + "an initial value is computed once, before training" + HINT
# each mistake: (what the base spec has, what it has instead)..., the message
MISTAKES = {
    "a size": ([("latent z[12]", "latent z[4 * k]")], "5:14: " + FIXED + HINT),
    "another constant": ([("const k = 3", "const k = 3\nconst j = k + 1")], "4:11: " + FIXED + HINT),
    "an initial value": ([("param W[8, 12]", "param W[8, 12] init k")], "6:21: " + INIT),
    "a mask": ([("param W[8, 12]", "param W[8, 12] constrain mask k * ones")], "6:31: " + INIT),
    "a data argument": ([("count = 120)", "count = 40 * k)")], "1:50: " + FIXED + HINT),
    "a step count": ([("fista(steps = 20)", "fista(steps = k)")], "10:26: " + FIXED + HINT),
    "a recurrence's steps": ([("param W[8, 12]", "param W[8, 12]\nparam E[12, 8]\n"
                                                 "encoder z = recurrent(k) { relu(E @ x) }")], "8:23: " + FIXED + HINT),
    "the batch": ([("batch 20", "batch 10 * k")], "12:14: " + FIXED + HINT),
    "the epochs": ([("epochs 2", "epochs k")], "13:10: " + FIXED + HINT),
    "a constraint's bound": ([("param W[8, 12]", "param W[8, 12] constrain col_norm <= k")], "6:38: " + FIXED + HINT),
    "a ramp of an unknown constant": ([("ramp k from", "ramp kk from")],
                                      "14:8: ramp: unknown constant 'kk' (did you mean 'k'?)"),
    "a constant ramped twice": ([("over 10 steps\n", "over 10 steps\n  ramp k from 2 over 1 epoch\n")],
                                "15:8: 'k' is ramped twice (first at line 14)"),
    "a fractional step count": ([("over 10 steps", "over 2.5 steps")],
                                "14:22: a ramp's length in steps must be a whole number, got 2.5"),
    "a ramp of no length": ([("over 10 steps", "over 0 epochs")],
                            "14:22: a ramp's length in epochs must be positive, got 0"),
    "an unknown shape": ([("over 10 steps", "over 10 steps cosin")],
                         "14:31: unknown ramp shape 'cosin' (did you mean 'cosine'?)"),
    "an unknown unit": ([("over 10 steps", "over 10 stepz")],
                        "14:25: unexpected name 'stepz'; expected one of 'epoch', 'epochs', 'step', 'steps'"),
    "a negative weight at the start": ([("ramp k from 1", "ramp lam from -1")], "9:12: the weight of term 'sparse' "
                                       "is -1 with lam = -1 (an energy term must have a finite weight >= 0 "
                                       "throughout training)"),
    "a weight divided by zero at the start": ([("ramp k from 1", "ramp k from 0"), ("lam * l1", "lam / k * l1")],
                                              "9:12: the weight of term 'sparse' is inf with k = 0 (an energy term "
                                              "must have a finite weight >= 0 throughout training)"),
    "a parameter in a weight": ([("lam * l1(z)", "lam * W * l1(z)")], "9:18: expected a constant number here"),
}


@pytest.mark.parametrize("what", MISTAKES)
def test_every_misuse_is_a_located_one_line_error(what):
    replacements, message = MISTAKES[what]
    spec = BASE
    for old, new in replacements:
        assert old in spec
        spec = spec.replace(old, new, 1)
    ramp_line = next(n for n, line in enumerate(spec.splitlines(), 1) if line.strip().startswith("ramp"))
    with pytest.raises(SpecError) as error:
        energydsl.compile_program(spec)
    assert str(error.value) == "<spec>:" + message.replace("{ramp}", str(ramp_line))


def test_a_ramp_of_a_constant_no_model_expression_reads_is_a_warning():
    assert [str(w) for w in energydsl.compile_program(BASE).warnings] == [
        "<spec>:14:8: warning: ramp 'k': no model expression reads 'k' (the encoder, lets and energy terms read a "
        "ramped constant)"]


def test_a_ramp_longer_than_the_training_is_a_warning():
    longer = BASE.replace("ramp k from 1 over 10 steps", "ramp lam from 0 over 3 epochs")
    assert [str(w) for w in energydsl.compile_program(longer).warnings] == [
        "<spec>:14:24: warning: ramp 'lam' lasts 3 epochs, longer than the training (2 epochs): it ends before "
        "reaching 0.2 (shorten the ramp, or train longer)"]
    assert energydsl.compile_program(longer.replace("over 3 epochs", "over 2 epochs")).warnings == ()
