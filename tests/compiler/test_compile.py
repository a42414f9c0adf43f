"""The compiler: what a spec means, checked against hand-written PyTorch."""

import pytest
import torch

import energydsl
from energydsl.expr.compiler import INF


def test_recurrent_encoder_matches_hand_written_loop(drsae_source):
    model = energydsl.load(drsae_source)
    x = model.dataset.x_test[:8]
    p = {name: t.detach() for name, t in model.params.items()}
    xn = x / x.norm(dim=1, keepdim=True)
    z = torch.zeros(8, 32)
    for _ in range(3):
        z = torch.relu(xn @ p["E"].T + z @ p["S"].T - p["b"])
    torch.testing.assert_close(model.encode(x), z)


def test_ista_consistent_init_is_evaluated_in_order(drsae_source):
    model = energydsl.load(drsae_source)
    D, E, S = (model.params[n].detach() for n in "DES")
    # E = alpha D^T, then projected onto row norms <= 1.25 / (T - 1)
    expected_E = 0.5 * D.T
    norms = expected_E.norm(dim=1, keepdim=True)
    expected_E = expected_E * torch.clamp(0.625 / norms, max=1)
    torch.testing.assert_close(E, expected_E)
    torch.testing.assert_close(S, torch.eye(32) - 0.5 * D.T @ D)
    assert torch.all(D.norm(dim=0) <= 1 + 1e-6)
    assert torch.all(model.params["C"] == 0)


def test_energy_is_the_weighted_sum_of_terms(sparse_coding_source):
    model = energydsl.load(sparse_coding_source, set={"lam": 0.3})
    x = model.dataset.x_train[:5]
    z = torch.randn(5, 24)
    W = model.params["W"].detach()
    expected = 0.5 * ((x - z @ W.T) ** 2).sum(1) + 0.3 * z.abs().sum(1)
    torch.testing.assert_close(model.energy(x, z).detach(), expected)
    terms = model.terms(x, z)
    assert set(terms) == {"recon", "sparse"}
    torch.testing.assert_close(terms["sparse"].detach(), 0.3 * z.abs().sum(1))


def test_weights_fold_constants_products_and_divisions():
    source = """
    data synthetic(dim = 4, atoms = 4, count = 20)
    const a = 3
    input x[4]
    latent z[4]
    param W[4, 4] init I
    energy
      r : a * sqerr(x, W @ z) / 2 * 0.5
      s : 0.25 * a * l1(z)
    """
    program = energydsl.compile_program(source)
    assert program.terms[0].weight == pytest.approx(0.75)
    assert program.terms[1].weight == pytest.approx(0.75)


def test_degree_in_the_latent_decides_the_step_rule(drsae_source):
    program = energydsl.compile_program(drsae_source)
    recon, sparse, xent = program.terms
    assert recon.quadratic and recon.degree == 1
    assert not xent.quadratic and xent.degree == INF


def test_input_shape_and_classes_from_the_data():
    source = """
    data mnist(count = 100)
    input x
    label y
    latent z[8]
    param W[784, 8]
    energy
      recon : 0.5 * sqerr(x, W @ z)
      sparse : 0.1 * l1(z)
    """
    program = energydsl.compile_program(source)
    assert program.input.shape == (784,)
    assert program.classes == 10


def test_set_overrides_constants_and_sizes(sparse_coding_source):
    program = energydsl.compile_program(sparse_coding_source, set={"lam": "0.5"})
    assert program.terms[1].weight == 0.5
    source = sparse_coding_source.replace("latent z[24]", "const units = 24\nlatent z[units]").replace(
        "W[16, 24]", "W[16, units]"
    )
    model = energydsl.load(source, set={"units": 10})
    assert model.params["W"].shape == (16, 10)


def test_data_override_changes_the_source(sparse_coding_source):
    model = energydsl.load(sparse_coding_source, data="synthetic(dim = 16, atoms = 24, count = 100, seed = 9)")
    assert model.dataset.x_train.shape == (80, 16)


def test_predict_uses_the_models_own_preprocessing(drsae_source):
    model = energydsl.load(drsae_source)
    x = model.dataset.x_test[:16]
    scaled = x * 7.0  # l2-normalisation is part of the model: the scale of x must not matter
    torch.testing.assert_close(model.logits(x), model.logits(scaled))
    assert model.predict(x).shape == (16,)


def test_bad_input_shape_is_a_clear_error(sparse_coding_source):
    model = energydsl.load(sparse_coding_source)
    with pytest.raises(ValueError, match="16 values each"):
        model.infer(torch.zeros(3, 15))


def test_samples_init_draws_again_where_a_sample_is_blank(tmp_path):
    """A flat patch is 0 once centred: as a dictionary column it would have no direction."""
    import numpy as np

    x = np.zeros((400, 6), dtype=np.float32)
    x[1::5] = np.random.default_rng(0).standard_normal((80, 6))  # 4 samples in 5 are blank
    np.save(tmp_path / "x.npy", x)
    spec = f"""
    data file("{tmp_path / 'x.npy'}")
    input x[6]
    latent z[50]
    param W[6, 50] init samples(x)
    energy
      recon : 0.5 * sqerr(x, W @ z)
    """
    W = energydsl.load(spec).params["W"].detach()
    torch.testing.assert_close(W.norm(dim=0), torch.ones(50))
