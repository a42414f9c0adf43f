"""What the compiler finds each parameter is for (energydsl/compiler/roles.py), for the spec shapes of
modern sparse auto-encoders: a decoder bias beside D @ z, the encoder E @ (x - b_dec) inside a let."""

from __future__ import annotations

from pathlib import Path

import pytest

from energydsl.api import compile_program
from energydsl.mechanisms import MECHANISMS

ROOT = Path(__file__).resolve().parents[2]

SAE = """
model sae
data synthetic(dim = 8)
const units = 16
const k = 4
input x[d]
latent z[units] >= 0
param D[d, units]
param E[units, d]  init D.T
param b_enc[units]
param b_dec[d]
{lets}
encoder z = {encoder}
energy
  recon : {recon}
infer z by encoder
"""
LET_PRE = "let pre = E @ (x - b_dec) + b_enc"
ENCODERS = ["relu(pre)", pytest.param("topk(relu(pre), k)", marks=pytest.mark.skipif(
    "topk" not in MECHANISMS, reason="the topk mechanism is not registered"))]  # fmt: skip


def roles(lets=LET_PRE, encoder="relu(pre)", recon="sqerr(x, D @ z + b_dec)"):
    program = compile_program(SAE.format(lets=lets, encoder=encoder, recon=recon), data_info=((8,), None))
    return program.roles


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_sae_shape_finds_decoder_and_encoder(encoder):
    found = roles(encoder=encoder)
    assert (found.decoder, found.encoder) == ("D", "E")


@pytest.mark.parametrize(
    "recon",
    ["sqerr(x, D @ z + b_dec)", "sqerr(x, b_dec + D @ z)", "0.5 * sqerr(x, D @ z)",
     "matryoshka(x, D, z, b_dec, prefixes = [4, 8])", "matryoshka(x, D, z, 0, prefixes = [4])"],
)
def test_the_decoder_of_each_reconstruction(recon):
    assert roles(recon=recon).decoder == "D"


def test_the_decoder_through_a_let():
    lets = f"{LET_PRE}\nlet xhat = D @ z + b_dec"
    assert roles(lets=lets, recon="sqerr(x, xhat)").decoder == "D"


@pytest.mark.parametrize(
    ("lets", "encoder"),
    [
        ("", "relu(E @ (x - b_dec) + b_enc)"),  # in the encoder itself
        ("let centred = x - b_dec\nlet pre = E @ centred + b_enc", "relu(pre)"),  # a let of a let
        ("", "relu(E @ x)"),
        ("", "relu(E @ (x * 2) - b_enc)"),
    ],
)
def test_the_encoder_of_a_shifted_or_scaled_input(lets, encoder):
    assert roles(lets=lets, encoder=encoder).encoder == "E"


def test_no_encoder_when_the_product_is_not_of_the_input():
    # x - b_dec * x is not a shift of the input by a parameter: E is not taken for the encoder
    found = roles(lets="", encoder="relu(E @ (x - b_dec * x))")
    assert found.encoder is None


def test_the_lecture_specs_keep_their_roles():
    program = compile_program(ROOT / "specs" / "drsae.energy", data_info=((784,), 10))
    found = program.roles
    assert (found.decoder, found.encoder, found.classifier, found.recurrent_steps) == ("D", "E", "C", 11)
