"""``topk(v, k)``: each sample's k largest entries, against a plain loop; its gradient; its argument
errors; a scheduled k; and a short training of a TopK auto-encoder."""

import numpy as np
import pytest
import torch

import energydsl
from energydsl.expr.compiler import ExprCompiler, Symbol, Value
from energydsl.lang.parser import parse
from energydsl.mechanisms import MECHANISMS, model_functions
from energydsl.mechanisms.topk import keep_largest


def reference_topk(v: np.ndarray, k: int) -> np.ndarray:
    """Row by row: the k largest entries kept, the others 0."""
    out = np.zeros_like(v)
    for row, values in enumerate(v):
        largest = np.argsort(values)[::-1][:k]
        out[row, largest] = values[largest]
    return out


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_forward_keeps_the_k_largest_of_each_sample(k):
    v = torch.randn(40, 12, generator=torch.Generator().manual_seed(k))
    np.testing.assert_array_equal(keep_largest(v, k).numpy(), reference_topk(v.numpy(), k))


def test_by_value_not_by_magnitude():
    v = torch.tensor([[-5.0, 1.0, 2.0, -0.5]])
    assert keep_largest(v, 2).tolist() == [[0.0, 1.0, 2.0, 0.0]]


def test_an_image_keeps_its_k_largest_over_all_its_maps():
    v = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    kept = keep_largest(v, 4)
    assert kept.shape == v.shape
    np.testing.assert_array_equal(kept.flatten(1).numpy(), reference_topk(v.flatten(1).numpy(), 4))


def test_the_gradient_reaches_the_kept_entries_only():
    v = torch.randn(30, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.randn(30, 12, generator=torch.Generator().manual_seed(2))
    (keep_largest(v, 4) * weights).sum().backward()
    kept = torch.from_numpy(reference_topk(v.detach().numpy(), 4)) != 0
    torch.testing.assert_close(v.grad, torch.where(kept, weights, 0.0))


def test_a_spec_encodes_relu_then_topk(sae):
    model = sae("topk(relu(E @ x + b), k)")
    x = model.dataset.x_test[:50]
    E, b = model.params["E"].detach().numpy(), model.params["b"].detach().numpy()
    pre = np.maximum(x.numpy() @ E.T + b, 0)
    np.testing.assert_allclose(model.encode(x).numpy(), reference_topk(pre, 3), rtol=1e-6, atol=1e-7)


def test_a_scheduled_k_is_read_at_run_time_and_rounded():
    # a constant without a compile-time value (a schedule's): its closure returns the current float
    current = {"k": 2.6}
    scope = {
        "v": Symbol("input", Value((12,), batched=True), lambda env: env["v"]),
        "k": Symbol("const", Value(()), lambda env: current["k"]),
    }
    value, fn = ExprCompiler(scope, "model", model_functions()).compile(parse("let t = topk(v, k)").lets[0].value)
    assert value.shape == (12,) and value.batched
    v = torch.randn(20, 12, generator=torch.Generator().manual_seed(3))
    assert (fn({"v": v}) != 0).sum(dim=1).tolist() == [3] * 20
    current["k"] = 5.2
    assert (fn({"v": v}) != 0).sum(dim=1).tolist() == [5] * 20
    current["k"] = 40.0  # past the width: clipped to it
    assert (fn({"v": v}) != 0).sum(dim=1).tolist() == [12] * 20


@pytest.mark.parametrize(
    "k, message, hint",
    [
        ("0", "k of topk() must be at least 1, got 0", "keeping no entry"),
        ("2.5", "k of topk() must be a whole number, got 2.5", "the number of entries kept per sample"),
        ("13", "k of topk() is 13, but each sample has only 12 entries", "k must be at most 12"),
        ("b", "k of topk() must be a number, this is a [12] parameter", "a count of units kept per sample"),
        ("relu(E @ x)", "k of topk() must be a number, this is a per-sample [12] value", "a count of units"),
    ],
)
def test_a_bad_k_is_an_error_at_the_argument(spec_error, position, k, message, hint):
    encoder = f"topk(relu(E @ x + b), {k})"
    error = spec_error(encoder)
    assert error.message == message
    assert hint in error.hint
    assert (error.span.line, error.span.column) == position(encoder, k)


def test_a_value_that_is_not_per_sample_is_an_error(spec_error, position):
    error = spec_error("topk(b, 2)")
    assert error.message.startswith("topk() acts on each sample's values")
    assert "topk(relu(E @ x + b), 32)" in error.hint
    assert (error.span.line, error.span.column) == position("topk(b, 2)", "b")


def test_the_reference_entry_names_the_usual_non_negative_form():
    assert "topk(relu(pre), k)" in MECHANISMS["topk"].__doc__


def test_training_a_topk_autoencoder_keeps_k_and_lowers_the_error(sae):
    torch.manual_seed(0)
    model = sae("topk(relu(E @ x + b), k)", count=2000, epochs=5)  # 1600 training samples: 250 steps, ~1.5 s
    x = model.dataset.x_test

    def reconstruction_error() -> float:
        with torch.no_grad():
            return model.terms(x, model.encode(x))["recon"].mean().item()

    before = reconstruction_error()
    energydsl.train(model)
    after = reconstruction_error()
    codes = model.encode(x)
    assert (codes != 0).sum(dim=1).max().item() <= 3
    assert (codes != 0).sum(dim=1).float().mean().item() > 2  # it does use its k units
    assert after < 0.2 * before, (before, after)
