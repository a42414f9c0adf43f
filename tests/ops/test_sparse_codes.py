"""Sparse codes (ops/sparse_codes.py): a TopK spec's codes, decoder, auxiliary loss, energy and every
gradient equal the dense computation, and a training step of a wide TopK spec never makes its codes dense."""

import pytest
import torch

import energydsl
from energydsl.ops.sparse_codes import Affine, Pattern, SparseCodes, firing_counts, nonzero_count, top_k_codes
from energydsl.terms.auxk import auxk
from energydsl.training import activity
from energydsl.training.loop import make_optimizers, train_step

SPEC = """
model wide
data synthetic(dim = 16, atoms = 64, count = 600, k = 3, seed = 2)
const units = 256
const k = 5
input x[d]
latent z[units] >= 0
param D[d, units] constrain col_norm == 1
param E[units, d] init 0.5 * D.T
param b_enc[units] init 0.01
param b_dec[d] init zeros
let pre = E @ (x - b_dec) + b_enc
encoder z = ENCODER
energy
  recon : sqerr(x, D @ z + b_dec)
  aux   : 0.5 * auxk(x - (D @ z + b_dec), D, pre, k = 4)
infer z by encoder
train
  optimizer adam(lr = 1e-3)
  batch 100
  epochs 1
  dead after 100 samples
"""
DEAD = torch.arange(0, 256, 9)  # the units the test declares dead (the auxiliary term revives them)


def kept_in_rows(act: torch.Tensor, k: int) -> torch.Tensor:
    kept = act.topk(k, dim=1).indices
    return torch.zeros_like(act).scatter(1, kept, act.gather(1, kept))


def kept_in_batch(act: torch.Tensor, k: int) -> torch.Tensor:
    kept = act.flatten().topk(k * act.shape[0]).indices
    return torch.zeros_like(act).flatten().scatter(0, kept, act.flatten()[kept]).view_as(act)


ENCODERS = {  # the spec's encoder, and the same codes densely by hand from the pre-activations
    "topk(relu(pre), k)": lambda pre: kept_in_rows(torch.relu(pre), 5),
    "topk(pre, k)": lambda pre: kept_in_rows(pre, 5),
    "batchtopk(relu(pre), k)": lambda pre: kept_in_batch(torch.relu(pre), 5),
}


def reference_loss(params: dict, x: torch.Tensor, codes) -> torch.Tensor:
    """The same energy, densely, by hand: the codes, the decoder, the auxiliary term on the dense
    pre-activations."""
    pre = (x - params["b_dec"]) @ params["E"].T + params["b_enc"]
    xhat = codes(pre) @ params["D"].T + params["b_dec"]
    dead = torch.zeros(pre.shape[1], dtype=torch.bool).index_fill_(0, DEAD, True)
    aux = auxk({"k": 4}).energy(x - xhat, params["D"], pre, dead)
    return (((x - xhat) ** 2).sum(dim=1) + 0.5 * aux).mean()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_energy_and_every_gradient_equal_the_dense_computation(encoder):
    model = energydsl.load(SPEC.replace("ENCODER", encoder))
    x = model.dataset.x_train[:100]
    with torch.no_grad():  # a nonzero b_dec so that its gradient through the encoder matters
        model.params["b_dec"].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        activity.counts(model)[DEAD] = 1000
    assert model.dead_units().sum() == len(DEAD)
    with model.learning_step():
        z = model.infer_prepared(x, differentiable=True)
        assert isinstance(z, SparseCodes)
        loss = model.energy_of(x, z).mean()
    loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in model.params.items()}

    params = {name: p.detach().clone().requires_grad_() for name, p in model.params.items()}
    expected = reference_loss(params, x, ENCODERS[encoder])
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name in params:
        torch.testing.assert_close(sparse_grads[name], params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_matryoshka_energy_of_sparse_codes_equals_the_dense_one():
    spec = SPEC.replace("ENCODER", "batchtopk(relu(pre), k)").replace(
        "recon : sqerr(x, D @ z + b_dec)", "recon : matryoshka(x, D, z, b_dec, prefixes = [16, 64, 100])")
    model = energydsl.load(spec)
    x = model.dataset.x_train[:100]
    with model.learning_step():
        z = model.infer_prepared(x, differentiable=True)
        term = next(t for t in model.program.terms if t.name == "recon")
        env = model.env(x, z)
        sparse = term.energy(env)
        dense = term.term.energy(x, model.params["D"], z.dense(), model.params["b_dec"])
    torch.testing.assert_close(sparse, term.weight * dense)
    D = model.params["D"]
    (gradient_sparse,) = torch.autograd.grad(sparse.sum(), D, retain_graph=True)
    (gradient_dense,) = torch.autograd.grad(dense.sum() * term.weight, D)
    torch.testing.assert_close(gradient_sparse, gradient_dense)


def test_batchtopk_outside_training_keeps_what_is_above_its_threshold():
    model = energydsl.load(SPEC.replace("ENCODER", "batchtopk(relu(pre), k)"))
    x = model.dataset.x_test[:50]
    model.state["batchtopk_threshold"].fill_(0.05)
    z = model.infer_prepared(x)
    pre = (x - model.params["b_dec"]) @ model.params["E"].T + model.params["b_enc"]
    expected = torch.where(pre > 0.05, pre, 0.0).detach()
    assert isinstance(z, SparseCodes) and 0 < nonzero_count(z) < expected.numel()
    torch.testing.assert_close(z.dense().detach(), expected)


def test_a_wide_training_step_never_makes_the_codes_dense():
    model = energydsl.load(SPEC.replace("ENCODER", "topk(relu(pre), k)"), set={"units": 4096})
    x = model.dataset.x_train[:100]
    with torch.no_grad():
        activity.counts(model)[DEAD] = 1000
    before = SparseCodes.densified
    energy = train_step(model, make_optimizers(model), x, None, None)
    assert SparseCodes.densified == before
    assert energy > 0


def test_codes_count_and_fire_like_their_dense_form():
    values = torch.tensor([[0.5, 0.0, 2.0], [1.0, 3.0, 0.0]])
    indices = torch.tensor([[4, 1, 0], [4, 2, 3]])
    codes = SparseCodes.from_indices(values, indices, 6)
    dense = codes.dense()
    assert dense.tolist() == [[2.0, 0, 0, 0, 0.5, 0], [0, 0, 3.0, 0, 1.0, 0]]
    assert nonzero_count(codes) == nonzero_count(dense) == 4
    assert firing_counts(codes).tolist() == firing_counts(dense).tolist() == [1, 0, 1, 0, 2, 0]


def test_anything_else_is_answered_by_the_dense_tensor():
    codes = SparseCodes.from_indices(torch.tensor([[1.0, -2.0]]), torch.tensor([[2, 0]]), 3)
    dense = codes.dense()
    torch.testing.assert_close(codes * 2, dense * 2)
    torch.testing.assert_close(torch.relu(codes), torch.relu(dense))
    torch.testing.assert_close(codes.abs().sum(dim=1), dense.abs().sum(dim=1))
    torch.testing.assert_close(codes @ torch.eye(3), dense)  # decoding through rows of a matrix
    assert codes.shape == dense.shape


def test_an_affine_map_evaluates_chosen_units_and_columns():
    generator = torch.Generator().manual_seed(3)
    W, u, c = (torch.randn(7, 4, generator=generator), torch.randn(5, 4, generator=generator),
               torch.randn(7, generator=generator))  # fmt: skip
    affine = Affine(W, u).plus(c).plus(0.5, sign=-1)
    dense = u @ W.T + c - 0.5
    torch.testing.assert_close(affine.dense(), dense)
    torch.testing.assert_close(affine.detached_dense(), dense)
    indices = torch.tensor([[0, 6], [1, 1], [2, 3], [5, 4], [6, 0]])
    sorted_indices = indices.sort(dim=1).values
    torch.testing.assert_close(affine.at(Pattern.from_rows(sorted_indices, 7)),
                               dense.gather(1, sorted_indices).flatten())  # fmt: skip
    torch.testing.assert_close(affine.columns(torch.tensor([3, 1])), dense[:, [3, 1]])
    codes = top_k_codes(affine, 2, relu=True)
    torch.testing.assert_close(codes.dense(), torch.zeros_like(dense).scatter(
        1, dense.topk(2).indices, torch.relu(dense.topk(2).values)))  # fmt: skip


def test_the_products_of_a_pattern_with_uneven_and_empty_rows_have_exact_gradients():
    # samples keeping 3, 0 and 2 units of 6 (as batchtopk keeps them), in double precision for gradcheck
    pattern = Pattern.from_flat(torch.tensor([1, 2, 5, 12, 15]), batch=3, width=6)
    assert pattern.crow.tolist() == [0, 3, 3, 5] and pattern.columns.tolist() == [1, 2, 5, 0, 3]
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.randn(6, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    vectors = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    codes = SparseCodes(values, pattern)
    torch.testing.assert_close(codes @ rows, codes.dense() @ rows)
    assert (codes @ rows)[1].abs().sum() == 0  # the sample that keeps nothing decodes to 0
    torch.autograd.gradcheck(lambda v, r: SparseCodes(v, pattern) @ r, (values, rows))
    torch.autograd.gradcheck(lambda r, u: Affine(r, u).at(pattern), (rows, vectors))
    torch.testing.assert_close(Affine(rows, vectors).at(pattern),
                               (vectors @ rows.T)[pattern.rows(), pattern.columns])  # fmt: skip
