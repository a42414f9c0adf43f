"""The soft_l0 term: Σᵢ tanh(c·|vᵢ|), against a plain formula, with its gradient checked numerically."""

from __future__ import annotations

import math

import torch

from energydsl.api import compile_program
from energydsl.model import EnergyModel
from energydsl.terms import TERMS


def test_energy_is_the_sum_of_tanh_of_the_scaled_magnitudes():
    v = torch.tensor([[0.0, -0.5, 2.0], [0.1, 0.0, -3.0]], dtype=torch.float64)
    energy = TERMS["soft_l0"]({"scale": 2.0}).energy(v)
    expected = [math.tanh(1.0) + math.tanh(4.0), math.tanh(0.2) + math.tanh(6.0)]
    torch.testing.assert_close(energy, torch.tensor(expected, dtype=torch.float64))


def test_default_scale_is_four():
    v = torch.tensor([[0.25, -0.25]], dtype=torch.float64)
    torch.testing.assert_close(TERMS["soft_l0"]({}).energy(v), torch.tensor([2 * math.tanh(1.0)], dtype=torch.float64))


def test_gradient_matches_finite_differences_away_from_zero():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    v = (v + 0.2 * v.sign()).requires_grad_(True)  # |v| > 0.2: the kink at 0 is out of reach
    term = TERMS["soft_l0"]({"scale": 3.0})
    assert torch.autograd.gradcheck(term.energy, (v,))


SPEC = """
model tanh_sae
data synthetic(dim = 4)
input x[d]
latent z[6] >= 0
param D[d, 6]
param E[6, d]
encoder z = relu(E @ x)
energy
  recon : sqerr(x, D @ z)
  sparse : soft_l0(z * 2, scale = 0.5)
infer z by encoder
"""


def test_in_a_spec():
    model = EnergyModel(compile_program(SPEC, data_info=((4,), None)), torch.randn(10, 4))
    x = torch.randn(5, 4)
    with torch.no_grad():
        z = model.encode(x)
        energy = model.terms(x, z)["sparse"]
    torch.testing.assert_close(energy, torch.tanh(0.5 * (2 * z).abs()).sum(dim=1))
