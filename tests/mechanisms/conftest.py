"""Small sparse auto-encoders as source text: the spec of each mechanism's tests differs only in its
encoder (and the declarations that encoder needs)."""

import pytest

import energydsl

SAE = """
model sae
data synthetic(dim = 8, atoms = 12, count = {count}, k = 2, seed = 1)
const k = 3
const epochs = 1
input x[d]
latent z[12]
param E[12, d] init normal(0.5)
param b[12] init 0.1
param D[d, 12] init samples(x)
{extra}
encoder z = {encoder}
energy
  recon : sqerr(x, D @ z){energy}
infer z by encoder
train
  optimizer adam(lr = 0.01)
  batch 32
  epochs epochs
"""


def sae_source(encoder: str, extra: str = "", count: int = 200, energy: str = "") -> str:
    return SAE.format(encoder=encoder, extra=extra, count=count, energy=f"\n  {energy}" if energy else "")


@pytest.fixture
def sae():
    """``sae(encoder, extra="", count=200, energy="", **constants)``: the model of a small auto-encoder
    whose encoder is ``encoder``; ``extra`` declares what it needs, ``energy`` adds a term."""

    def build(encoder: str, extra: str = "", count: int = 200, energy: str = "", **constants):
        return energydsl.load(sae_source(encoder, extra, count, energy), set=constants or None)

    return build


@pytest.fixture
def spec_error():
    """``spec_error(encoder, extra="")``: the SpecError that compiling such a spec raises."""

    def compile_error(encoder: str, extra: str = "") -> energydsl.SpecError:
        with pytest.raises(energydsl.SpecError) as caught:
            energydsl.load(sae_source(encoder, extra))
        return caught.value

    return compile_error


@pytest.fixture
def position():
    """``position(encoder, fragment, extra="")``: the (line, column) of the last ``fragment`` of the
    encoder in such a spec, where an error about it must point."""

    def locate(encoder: str, fragment: str, extra: str = "") -> tuple[int, int]:
        source = sae_source(encoder, extra)
        line = source[: source.index("encoder z =")].count("\n") + 1
        return line, len("encoder z = ") + encoder.rindex(fragment) + 1

    return locate
