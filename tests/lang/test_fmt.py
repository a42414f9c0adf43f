"""The formatter: canonical layout, idempotent, every comment kept, the same model compiled."""

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energydsl.api import compile_program
from energydsl.errors import SpecError
from energydsl.lang.fmt import format_paths, format_source
from energydsl.lang.parser import _lark
from energydsl.model import EnergyModel

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.energy")) + sorted((ROOT / "tests/specs/ok").glob("*.energy"))
IDS = [str(path.relative_to(ROOT)) for path in SPECS]

MESSY = """\


# A messy spec.
model   messy      # its name
data synthetic( dim=16 ,atoms=24,
   count = 200 )
const lam=0.1
const units =24   # trailing
const   scale = -(1+2)*3 ** -1 /
  # inside a statement
  units

input x [ 16 ]normalize l2  latent z[units]>=0
param W[16,units] init samples( x )constrain col_norm<=1 , nonneg
param Big[units,16]  # head comment
  init 0.5*W.T   # transposed


        learn fixed
param S[units,units] init I  learn fixed
   constrain symmetric,zero_diag
pool a=z[0 : 8]
pool bb = z[ 8:units ]
pools P=[a,bb]
encoder z=recurrent( 2 ){relu(Big@x-lam)}
energy    # the terms


  recon:0.5*sqerr(x,W@z)
  # sparsity
  sparse :lam*l1(z)
  group: lam * group_l2( z, P )   # groups



infer z by encoder then fista( steps=10,tol=1e-3 )
train optimizer sgd(lr=0.1) batch 32
 phase one epochs 1 terms recon,sparse phase second_phase epochs 2
# the end


"""

MESSY_FORMATTED = """\
# A messy spec.
model messy  # its name
data synthetic(dim = 16, atoms = 24, count = 200)
const lam   = 0.1
const units = 24  # trailing
# inside a statement
const scale = -(1 + 2) * 3 ** -1 / units

input  x[16]  normalize l2
latent z[units] >= 0
param W[16, units]     init samples(x)  constrain col_norm <= 1, nonneg
param Big[units, 16]  # head comment
      init 0.5 * W.T  # transposed
      learn fixed
param S[units, units]  init I  learn fixed
                       constrain symmetric, zero_diag
pool a  = z[0:8]
pool bb = z[8:units]
pools P = [a, bb]
encoder z = recurrent(2) { relu(Big @ x - lam) }
energy  # the terms
  recon  : 0.5 * sqerr(x, W @ z)
  # sparsity
  sparse : lam * l1(z)
  group  : lam * group_l2(z, P)  # groups

infer z by encoder then fista(steps = 10, tol = 1e-3)
train
  optimizer sgd(lr = 0.1)
  batch 32
  phase one           epochs 1  terms recon, sparse
  phase second_phase  epochs 2
# the end
"""


def _code(text: str) -> str:
    """The spec with comments and whitespace removed: what formatting must not change."""
    return re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", text))


def _comments(text: str) -> list[str]:
    return [comment.rstrip() for comment in re.findall(r"#[^\n]*", text)]


def _relaid(source: str, random) -> str:
    """The spec with the space between some of its tokens replaced by line breaks and comments."""
    gaps = [" ", "\n", "\n\n\n", "  # after\n", "\n# alone\n\n  "]
    pieces, end = [], 0
    for token in _lark().lex(source):  # the parser's own lexer, comments skipped
        gap = source[end : token.start_pos]
        pieces += [random.choice(gaps) if end and random.random() < 0.3 else gap, token]
        end = token.end_pos
    return "".join(pieces) + source[end:]


def _model(source: str, data_info, train_x: torch.Tensor) -> EnergyModel:
    return EnergyModel(compile_program(source, data_info=data_info), train_x, seed=0)


# ---------------------------------------------------------------- every checked-in spec


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_formatting_twice_changes_nothing(path):
    once = format_source(path.read_text(), str(path))
    assert format_source(once) == once


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_formatting_changes_only_layout_and_keeps_every_comment_in_order(path):
    source = path.read_text()
    formatted = format_source(source, str(path))
    assert _code(formatted) == _code(source)
    assert _comments(formatted) == _comments(source)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(SPECS), random=st.randoms(use_true_random=False))
def test_any_layout_formats_idempotently_keeping_code_and_comments(path, random):
    source = _relaid(path.read_text(), random)
    formatted = format_source(source)
    assert format_source(formatted) == formatted
    assert _code(formatted) == _code(source)
    pieces = sorted(piece.rstrip() for piece in re.findall(r"#[^#\n]*", formatted))  # comments joined on a line
    assert pieces == sorted(_comments(source))


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_formatted_spec_compiles_to_identical_parameters(path):
    described = compile_program(path)  # reads the data's shape only, never the data
    data_info = (described.sample_shape, described.classes, described.target and described.target.shape)
    train_x = torch.rand((32, *described.sample_shape), generator=torch.Generator().manual_seed(0))
    source = path.read_text()
    original = _model(source, data_info, train_x)
    formatted = _model(format_source(source, str(path)), data_info, train_x)
    assert formatted.program.constants == original.program.constants
    assert list(formatted.params) == list(original.params)
    for name, value in original.params.items():
        assert torch.equal(formatted.params[name], value), name
        assert formatted.params[name].requires_grad == value.requires_grad, name
        assert all(map(torch.equal, formatted.masks[name], original.masks[name])), name


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.energy")), ids=lambda p: p.name)
def test_checked_in_specs_are_canonical(path):
    source = path.read_text()
    assert format_source(source, str(path)) == source


# ---------------------------------------------------------------- layout


def test_messy_spec_formats_to_the_canonical_layout():
    assert format_source(MESSY) == MESSY_FORMATTED
    assert format_source(MESSY_FORMATTED) == MESSY_FORMATTED


def test_minimal_spec_gets_one_statement_per_line_and_a_block_for_its_terms():
    source = "input x[16]  latent z[24]  param W[16, 24]    # shared\nenergy recon : sqerr(x, W @ z)  sparse:l1(z)"
    assert format_source(source) == (
        "input  x[16]\nlatent z[24]\nparam W[16, 24]  # shared\nenergy\n  recon  : sqerr(x, W @ z)\n  sparse : l1(z)\n"
    )


def test_strings_and_numbers_are_kept_as_written():
    source = 'data file( "x#1.npz",labels="y.npy" )  # a "#" inside a string is no comment\nconst tiny=1E-03\n'
    assert format_source(source) == (
        'data file("x#1.npz", labels = "y.npy")  # a "#" inside a string is no comment\nconst tiny = 1E-03\n'
    )


def test_windows_line_endings_and_comment_only_files():
    assert format_source("model m\r\nconst a=1   # one\r\n") == "model m\nconst a = 1  # one\n"
    assert format_source("\n# only\n\n\n# comments   \n\n") == "# only\n\n# comments\n"
    assert format_source("") == ""


def test_alignment_runs_end_at_blank_lines_but_not_at_comments():
    source = "const a = 1\n# note\nconst long_name = 2\n\nconst b = 3\nlet c = 4\n"
    assert format_source(source) == "const a         = 1\n# note\nconst long_name = 2\n\nconst b = 3\nlet c = 4\n"


def test_nesting_deeper_than_the_recursion_limit_formats():
    source = "const a = " + "(" * 1500 + "1" + ")" * 1500
    assert format_source(source) == "const a = " + "(" * 1500 + "1" + ")" * 1500 + "\n"


# ---------------------------------------------------------------- errors


def test_a_spec_that_does_not_parse_raises_the_parsers_error():
    with pytest.raises(SpecError) as caught:
        format_source("model m\nconst lam 0.1\n", "bad.energy")
    assert str(caught.value) == "bad.energy:2:11: unexpected number 0.1; expected '='"
    assert (caught.value.span.line, caught.value.span.column) == (2, 11)


def test_a_spec_the_parser_rejects_after_the_grammar_raises_too():
    with pytest.raises(SpecError) as caught:
        format_source("model a\nmodel b\n", "twice.energy")
    assert str(caught.value) == "twice.energy:2:7: the 'model' statement is given twice (remove one of them)"


# ---------------------------------------------------------------- files


def test_format_paths_check_reports_and_leaves_files_untouched(tmp_path, capsys):
    messy = tmp_path / "messy.energy"
    messy.write_text(MESSY)
    tidy = tmp_path / "tidy.energy"
    tidy.write_text(MESSY_FORMATTED)
    assert format_paths([str(messy), str(tidy)], check=True) == 1
    assert messy.read_text() == MESSY
    assert capsys.readouterr().out == (
        f"would reformat {messy}\n1 file would be reformatted, 1 file would be left unchanged\n"
    )


def test_format_paths_rewrites_in_place_then_checks_clean(tmp_path, capsys):
    messy = tmp_path / "messy.energy"
    messy.write_text(MESSY)
    messy.chmod(0o640)
    tidy = tmp_path / "tidy.energy"
    tidy.write_text(MESSY_FORMATTED)
    tidy_inode = tidy.stat().st_ino
    assert format_paths([str(messy), str(tidy)], check=False) == 0
    assert messy.read_text() == MESSY_FORMATTED
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640
    assert tidy.stat().st_ino == tidy_inode  # an unchanged file is not rewritten
    assert sorted(os.listdir(tmp_path)) == ["messy.energy", "tidy.energy"]  # no temporary file left
    assert capsys.readouterr().out == f"reformatted {messy}\n1 file reformatted, 1 file left unchanged\n"
    assert format_paths([str(messy), str(tidy)], check=True) == 0
    assert capsys.readouterr().out == "0 files would be reformatted, 2 files would be left unchanged\n"


def test_format_paths_stops_at_a_broken_spec_before_writing_anything(tmp_path):
    messy = tmp_path / "messy.energy"
    messy.write_text(MESSY)
    broken = tmp_path / "broken.energy"
    broken.write_text("model m\nconst lam 0.1\n")
    with pytest.raises(SpecError, match=r"broken\.energy:2:11: unexpected number 0\.1"):
        format_paths([str(messy), str(broken)], check=False)
    assert messy.read_text() == MESSY


def test_format_paths_reports_a_missing_file_as_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match=r"missing\.energy: spec file not found$"):
        format_paths([str(tmp_path / "missing.energy")], check=True)


def test_fmt_command_checks_and_rewrites(tmp_path, capsys):
    from energydsl.cli import main

    path = tmp_path / "messy.energy"
    path.write_text(MESSY)
    assert main(["fmt", "--check", str(path)]) == 1
    assert path.read_text() == MESSY and f"would reformat {path}" in capsys.readouterr().out
    assert main(["fmt", str(path)]) == 0
    assert path.read_text() == MESSY_FORMATTED
    assert main(["fmt", "--check", str(path)]) == 0


def test_fmt_diff_shows_what_would_change_and_writes_nothing(tmp_path, capsys):
    import difflib

    from energydsl.cli import main

    messy, clean = tmp_path / "messy.energy", tmp_path / "clean.energy"
    messy.write_text(MESSY)
    clean.write_text(MESSY_FORMATTED)
    assert main(["fmt", "--check", "--diff", str(messy), str(clean)]) == 1
    out = capsys.readouterr().out
    expected = "".join(difflib.unified_diff(MESSY.splitlines(keepends=True), MESSY_FORMATTED.splitlines(keepends=True),
                                            f"{messy}", f"{messy} (formatted)"))  # fmt: skip
    assert expected and out.startswith(expected)
    assert str(clean) not in out.replace("1 file would be left unchanged", "")
    assert out.rstrip().endswith("1 file would be reformatted, 1 file would be left unchanged")
    assert messy.read_text() == MESSY
    assert main(["fmt", "--diff", str(messy)]) == 0  # --diff alone: show, write nothing, exit 0
    assert capsys.readouterr().out.startswith(expected) and messy.read_text() == MESSY
