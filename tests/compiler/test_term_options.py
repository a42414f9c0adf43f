"""Keyword options of energy terms (``l0(pre, theta, bandwidth = 0.01)``): compile-time constants,
checked where they are written, handed to the term in ``static``."""

from __future__ import annotations

import pytest

from energydsl.api import compile_program
from energydsl.errors import SpecError
from energydsl.terms import TERMS

SPEC = """model options
data synthetic(dim = 6)
const eps = 0.01
const units = 12
input x[d]
latent z[units] >= 0
param D[d, units]
param E[units, d]
param theta[units]
let pre = E @ x
encoder z = relu(pre)
energy
  recon : sqerr(x, D @ z)
  extra : {term}
infer z by encoder
"""
TERM_LINE = 14  # the line of {term}
TERM_COLUMN = 11  # where {term} starts


def compile_term(tmp_path, term: str, **kw):
    path = tmp_path / "options.energy"
    path.write_text(SPEC.format(term=term), encoding="utf-8")
    return compile_program(path, data_info=((6,), None), **kw)


def error_of(tmp_path, term: str) -> str:
    with pytest.raises(SpecError) as caught:
        compile_term(tmp_path, term)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(str(tmp_path / "options.energy"), "spec")


def at(text: str, term: str) -> str:
    """``spec:LINE:COL`` of the last ``text`` inside the term's line."""
    return f"spec:{TERM_LINE}:{TERM_COLUMN + term.rindex(text)}"


def test_options_and_their_defaults_reach_the_term(tmp_path):
    program = compile_term(tmp_path, "l0(pre, theta, target = 2 * 3)")
    assert program.terms[1].term.static["bandwidth"] == TERMS["l0"].options["bandwidth"].default
    assert program.terms[1].term.static["target"] == 6
    program = compile_term(tmp_path, "matryoshka(x, D, z, 0, prefixes = [units / 4, units / 2])")
    assert program.terms[1].term.static["prefixes"] == (3, 6)


def test_a_const_option_follows_set(tmp_path):
    program = compile_term(tmp_path, "l0(pre, theta, bandwidth = eps)", set={"eps": 0.25})
    assert program.terms[1].term.static["bandwidth"] == 0.25


CASES = [
    ("l0(pre, theta, bandwidth = 0)", "0", "l0()'s option 'bandwidth' must be positive, got 0"),
    ("l0(pre, theta, bandwidth = -eps)", "-eps", "l0()'s option 'bandwidth' must be positive, got -0.01"),
    ("l0(pre, theta, bandwidth = theta)", "theta",
     "l0()'s option 'bandwidth' must be a compile-time constant (a number or a const)"),
    ("l0(pre, theta, bandwith = 0.1)", "bandwith",
     "l0() has no argument or option 'bandwith' (did you mean 'bandwidth'?)"),
    ("l0(pre, theta, 0.1)", "0.1",
     "l0() takes 2 argument(s), got 3 (options are written by name: bandwidth = ..., target = ...)"),
    ("l0(pre, theta, target = 1, target = 2)", "target = 2", "l0() got 'target' twice"),
    ("matryoshka(x, D, z, 0, prefixes = [6, 3])", "3", "matryoshka() prefixes must increase, but 3 follows 6"),
    ("matryoshka(x, D, z, 0, prefixes = [3, 3])", "3", "matryoshka() prefixes must increase, but 3 follows 3"),
    ("matryoshka(x, D, z, 0, prefixes = [3, 20])", "20",
     "matryoshka() prefix 20 is larger than the dictionary (12 units)"),
    ("matryoshka(x, D, z, 0, prefixes = [2.5])", "2.5", "matryoshka()'s option 'prefixes' must be a whole number, got 2.5"),
    ("matryoshka(x, D, z, 0, prefixes = [0, 4])", "0", "matryoshka()'s option 'prefixes' must be positive, got 0"),
    ("matryoshka(x, D, z, 0, prefixes = 4)", "4", "matryoshka()'s option 'prefixes' is a list of whole numbers, such as [64, 256]"),
    ("matryoshka(x, D, z, 0)", "matryoshka",
     "matryoshka() needs the option 'prefixes' (write it by name after the arguments: prefixes = ...)"),
    ("auxk(x - D @ z, D, pre, k = 13)", "13", "auxk() k = 13 is more than the 12 units"),
    ("auxk(x - D @ z, D, pre, k = 1.5)", "1.5", "auxk()'s option 'k' must be a whole number, got 1.5"),
    ("soft_l0(z, scale = z)", "z)", "soft_l0()'s option 'scale' must be a compile-time constant (a number or a const)"),
]


@pytest.mark.parametrize(("term", "culprit", "message"), CASES, ids=[c[2][:40] for c in CASES])
def test_option_mistakes_are_one_line_at_the_option(tmp_path, term, culprit, message):
    assert error_of(tmp_path, term) == f"{at(culprit, term)}: {message}"


def test_terms_without_options_keep_their_messages(tmp_path):
    term = "sqerr(x, D @ z, scale = 2)"
    assert error_of(tmp_path, term) == f"{at('scale', term)}: sqerr() has no argument 'scale' (expected one of: a, b)"
