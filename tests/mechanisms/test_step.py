"""``step(v)`` and ``step(v, theta, bandwidth)``: the forward, the (absent) gradient to v, the
straight-through gradient to θ against its formula and against the exact derivative of the
kernel-smoothed step, a gated encoder's codes, the argument errors."""

import numpy as np
import pytest
import torch

from energydsl.mechanisms.jumprelu import step_function
from energydsl.mechanisms.step import gate

EPS = 0.2


def draws(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_gate_is_one_above_zero_and_passes_no_gradient():
    v = torch.tensor([[-1.0, 0.0, 0.5, 2.0]], requires_grad=True)
    assert gate(v).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert not gate(v).requires_grad  # nothing flows back through it


@pytest.mark.parametrize("per_unit", [True, False])
def test_the_threshold_gradient_follows_the_rectangle_estimate_and_v_gets_none(per_unit):
    v = (draws(1, 300, 5) * 0.3).requires_grad_()
    theta = (draws(2, 5) * 0.1 if per_unit else torch.tensor(0.05, dtype=torch.float64)).requires_grad_()
    g = draws(3, 300, 5)
    out = step_function(v, theta, EPS)
    np.testing.assert_array_equal(out.detach().numpy(), (v.detach().numpy() > theta.detach().numpy()).astype(float))
    (out * g).sum().backward()
    assert v.grad is None
    vn, tn = v.detach().numpy(), theta.detach().numpy()
    pseudo = -(1 / EPS) * (np.abs((vn - tn) / EPS) < 0.5) * g.numpy()
    np.testing.assert_allclose(theta.grad.numpy(), pseudo.sum(axis=0) if per_unit else pseudo.sum(), rtol=1e-12)


def test_the_estimate_is_the_derivative_of_the_smoothed_step():
    """Averaged over a window of width ε, the step becomes S((v − θ)/ε) with S(u) = clip(u + ½, 0, 1),
    whose derivative in θ is exactly the estimate −(1/ε)·rect((v − θ)/ε)."""
    v, g = draws(4, 500, 3) * 0.5, draws(5, 500, 3)
    theta0 = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    h = 1e-6

    def smoothed(theta: torch.Tensor) -> torch.Tensor:
        return (g * ((v - theta) / EPS + 0.5).clamp(0, 1)).sum(dim=0)

    finite_difference = (smoothed(theta0 + h) - smoothed(theta0 - h)) / (2 * h)  # one unit per column
    theta = theta0.clone().requires_grad_()
    (step_function(v, theta, EPS) * g).sum().backward()
    assert ((v - theta0).abs() - EPS / 2).abs().min() > 10 * h  # no sample on a corner of the kernel
    np.testing.assert_allclose(theta.grad.numpy(), finite_difference.numpy(), rtol=1e-6)


def test_a_gated_encoder(sae):
    model = sae("step(G @ x + c) * relu(E @ x + b)", extra="param G[12, d] init normal(0.5)\nparam c[12]")
    x = model.dataset.x_test[:30]
    p = {name: t.detach().numpy() for name, t in model.params.items()}
    gate_open = x.numpy() @ p["G"].T + p["c"] > 0
    expected = gate_open * np.maximum(x.numpy() @ p["E"].T + p["b"], 0)
    np.testing.assert_allclose(model.encode(x).numpy(), expected, rtol=1e-6, atol=1e-7)
    assert 0 < gate_open.mean() < 1  # both branches are exercised


@pytest.mark.parametrize(
    "encoder, fragment, message, hint",
    [
        ("step(E @ x, bandwidth = 0.1) * b", "0.1", "step(v) has no threshold to estimate a gradient for",
         "step(v, theta, bandwidth = 0.05)"),
        ("step(E @ x, t5) * b", "t5", "the threshold of step() must be a scalar or [12]", "param theta[12]"),
        ("step(E @ x, 0.1, -1) * b", "-1", "the bandwidth of step() must be a positive number, got -1",
         "the default is 0.05"),
        ("step(b)", "b", "step() acts on each sample's values", "step(W_gate @ x + b_gate)"),
        ("step(E @ x, thetaa) * b", "thetaa", "unknown name 'thetaa'", None),
    ],
)  # fmt: skip
def test_argument_errors(spec_error, position, encoder, fragment, message, hint):
    error = spec_error(encoder, extra="param t5[5]")
    assert error.message.startswith(message)
    assert hint is None or hint in error.hint
    assert (error.span.line, error.span.column) == position(encoder, fragment, extra="param t5[5]")
