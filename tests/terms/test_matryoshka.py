"""The matryoshka term: the reconstruction error of nested prefixes of the dictionary, summed, against
the naive sum of one product per prefix; its cost (one decoder product); its gradient; and the
reconstruction error that evaluation reports for it (the whole dictionary's)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from energydsl.api import compile_program
from energydsl.data.base import Dataset
from energydsl.model import EnergyModel
from energydsl.reporting.resources import EVAL_BATCH, estimate
from energydsl.terms import TERMS
from energydsl.training.loop import evaluate

B, d, m = 5, 4, 10


def operands(seed=0, bias=True):
    generator = torch.Generator().manual_seed(seed)
    x, D, z = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((B, d), (d, m), (B, m)))
    b = torch.randn(d, generator=generator, dtype=torch.float64) if bias else 0.0
    return x, D, z, b


def naive(x, D, z, b, sizes):
    """Σₘ ‖x − (D[:, :m] z[:m] + b)‖², one product per prefix."""
    return sum(((x - (z[:, :size] @ D[:, :size].T + b)) ** 2).sum(dim=1) for size in sizes)


@pytest.mark.parametrize(("prefixes", "sizes"), [((2, 5), (2, 5, m)), ((3, m), (3, m)), ((m,), (m,)), ((1,), (1, m))])
@pytest.mark.parametrize("bias", [True, False])
def test_energy_is_the_sum_over_prefixes_the_whole_dictionary_last(prefixes, sizes, bias):
    x, D, z, b = operands(bias=bias)
    energy = TERMS["matryoshka"]({"prefixes": prefixes}).energy(x, D, z, b)
    torch.testing.assert_close(energy, naive(x, D, z, b, sizes))


def test_one_decoder_product_however_many_prefixes():
    x, D, z, b = (t.float() if torch.is_tensor(t) else t for t in operands())
    counter = FlopCounterMode(display=False)
    with counter:
        TERMS["matryoshka"]({"prefixes": (1, 2, 3, 5, 8)}).energy(x, D, z, b)
    assert counter.get_total_flops() == 2 * B * d * m  # one (B, m) @ (m, d) product in all


def test_gradient_matches_finite_differences():
    x, D, z, b = (t.requires_grad_(True) for t in operands())
    term = TERMS["matryoshka"]({"prefixes": (2, 7)})
    assert torch.autograd.gradcheck(term.energy, (x, D, z, b))


def test_reconstruction_is_the_whole_dictionary():
    x, D, z, b = operands()
    target, estimate = TERMS["matryoshka"]({"prefixes": (2, 5)}).reconstruction(x, D, z, b)
    assert target is x
    torch.testing.assert_close(estimate, z @ D.T + b)


SPEC = """
model matryoshka_sae
data synthetic(dim = 6)
const units = 12
input x[d]
latent z[units] >= 0
param D[d, units]
param E[units, d] init D.T
param b_dec[d]  init 0.1
let pre = E @ (x - b_dec)
encoder z = relu(pre)
energy
  recon : 0.5 * matryoshka(x, D, z, b_dec, prefixes = [3, 6])
infer z by encoder
"""


def test_compiles_as_the_reconstruction_with_its_decoder():
    program = compile_program(SPEC, data_info=((6,), None))
    assert program.reconstruction is not None and program.reconstruction.name == "recon"
    assert (program.roles.decoder, program.roles.encoder) == ("D", "E")
    assert program.terms[0].quadratic  # x, D and b fixed, z to the first degree


def test_evaluation_reports_the_whole_dictionarys_error_not_the_energy():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    model = EnergyModel(compile_program(SPEC, data_info=((6,), None)), x)
    metrics = evaluate(model, Dataset("test", x, x, None, None, None))
    with torch.no_grad():
        z = model.encode(x)
        D, b = model.params["D"], model.params["b_dec"]
        error = ((x - (z @ D.T + b)) ** 2).sum()
        prefix_sum = model.terms(x, z)["recon"].sum() / 0.5
    assert metrics["recon_error"] == pytest.approx(float(error / (x**2).sum()), rel=1e-4)
    assert float(prefix_sum) > 1.5 * float(error)  # the energy would have reported much more


def test_the_memory_estimate_counts_the_prefix_reconstructions():
    program = compile_program(SPEC, data_info=((6,), None))
    batch = max(program.training.batch, EVAL_BATCH)
    # three (B, prefixes, d) float32 tensors, prefixes 3, 6 and the whole 12
    assert estimate(program).parts["matryoshka prefixes"] == 3 * batch * 3 * 6 * 4
