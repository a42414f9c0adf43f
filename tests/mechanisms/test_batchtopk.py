"""``batchtopk(v, k)``: the k·B largest of a training batch, against a plain sort; the running
threshold (its update rule, its use outside training, its agreement with training once settled,
its place in the saved model); its argument errors."""

import numpy as np
import pytest
import torch

import energydsl
from energydsl.expr.compiler import ExprCompiler, Symbol, Value
from energydsl.lang.parser import parse
from energydsl.mechanisms import model_functions
from energydsl.mechanisms.batchtopk import follow, keep_above, keep_largest_in_batch
from energydsl.runs import checkpoint
from energydsl.runs.directory import load_run

ENCODER = "batchtopk(relu(E @ x + b), k)"
SLOT = "batchtopk_threshold"


def reference_batch_topk(v: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest entries of the whole array kept, the others 0."""
    flat = v.ravel()
    out = np.zeros_like(flat)
    largest = np.argsort(flat)[::-1][:count]
    out[largest] = flat[largest]
    return out.reshape(v.shape)


@pytest.mark.parametrize("count", [1, 17, 90, 240])
def test_training_keeps_the_largest_of_the_whole_batch(count):
    v = torch.randn(20, 12, generator=torch.Generator().manual_seed(count))
    code, kept = keep_largest_in_batch(v, count)
    np.testing.assert_array_equal(code.numpy(), reference_batch_topk(v.numpy(), count))
    assert sorted(kept.tolist()) == sorted(v.flatten().sort(descending=True).values[:count].tolist())


def test_the_gradient_reaches_the_kept_entries_only():
    v = torch.randn(10, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.randn(10, 12, generator=torch.Generator().manual_seed(2))
    (keep_largest_in_batch(v, 30)[0] * weights).sum().backward()
    kept = torch.from_numpy(reference_batch_topk(v.detach().numpy(), 30)) != 0
    torch.testing.assert_close(v.grad, torch.where(kept, weights, 0.0))


def test_the_threshold_starts_at_the_first_batch_then_follows_at_the_rate():
    threshold = torch.tensor(0.0)
    follow(threshold, torch.tensor([0.0, 0.7, 0.4, 2.0]), rate=0.1)
    assert threshold.item() == pytest.approx(0.4)  # the smallest positive kept value, outright
    follow(threshold, torch.tensor([0.9, 1.5]), rate=0.1)
    assert threshold.item() == pytest.approx(0.9 * 0.4 + 0.1 * 0.9)
    follow(threshold, torch.tensor([0.0, -1.0]), rate=0.1)  # nothing positive kept: no news
    assert threshold.item() == pytest.approx(0.45)


def test_outside_training_entries_above_the_threshold_are_kept():
    v = torch.tensor([[0.1, 0.5, -0.3, 0.8], [0.45, 0.2, 0.6, 0.0]])
    expected = torch.tensor([[0.0, 0.5, 0.0, 0.8], [0.0, 0.0, 0.6, 0.0]])
    assert torch.equal(keep_above(v, torch.tensor(0.45)), expected)


def test_a_spec_trains_with_batch_topk_and_encodes_with_the_threshold(sae):
    model = sae(ENCODER)
    x = model.dataset.x_test[:40]
    E, b = model.params["E"].detach().numpy(), model.params["b"].detach().numpy()
    pre = np.maximum(x.numpy() @ E.T + b, 0)
    assert model.state[SLOT].item() == 0.0  # untrained: every positive entry passes
    np.testing.assert_allclose(model.encode(x).numpy(), pre, rtol=1e-6, atol=1e-7)
    with model.learning_step():  # a training step's forward pass
        code = model.encode(x)
    np.testing.assert_allclose(code.numpy(), reference_batch_topk(pre, 3 * 40), rtol=1e-6, atol=1e-7)
    smallest_kept = pre[reference_batch_topk(pre, 120) > 0].min()
    assert model.state[SLOT].item() == pytest.approx(smallest_kept)
    threshold = model.state[SLOT].item()
    np.testing.assert_allclose(model.encode(x).numpy(), np.where(pre > threshold, pre, 0), rtol=1e-6, atol=1e-7)
    assert model.state[SLOT].item() == threshold  # outside training it is only read


def test_training_and_inference_codes_agree_once_the_threshold_has_settled(sae):
    model = sae(ENCODER, count=4000)
    x = model.dataset.x_train
    generator = torch.Generator().manual_seed(0)

    def batch():  # a stationary stream: uniform draws from the same samples
        return x[torch.randint(len(x), (1024,), generator=generator)]

    with model.learning_step():
        for _ in range(400):
            model.encode(batch())
    threshold = model.state[SLOT].item()
    disagreements, counts = 0, 0
    for _ in range(10):
        fresh = batch()
        with model.learning_step():
            trained = model.encode(fresh)
        inferred = model.encode(fresh)
        both = (trained != 0) & (inferred != 0)
        torch.testing.assert_close(trained[both], inferred[both])  # a kept entry is v itself in both
        disagree = (trained != 0) != (inferred != 0)
        band = sorted((trained[trained != 0].min().item(), threshold))  # the batch's k·B-th largest vs θ
        values = torch.relu(fresh @ model.params["E"].detach().T + model.params["b"].detach())[disagree]
        assert ((values >= band[0] - 1e-6) & (values <= band[1] + 1e-6)).all()  # only entries near θ
        disagreements += disagree.sum().item()
        counts += (inferred != 0).sum().item()
    # a batch's k·B-th largest entry scatters around θ by about √(k·B) entries (1.7 % here): no more
    assert disagreements <= 0.03 * 10 * 3 * 1024
    assert counts / (10 * 1024) == pytest.approx(3, rel=0.02)  # k per sample on average


def test_the_threshold_is_saved_with_the_model_and_restored(sae, tmp_path):
    model = sae(ENCODER)
    energydsl.train(model)
    threshold = model.state[SLOT].clone()
    assert threshold.item() > 0
    checkpoint.save_model(tmp_path, model, model.program.spec.source)
    loaded = load_run(tmp_path)
    torch.testing.assert_close(loaded.state[SLOT], threshold)
    x = model.dataset.x_test
    torch.testing.assert_close(loaded.encode(x), model.encode(x))


def test_a_fractional_k_is_an_average_count():
    v = torch.rand(10, 12, generator=torch.Generator().manual_seed(4)) + 0.1
    scope = {"v": Symbol("input", Value((12,), batched=True), lambda env: env["v"])}
    compiler = ExprCompiler(scope, "model", model_functions())
    _, fn = compiler.compile(parse("let t = batchtopk(v, 2.5)").lets[0].value)
    code = fn({"v": v, "training": True, "state": {slot.name: torch.tensor(0.0) for slot in compiler.states}})
    assert (code != 0).sum().item() == 25
    assert [slot.name for slot in compiler.states] == [SLOT]


def test_each_call_has_its_own_threshold(sae):
    model = sae("batchtopk(relu(E @ x + b), k) + batchtopk(relu(E @ x - b), 2)")
    assert sorted(name for name in model.state if name.startswith(SLOT)) == [SLOT, SLOT + "2"]


@pytest.mark.parametrize(
    "encoder, fragment, message, hint",
    [
        ("batchtopk(relu(E @ x + b), 0.5)", "0.5", "k of batchtopk() must be at least 1, got 0.5", "keeping no entry"),
        ("batchtopk(relu(E @ x + b), 20)", "20", "k of batchtopk() is 20, but each sample has only 12 entries",
         "k must be at most 12"),
        ("batchtopk(relu(E @ x + b), k, rate = 0)", "0", "the rate of batchtopk() must be a number in (0, 1], got 0",
         "the weight of each training batch"),
        ("batchtopk(relu(E @ x + b), k, 0.1, 2)", "2", "batchtopk() takes at most 3 argument(s), got 4", "batchtopk(v, k, rate"),
        ("batchtopk(b, k)", "b", "batchtopk() acts on each sample's values", "for example"),
    ],
)  # fmt: skip
def test_argument_errors(spec_error, position, encoder, fragment, message, hint):
    error = spec_error(encoder)
    assert error.message.startswith(message)
    assert hint is None or hint in error.hint
    assert (error.span.line, error.span.column) == position(encoder, fragment)
