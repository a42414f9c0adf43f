"""The auxk term (the auxiliary-K loss of TopK SAEs) against a hand computation; which gradients it
gives; and how it reads the dead units from the evaluation's environment."""

from __future__ import annotations

import pytest
import torch

from energydsl.api import compile_program
from energydsl.model import EnergyModel
from energydsl.terms import TERMS

F64 = torch.float64
D = torch.tensor([[1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, -1.0]], dtype=F64)  # columns (1,0) (0,1) (1,1) (2,-1)
PRE = torch.tensor([[0.5, 2.0, 1.0, -1.0], [3.0, 0.2, 0.4, 0.3]], dtype=F64)
RESIDUAL = torch.tensor([[1.0, 2.0], [0.5, 0.5]], dtype=F64)


def energy(k, dead, residual=RESIDUAL, decoder=D, pre=PRE):
    return TERMS["auxk"]({"k": k}).energy(residual, decoder, pre, dead=dead)


@pytest.mark.parametrize(
    ("k", "dead", "expected"),
    [
        # units 1-3 dead, k = 2: sample 0 takes units 1, 2 (2.0, 1.0): D z = (1, 3), error 0 + 1;
        # sample 1 takes units 2, 3 (0.4, 0.3): D z = (1.0, 0.1), error 0.25 + 0.16; scale min(3/2, 1)
        (2, [False, True, True, True], [1.0, 0.41]),
        # k = 4: every dead unit above 0 (sample 0: units 1, 2, as unit 3 is below 0; sample 1: units 1-3,
        # D z = (1.0, 0.3)), never the live unit 0; scale 3/4
        (4, [False, True, True, True], [0.75 * 1.0, 0.75 * ((0.5 - 1.0) ** 2 + (0.5 - 0.3) ** 2)]),
        # unit 2 alone, k = 2: D z = (1, 1) and (0.4, 0.4); scale 1/2
        (2, [False, False, True, False], [0.5 * (0 + 1), 0.5 * (0.01 + 0.01)]),
        # no dead unit: nothing
        (2, [False, False, False, False], [0.0, 0.0]),
    ],
)
def test_energy_by_hand(k, dead, expected):
    torch.testing.assert_close(energy(k, torch.tensor(dead)), torch.tensor(expected, dtype=F64))


def test_without_a_dead_entry_no_unit_is_dead():
    torch.testing.assert_close(energy(2, None), torch.zeros(2, dtype=F64))


def test_gradient_reaches_the_chosen_dead_units_only_and_not_the_residual():
    residual, decoder, pre = (t.clone().requires_grad_(True) for t in (RESIDUAL, D, PRE))
    energy(2, torch.tensor([False, True, True, True]), residual, decoder, pre).sum().backward()
    assert residual.grad is None or not residual.grad.any()  # the residual is a target, held fixed
    assert not decoder.grad[:, 0].any() and not pre.grad[:, 0].any()  # the live unit
    assert not pre.grad[0, 3].any() and not pre.grad[1, 1].any()  # dead, but not among the top 2
    assert decoder.grad[:, 1:].abs().sum(dim=0).gt(0).all()


def test_gradient_matches_finite_differences():
    dead = torch.tensor([False, True, True, True])
    decoder, pre = D.clone().requires_grad_(True), PRE.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda dec, p: energy(2, dead, RESIDUAL, dec, p), (decoder, pre))


SPEC = """
model topk_aux
data synthetic(dim = 5)
input x[d]
latent z[8] >= 0
param D[d, 8]
param E[8, d]
param b_dec[d]
let pre = E @ (x - b_dec)
encoder z = relu(pre)
energy
  recon : sqerr(x, D @ z + b_dec)
  aux   : 0.5 * auxk(x - (D @ z + b_dec), D, pre, k = 3)
infer z by encoder
"""


def test_reads_the_dead_units_from_the_environment():
    program = compile_program(SPEC, data_info=((5,), None))
    model = EnergyModel(program, torch.randn(20, 5))
    x = torch.randn(6, 5)
    aux = program.terms[1]
    dead = torch.tensor([True, False, True, True, False, False, True, False])
    with torch.no_grad():
        z = model.encode(x)
        env = model.env(x, z)
        assert not aux.energy(env).any()  # no tracker: none dead
        env.tensors["dead"] = dead
        D, b, E = model.params["D"], model.params["b_dec"], model.params["E"]
        expected = 0.5 * energy(3, dead, x - (z @ D.T + b), D, (x - b) @ E.T)
        torch.testing.assert_close(aux.energy(env), expected)
    assert expected.gt(0).all()
