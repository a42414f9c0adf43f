"""The ``target`` statement: parsed, formatted, checked against the data, kept from the encoder.

The located errors of a broken target are golden files (tests/specs/bad/target_*.energy).
"""

from __future__ import annotations

import pytest

from energydsl.api import compile_program
from energydsl.errors import SpecError
from energydsl.lang import spec as S
from energydsl.lang.fmt import format_source
from energydsl.lang.parser import parse

TRANSCODER = """\
data features(dim = 12, features = 20, count = 100, target_dim = 5)
input x[d]
target  y{shape}
latent z[8] >= 0
param D[e, 8]
param E[8, d]
encoder z = relu(E @ x)
energy
  recon : sqerr(y, D @ z)
infer z by encoder
"""


def transcoder(shape: str = "[e]", **replace: str) -> str:
    source = TRANSCODER.format(shape=shape)
    for old, new in replace.items():
        source = source.replace(old, new)
    return source


def test_the_statement_parses_to_a_target_declaration():
    (decl,) = parse(transcoder()).targets
    assert decl.name.name == "y" and decl.span.line == 3
    assert isinstance(decl.shape[0], S.Name) and decl.shape[0].id == "e"
    assert parse(transcoder(shape="")).targets[0].shape is None


def test_target_aligns_with_the_other_variables():
    formatted = format_source(transcoder())
    assert "input  x[d]\ntarget y[e]\nlatent z[8] >= 0\n" in formatted
    assert format_source(formatted) == formatted


def test_target_stays_a_name_where_no_statement_can_start():
    """l0's option and the data sources' argument are called 'target' too."""
    source = transcoder().replace("data features(dim = 12, features = 20, count = 100, target_dim = 5)",
                                  'data file("pairs.npz", target = "out")')  # fmt: skip
    spec = parse(source.replace("recon : sqerr(y, D @ z)", "recon : sqerr(y, D @ z)\n  l0 : l0(z, 0.1, target = 3)"))
    assert [kw.name for kw in spec.data.call.kwargs] == ["target"]
    assert [t.name.name for t in spec.energy] == ["recon", "l0"]
    assert "target = 3)" in format_source(spec.source)


@pytest.mark.parametrize("shape", ["[e]", "", "[5]"])
def test_the_targets_shape_comes_from_the_data_or_agrees_with_it(shape):
    source = transcoder(shape=shape).replace("param D[e, 8]", "param D[5, 8]")
    program = compile_program(source)
    assert program.target.name == "y" and program.target.shape == (5,)
    assert program.input.shape == (12,)
    assert program.reconstruction.name == "recon" and program.reconstructed is program.target
    assert program.roles.decoder == "D" and program.roles.encoder == "E"


def test_a_bare_name_binds_the_targets_width():
    program = compile_program(transcoder())
    assert program.params[0].shape == (5, 8) and program.params[1].shape == (8, 12)


def test_lets_and_terms_read_the_target_but_the_encoder_does_not():
    source = transcoder(**{"encoder z = relu(E @ x)": "let scaled = 2 * y\nencoder z = relu(E @ x)",
                           "recon : sqerr(y, D @ z)": "recon : sqerr(scaled, D @ z)"})  # fmt: skip
    assert compile_program(source).target.name == "y"
    with pytest.raises(SpecError, match="'y' cannot be used here") as excinfo:
        compile_program(transcoder(**{"relu(E @ x)": "relu(E @ x + D.T @ y)"}))
    assert excinfo.value.span.line == 7  # the encoder's line


def test_a_spec_without_target_ignores_the_datas_targets():
    """Paired data model their inputs alone under a spec without 'target': an SAE of x."""
    source = transcoder().replace("target  y[e]\n", "").replace("sqerr(y, D @ z)", "sqerr(x, D @ z)")
    program = compile_program(source.replace("param D[e, 8]", "param D[d, 8]"))
    assert program.target is None and program.reconstructed is program.input
    with pytest.raises(SpecError, match="unknown name 'e'"):
        compile_program(source)  # 'e' is bound by 'target y[e]' only


def test_data_given_as_a_description_without_targets_is_refused():
    with pytest.raises(SpecError, match="target 'y' is declared, but the data gives no targets"):
        compile_program(transcoder(), data_info=((12,), None))
    program = compile_program(transcoder(), data_info=((12,), None, (5,)))
    assert program.target.shape == (5,)
