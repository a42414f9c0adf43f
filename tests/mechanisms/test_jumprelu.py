"""``jumprelu(v, theta, bandwidth)``: the forward against numpy, the straight-through gradient against
its formula and against the derivative of the kernel-smoothed function, the spec's codes, the
argument errors, and a threshold that an L0 penalty moves."""

import numpy as np
import pytest
import torch

import energydsl
from energydsl.mechanisms.jumprelu import jumprelu_function, step_function

EPS = 0.1


def draws(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rect(u: np.ndarray) -> np.ndarray:
    return (np.abs(u) < 0.5).astype(u.dtype)


@pytest.mark.parametrize("per_unit", [True, False])
def test_forward_zeroes_what_is_not_above_the_threshold(per_unit):
    v = draws(0, 50, 6)
    theta = draws(1, 6).abs() if per_unit else torch.tensor(0.3, dtype=torch.float64)
    expected = np.where(v.numpy() > theta.numpy(), v.numpy(), 0.0)
    np.testing.assert_array_equal(jumprelu_function(v, theta, EPS).numpy(), expected)
    np.testing.assert_array_equal(jumprelu_function(v, 0.3, EPS).numpy(), np.where(v.numpy() > 0.3, v.numpy(), 0))


@pytest.mark.parametrize("per_unit", [True, False])
def test_gradients_follow_the_rectangle_estimate(per_unit):
    v = (draws(2, 400, 6) * 0.2 + 0.3).requires_grad_()
    theta = (draws(3, 6).abs() * 0.2 + 0.2 if per_unit else torch.tensor(0.3, dtype=torch.float64)).requires_grad_()
    g = draws(4, 400, 6)
    (jumprelu_function(v, theta, EPS) * g).sum().backward()
    vn, tn, gn = v.detach().numpy(), theta.detach().numpy(), g.numpy()
    np.testing.assert_allclose(v.grad.numpy(), (vn > tn) * gn)
    pseudo = -(tn / EPS) * rect((vn - tn) / EPS) * gn
    expected = pseudo.sum(axis=0) if per_unit else pseudo.sum()
    np.testing.assert_allclose(theta.grad.numpy(), expected, rtol=1e-12)
    assert np.count_nonzero(rect((vn - tn) / EPS)) > 100  # the window holds samples: the test means something


def test_the_threshold_gradient_is_near_the_derivative_of_the_smoothed_jump():
    """J_ε(θ) = Σ g·v·S((v − θ)/ε), S the rectangle's integral clip(u + ½, 0, 1), has the derivative
    −Σ g·(v/ε)·rect((v − θ)/ε); the estimate puts θ for v inside the window, where |v − θ| < ε/2."""
    v, g = draws(5, 2000) * 0.3 + 0.5, draws(6, 2000)
    theta0 = 0.5

    def smoothed(theta: float) -> float:
        return float((g * v * ((v - theta) / EPS + 0.5).clamp(0, 1)).sum())

    h = 1e-7
    finite_difference = (smoothed(theta0 + h) - smoothed(theta0 - h)) / (2 * h)
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    (jumprelu_function(v, theta, EPS) * g).sum().backward()
    window = (v - theta0).abs() < EPS / 2
    allowed = float((g.abs() * window).sum()) * 0.5  # |v − θ|/ε < ½ on each term in the window
    assert abs(theta.grad.item() - finite_difference) <= allowed
    assert abs(finite_difference) > 0.1 * allowed  # and the derivative is not negligible beside it


def test_a_constant_threshold_receives_no_gradient_and_needs_none():
    v = draws(7, 10, 4).requires_grad_()
    jumprelu_function(v, 0.1, EPS).sum().backward()
    np.testing.assert_array_equal(v.grad.numpy(), (v.detach().numpy() > 0.1).astype(float))


def test_a_spec_encodes_with_a_per_unit_threshold(sae):
    model = sae("jumprelu(E @ x + b, theta)", extra="param theta[12]")
    model.params["theta"].data = torch.linspace(0, 1, 12)
    x = model.dataset.x_test[:40]
    E, b = model.params["E"].detach().numpy(), model.params["b"].detach().numpy()
    pre = x.numpy() @ E.T + b
    expected = np.where(pre > np.linspace(0, 1, 12), pre, 0)
    np.testing.assert_allclose(model.encode(x).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_an_l0_penalty_through_step_raises_the_thresholds(sae):
    """l1(step(pre, theta)) counts the units above their thresholds, and its straight-through gradient
    is what raises θ: the reconstruction alone lowers it (to about -0.04 on average in this setting)."""
    model = sae("jumprelu(pre, theta, bandwidth = 0.1)", extra="param theta[12] init 0.01 lr_scale 10\nlet pre = E @ x + b",
                energy="count : 0.1 * l1(step(pre, theta, 0.1))", count=600, epochs=2)  # fmt: skip
    x = model.dataset.x_test
    l0_before = (model.encode(x) != 0).sum(dim=1).float().mean().item()
    energydsl.train(model)
    l0_after = (model.encode(x) != 0).sum(dim=1).float().mean().item()
    assert model.params["theta"].mean().item() > 0.1
    assert l0_after < 0.8 * l0_before, (l0_before, l0_after)


@pytest.mark.parametrize(
    "encoder, fragment, message, hint",
    [
        ("jumprelu(E @ x + b, t5)", "t5", "the threshold of jumprelu() must be a scalar or [12] (one per entry of "
         "a sample), this is a [5] parameter", "param theta[12]"),
        ("jumprelu(E @ x + b, E @ x)", "E @ x", "the threshold of jumprelu() must be the same for every sample, "
         "this is a per-sample [12] value", "declare a parameter"),
        ("jumprelu(E @ x + b, 0.1, bandwidth = 0)", "0", "the bandwidth of jumprelu() must be a positive number, "
         "got 0", "the default is 0.05"),
        ("jumprelu(E @ x + b, 0.1, bandwidth = b)", "b", "the bandwidth of jumprelu() must be a positive number, "
         "got a [12] parameter", "the width of the window"),
        ("jumprelu(E @ x + b)", "jumprelu(E @ x + b)", "jumprelu() needs 2 argument(s)", "it is called as jumprelu(v, theta"),
        ("jumprelu(b, 0.1)", "b", "jumprelu() acts on each sample's values", "jumprelu(E @ x + b, theta)"),
    ],
)  # fmt: skip
def test_argument_errors(spec_error, position, encoder, fragment, message, hint):
    error = spec_error(encoder, extra="param t5[5]")
    assert error.message == message or error.message.startswith(message)
    assert hint is None or hint in error.hint
    assert (error.span.line, error.span.column) == position(encoder, fragment, extra="param t5[5]")


def test_the_functions_are_importable_for_other_terms():
    v = draws(8, 5, 3)
    assert torch.equal(step_function(v, 0.2, EPS), (v > 0.2).to(v.dtype))
    assert torch.equal(jumprelu_function(v, 0.2, EPS), v * (v > 0.2))
