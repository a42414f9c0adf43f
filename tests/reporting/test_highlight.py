"""The Pygments lexer for .energy files: found through its entry point, lossless, and
right about each kind of word, with the words taken from the language's registries."""

from pathlib import Path

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, Whitespace

from energydsl.compiler.pools import POOL_FAMILIES
from energydsl.compiler.structures import STRUCTURES
from energydsl.data import SOURCES
from energydsl.expr.functions import FUNCTIONS
from energydsl.lang.parser import STATEMENT_KEYWORDS
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.reporting.highlight import EnergyLexer, vocabulary
from energydsl.terms import TERMS

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.energy")) + sorted((ROOT / "tests" / "specs" / "ok").glob("*.energy"))
ALL_SPECS = SPECS + sorted((ROOT / "tests" / "specs" / "bad").glob("*.energy"))

# the lexer keeps every character, leading and trailing newlines included
LEXER = EnergyLexer(stripnl=False, ensurenl=False)


def tokens(source: str) -> list[tuple]:
    """The tokens of ``source`` that are not white space."""
    return [(kind, text) for kind, text in LEXER.get_tokens(source) if kind is not Whitespace]


def contains(found: list[tuple], run: list[tuple]) -> bool:
    """Whether ``run`` occurs in ``found`` as consecutive tokens."""
    return any(found[i : i + len(run)] == run for i in range(len(found) - len(run) + 1))


def test_pygments_finds_the_lexer_by_alias_and_file_name():
    # through the pygments.lexers entry point of the installed package
    assert isinstance(get_lexer_by_name("energy"), EnergyLexer)
    assert isinstance(get_lexer_by_name("energydsl"), EnergyLexer)
    assert isinstance(get_lexer_for_filename("x.energy"), EnergyLexer)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_valid_spec_lexes_without_error_tokens(path):
    errors = [text for kind, text in LEXER.get_tokens(path.read_text()) if kind in Error]
    assert errors == []


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_tokens_rejoin_to_the_exact_source(path):
    source = path.read_bytes().decode("utf-8", errors="replace")  # one bad spec is not UTF-8
    assert "".join(text for _, text in LEXER.get_tokens(source)) == source


def test_with_pygments_default_options_a_spec_still_rejoins():
    # a spec starts with text and ends with one newline, so stripping and ensuring newlines change nothing
    source = (ROOT / "specs" / "drsae.energy").read_text()
    assert "".join(text for _, text in EnergyLexer().get_tokens(source)) == source


def test_a_stray_character_is_an_error_token():
    assert (Error, ";") in tokens("const lam = 0.1;\n")


SPEC = """# a comment
model demo
data synthetic(dim = 4, seed = 1)
const lam = 0.1
input x[4] normalize l2
latent z[6] >= 0
graph T = tree(2, 1)
param W[4, 6] init samples(x) constrain col_norm == 1, nonneg
param S[6, 6] init grid_inhibition(T, radius = 1) learn fixed
encoder z = relu(W.T @ x)
energy
  recon : 0.5 * sqerr(x, W @ z)
  tree  : lam * l1(normalize(z))
infer z by encoder then fista(steps = 20, tol = 1e-3)
train
  optimizer sgd(lr = 0.5)
  seed 3
  phase warmup epochs 1 terms recon
"""

EXPECTED = [
    [(Comment.Single, "# a comment"), (Keyword.Declaration, "model"), (Name.Variable, "demo")],
    # a data source; 'seed' names an argument here, not the train setting
    [(Keyword.Declaration, "data"), (Name.Builtin, "synthetic"), (Punctuation, "("), (Name.Attribute, "dim"),
     (Operator, "="), (Number.Integer, "4"), (Punctuation, ","), (Name.Attribute, "seed")],
    [(Keyword.Declaration, "const"), (Name.Variable, "lam"), (Operator, "="), (Number.Float, "0.1")],
    [(Name.Variable, "x"), (Punctuation, "["), (Number.Integer, "4"), (Punctuation, "]"), (Keyword, "normalize"),
     (Name.Constant, "l2")],
    [(Keyword.Declaration, "latent"), (Name.Variable, "z"), (Punctuation, "["), (Number.Integer, "6"),
     (Punctuation, "]"), (Operator, ">="), (Number.Integer, "0")],
    [(Keyword.Declaration, "graph"), (Name.Variable, "T"), (Operator, "="), (Name.Builtin, "tree")],
    # constraints
    [(Keyword, "init"), (Name.Builtin, "samples"), (Punctuation, "("), (Name, "x"), (Punctuation, ")"),
     (Keyword, "constrain"), (Name.Constant, "col_norm"), (Operator, "=="), (Number.Integer, "1"),
     (Punctuation, ","), (Name.Constant, "nonneg"), (Keyword.Declaration, "param")],
    [(Name.Builtin, "grid_inhibition"), (Punctuation, "("), (Name, "T"), (Punctuation, ","),
     (Name.Attribute, "radius"), (Operator, "="), (Number.Integer, "1"), (Punctuation, ")"), (Keyword, "learn"),
     (Name.Constant, "fixed")],
    [(Keyword.Declaration, "encoder"), (Name.Variable, "z"), (Operator, "="), (Name.Builtin, "relu"),
     (Punctuation, "("), (Name, "W"), (Operator, ".T"), (Operator, "@"), (Name, "x")],
    # term names, even one that is also a structure's name, and the terms themselves
    [(Keyword.Declaration, "energy"), (Name.Label, "recon"), (Punctuation, ":"), (Number.Float, "0.5"),
     (Operator, "*"), (Name.Function, "sqerr")],
    [(Name.Label, "tree"), (Punctuation, ":"), (Name, "lam"), (Operator, "*"), (Name.Function, "l1"),
     (Punctuation, "("), (Name.Builtin, "normalize"), (Punctuation, "(")],
    [(Keyword.Declaration, "infer"), (Name.Variable, "z"), (Keyword, "by"), (Name.Builtin, "encoder"),
     (Keyword, "then"), (Name.Builtin, "fista"), (Punctuation, "("), (Name.Attribute, "steps")],
    [(Name.Attribute, "tol"), (Operator, "="), (Number.Float, "1e-3")],
    [(Keyword.Declaration, "train"), (Keyword, "optimizer"), (Name.Builtin, "sgd"), (Punctuation, "("),
     (Name.Attribute, "lr"), (Operator, "="), (Number.Float, "0.5"), (Punctuation, ")"), (Keyword, "seed"),
     (Number.Integer, "3")],
    [(Keyword, "phase"), (Name.Label, "warmup"), (Keyword, "epochs"), (Number.Integer, "1"), (Keyword, "terms"),
     (Name, "recon")],
]  # fmt: skip


@pytest.mark.parametrize("run", EXPECTED, ids=lambda run: run[0][1])
def test_each_kind_of_word_gets_its_token_type(run):
    assert contains(tokens(SPEC), run), tokens(SPEC)


def test_the_statement_keywords_read_from_the_grammar_are_the_parsers():
    assert vocabulary().statement_keywords == STATEMENT_KEYWORDS


@pytest.mark.parametrize("keyword", STATEMENT_KEYWORDS)
def test_every_statement_keyword_is_a_declaration_keyword(keyword):
    assert tokens(f"{keyword}\n") == [(Keyword.Declaration, keyword)]


@pytest.mark.parametrize("term", sorted(TERMS))
def test_every_registered_term_is_a_function(term):
    assert tokens(f"energy e : {term}(z)\n")[3] == (Name.Function, term)


BUILTINS = sorted({*FUNCTIONS, *STRUCTURES, *POOL_FAMILIES, *SOURCES})


@pytest.mark.parametrize("name", BUILTINS)
def test_every_function_builder_and_data_source_is_a_builtin(name):
    assert tokens(f"let v = {name}(z)\n")[3] == (Name.Builtin, name)


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_every_constraint_kind_after_constrain_is_a_constant(kind):
    assert tokens(f"param S[2, 2] constrain nonneg, {kind}\n")[-1] == (Name.Constant, kind)
