"""A batch scope computes the lets that do not read the latent once, for the encoder and the energy."""

import torch

import energydsl

SPEC = """
model shared
data synthetic(dim = 6, atoms = 8, count = 64, k = 2, nonneg = true)
input x[d]
latent z[8] >= 0
param E[8, d]
param b[8] init zeros
param D[d, 8]
let pre = E @ x + b
let xhat = D @ z
encoder z = relu(pre)
energy
  recon  : sqerr(x, xhat)
  sparse : 0.1 * l1(pre)
infer z by encoder
"""


def test_a_latent_free_let_is_computed_once_per_batch_scope_and_its_gradient_is_whole():
    model = energydsl.load(SPEC)
    E = model.params["E"]
    x = model.dataset.x_train[:16]
    xp = model.preprocess(x)

    def loss():
        z = model.infer_prepared(xp, differentiable=True)
        return model.energy_of(xp, z).sum()

    products = []
    original = torch.Tensor.__matmul__
    torch.Tensor.__matmul__ = lambda a, b: products.append(tuple(b.shape)) or original(a, b)
    try:
        unshared = loss()
        count_unshared = products.count((6, 8))  # x @ E.T, once by the encoder and once by the term
        products.clear()
        with model.batch_scope():
            shared = loss()
        count_shared = products.count((6, 8))
    finally:
        torch.Tensor.__matmul__ = original
    assert (count_unshared, count_shared) == (2, 1)
    assert torch.allclose(shared, unshared)
    grad_unshared = torch.autograd.grad(unshared, E)[0]
    grad_shared = torch.autograd.grad(shared, E)[0]
    assert torch.allclose(grad_shared, grad_unshared)  # both uses still reach E


def test_a_batch_scope_keeps_apart_the_values_of_different_inputs():
    """Inference may evaluate a few of the batch's samples inside the scope (the step size of code
    maps): a latent-free let of those samples is theirs, not the whole batch's."""
    model = energydsl.load(SPEC)
    xp = model.preprocess(model.dataset.x_train[:16])
    with model.batch_scope():
        whole = model.energy_of(xp, model.infer_prepared(xp))
        few = model.energy_of(xp[:4], model.infer_prepared(xp[:4]))
    assert whole.shape == (16,) and few.shape == (4,)
    assert torch.allclose(few, whole[:4])
