"""``detach(v)`` and ``col_norm(D)``: their values, what they do to gradients and to the degree in the
latent, and the one-line errors of their misuse."""

import numpy as np
import pytest
import torch

import energydsl
from energydsl.api import compile_program
from energydsl.expr.compiler import INF
from energydsl.expr.functions import FUNCTION_DESCRIPTIONS, FUNCTIONS

SPEC = """
data synthetic(dim = 8, atoms = 12, count = 100, k = 2, seed = 1)
input x[d]
latent z[12] >= 0
param D[d, 12] init normal(1)
param E[12, d] init normal(0.5)
encoder z = relu(E @ x)
energy
  recon : sqerr(x, {decoder} @ z)
  sparse : 0.3 * l1({code})
infer z by {infer}
"""


def spec(decoder="D", code="z * col_norm(D)", infer="encoder") -> str:
    return SPEC.format(decoder=decoder, code=code, infer=infer)


def test_col_norm_weights_the_l1_penalty_by_the_decoder_column_norms():
    model = energydsl.load(spec())
    x = model.dataset.x_test[:20]
    z = model.encode(x)
    norms = np.linalg.norm(model.params["D"].detach().numpy(), axis=0)
    assert norms.std() > 0.1  # the columns differ, so a wrong axis would show
    expected = 0.3 * (np.abs(z.numpy()) * norms).sum(axis=1)
    np.testing.assert_allclose(model.terms(x, z)["sparse"].detach().numpy(), expected, rtol=1e-5)


def test_detach_stops_the_gradient_but_keeps_the_value():
    model = energydsl.load(spec(decoder="detach(D)", code="z"))
    reference = energydsl.load(spec(code="z"))
    x = model.dataset.x_test[:20]
    z = model.encode(x).requires_grad_()
    torch.testing.assert_close(model.terms(x, z)["recon"], reference.terms(x, z)["recon"])
    model.terms(x, z)["recon"].sum().backward()
    assert model.params["D"].grad is None  # the decoder is frozen in this term
    assert z.grad.abs().sum() > 0  # but the code still receives its gradient
    reference.terms(x, z)["recon"].sum().backward()
    assert reference.params["D"].grad.abs().sum() > 0


def test_the_degree_in_the_latent():
    """A frozen decoder keeps the reconstruction quadratic in z (FISTA's exact step still applies);
    detach of the latent itself is no polynomial in it."""
    program = compile_program(spec(decoder="detach(D)", code="z", infer="fista(steps = 10)"))
    recon = next(t for t in program.terms if t.name == "recon")
    assert recon.degree == 1 and recon.quadratic
    program = compile_program(spec(code="detach(z)"))
    assert next(t for t in program.terms if t.name == "sparse").degree == INF


@pytest.mark.parametrize(
    "code, fragment, message, hint",
    [
        ("col_norm(z)", "z", "col_norm() needs a parameter matrix, this is a per-sample [12] value", "col_norm(D)"),
        ("z * col_norm(1)", "1", "col_norm() needs a parameter matrix, this is a scalar", "one norm per unit"),
        ("detach(z, D)", "D", "detach() takes at most 1 argument(s), got 2", None),
    ],
)
def test_misuse_is_a_one_line_error_at_the_argument(code, fragment, message, hint):
    source = spec(code=code)
    with pytest.raises(energydsl.SpecError) as caught:
        compile_program(source)
    error = caught.value
    assert error.message == message
    assert hint is None or hint in error.hint
    line = source.splitlines().index(f"  sparse : 0.3 * l1({code})") + 1
    assert (error.span.line, error.span.column) == (line, len("  sparse : 0.3 * l1(") + code.rindex(fragment) + 1)


def test_both_are_in_the_reference():
    for name in ("detach", "col_norm"):
        assert name in FUNCTIONS and FUNCTION_DESCRIPTIONS[name].startswith(f"``{name}(")
