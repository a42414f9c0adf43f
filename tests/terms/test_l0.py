"""The l0 term: the count of units above their thresholds, its straight-through gradient to the
thresholds (the JumpReLU paper's rectangle kernel), and the quadratic penalty toward a target count."""

from __future__ import annotations

import pytest
import torch

from energydsl.api import compile_program
from energydsl.model import EnergyModel
from energydsl.terms import TERMS

EPS = 0.1


def reference_count(v, theta):
    return (v > theta).double().sum(dim=1)


def reference_theta_grad(v, theta, upstream, eps=EPS):
    """∂/∂θᵢ Σ_b w_b·l0_b = −(1/ε)·Σ_b w_b·1[|v_bi − θᵢ| < ε/2], by loops."""
    grad = torch.zeros_like(theta)
    for b in range(v.shape[0]):
        for i in range(v.shape[1]):
            if abs(v[b, i] - theta[i]) < eps / 2:
                grad[i] -= upstream[b] / eps
    return grad


def sample(seed=0):
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    theta = 0.3 * torch.randn(9, generator=generator, dtype=torch.float64)
    v[0, :3] = theta[:3] + torch.tensor([0.01, -0.02, 0.049], dtype=torch.float64)  # inside the kernel
    v[1, 3] = theta[3] + 0.06  # just outside it
    return v, theta


def test_energy_counts_the_units_above_their_thresholds():
    v, theta = sample()
    term = TERMS["l0"]({"bandwidth": EPS})
    torch.testing.assert_close(term.energy(v, theta), reference_count(v, theta))
    torch.testing.assert_close(term.energy(v, 0.5), (v > 0.5).double().sum(dim=1))  # one threshold for all


def test_straight_through_gradient_reaches_theta_by_the_rectangle_kernel_and_not_v():
    v, theta = sample()
    v.requires_grad_(True)
    theta.requires_grad_(True)
    upstream = torch.arange(1.0, 7.0, dtype=torch.float64)  # a different weight per sample
    (TERMS["l0"]({"bandwidth": EPS}).energy(v, theta) * upstream).sum().backward()
    torch.testing.assert_close(theta.grad, reference_theta_grad(v.detach(), theta.detach(), upstream))
    assert theta.grad[:3].lt(0).all()  # the pre-activations just around their thresholds push them up
    assert v.grad is None or not v.grad.any()


def test_target_is_the_quadratic_penalty_toward_the_target_count():
    v, theta = sample()
    theta.requires_grad_(True)
    target = 4.0
    energy = TERMS["l0"]({"bandwidth": EPS, "target": target}).energy(v, theta)
    count = reference_count(v, theta.detach())
    torch.testing.assert_close(energy, (2 / target) * (count - target) ** 2)
    energy.sum().backward()  # chain rule: (4/L)(l0 − L) per sample times the kernel
    upstream = (4 / target) * (count - target)
    torch.testing.assert_close(theta.grad, reference_theta_grad(v, theta.detach(), upstream))


SPEC = """
model jumprelu
data synthetic(dim = 5)
const eps = 0.05
input x[d]
latent z[7] >= 0
param D[d, 7]
param E[7, d]
param b_enc[7]
param theta[7] init 0.2
let pre = E @ x + b_enc
encoder z = relu(pre)
energy
  recon : sqerr(x, D @ z)
  sparse : 0.5 * l0(pre, theta, bandwidth = eps{target})
infer z by encoder
"""


@pytest.mark.parametrize("target", [None, 3])
def test_the_spec_hands_the_options_to_the_term(target):
    program = compile_program(SPEC.format(target="" if target is None else f", target = {target}"),
                              set={"eps": 0.02}, data_info=((5,), None))  # fmt: skip
    sparse = program.terms[1]
    assert sparse.term.static["bandwidth"] == 0.02 and sparse.term.static["target"] == target
    model = EnergyModel(program, torch.randn(20, 5))
    x = torch.randn(8, 5)
    pre = x @ model.params["E"].detach().T + model.params["b_enc"].detach()
    count = (pre > model.params["theta"].detach()).float().sum(dim=1)
    expected = count if target is None else (2 / target) * (count - target) ** 2
    with torch.no_grad():
        energy = model.terms(x, model.encode(x))["sparse"]
    torch.testing.assert_close(energy, 0.5 * expected)
