"""A Pygments lexer for ``.energy`` specs.

Every word it knows is read from the code that implements the language, so the
highlighting follows the language as it changes: the keywords from ``grammar.lark``,
the energy terms from :data:`energydsl.terms.TERMS`, the functions, builders, data
sources, inference methods and optimizers from their registries, the constraints from
:data:`energydsl.ops.constraints.CONSTRAINTS`.

Pygments finds the lexer through the ``pygments.lexers`` entry point in
``pyproject.toml``::

    pygmentize -l energy specs/drsae.energy
    pygments.lexers.get_lexer_for_filename("model.energy")

Token types: statement keywords are ``Keyword.Declaration`` and the other keywords
``Keyword``; the name a statement declares is ``Name.Variable``, a term's name in the
energy block ``Name.Label``, a phase's name ``Name.Label``; energy terms are
``Name.Function``; functions, builders, data sources, inference methods and optimizers
``Name.Builtin``; constraints, learning modes and normalisations ``Name.Constant``;
argument names (``lr = ...``) ``Name.Attribute``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from pygments.lexer import RegexLexer, bygroups, default, include, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Whitespace

from energydsl.compiler.params import LEARN_MODES
from energydsl.compiler.pools import POOL_FAMILIES
from energydsl.compiler.structures import STRUCTURES
from energydsl.compiler.variables import NORMALIZATIONS
from energydsl.data import SOURCES
from energydsl.expr.functions import FUNCTIONS
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.optim import OPTIMIZERS
from energydsl.reporting.reference import (
    grammar_keywords,
    grammar_rules,
    init_builders,
    matrix_builders,
    statement_keyword,
    statement_rules,
)
from energydsl.solvers import SOLVERS
from energydsl.terms import TERMS

__all__ = ["EnergyLexer"]

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclass(frozen=True)
class Vocabulary:
    """The words of the language, by what they are."""

    statement_keywords: tuple[str, ...]
    declaring: tuple[str, ...]  # the statement keywords a name follows: model, const, param, ...
    keywords: tuple[str, ...]  # the grammar's other words: init, constrain, by, epochs, ...
    method_introducers: tuple[str, ...]  # the keywords an inference method follows: by, then
    constraint_introducer: str  # constrain
    phase_keyword: str
    terms: tuple[str, ...]
    builtins: tuple[str, ...]
    constants: tuple[str, ...]


def vocabulary() -> Vocabulary:
    """Read the vocabulary from the grammar and the registries."""
    statements = tuple(statement_keyword(rule) for rule in statement_rules())
    keywords = tuple(w for w in grammar_keywords() if w not in statements)
    builtins = [*FUNCTIONS, *STRUCTURES, *POOL_FAMILIES, *init_builders(), *matrix_builders(), *SOURCES,
                *SOLVERS, *OPTIMIZERS]  # fmt: skip
    return Vocabulary(
        statement_keywords=statements,
        declaring=tuple(_words_before("NAME", [rule.name for rule in statement_rules()])),
        keywords=keywords,
        method_introducers=tuple(_words_before("method")),
        constraint_introducer=_words_before("constraint")[0],
        phase_keyword=grammar_rules()["phase"].literals[0],
        terms=tuple(TERMS),
        builtins=_unique(builtins),
        constants=_unique([*CONSTRAINTS, *LEARN_MODES, *NORMALIZATIONS]),
    )


def _words_before(symbol: str, among: Iterable[str] | None = None) -> list[str]:
    """The quoted words right before ``symbol`` in the grammar's rules (``"by" method``), or in some of them."""
    pattern = re.compile(rf'"(\w+)"\s+{symbol}\b')
    rules = [grammar_rules()[name] for name in among] if among is not None else grammar_rules().values()
    return list(dict.fromkeys(word for rule in rules for word in pattern.findall(rule.text)))


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _word(names: Iterable[str]) -> str:
    """A regex matching any of ``names`` as a whole word (nothing, when there are none)."""
    names = tuple(names)
    return words(names, prefix=r"\b", suffix=r"\b").get() if names else r"(?!)"


def _not(names: Iterable[str]) -> str:
    """A regex matching an identifier that is none of ``names``."""
    return rf"(?!(?:{'|'.join(map(re.escape, names))})\b){_IDENTIFIER}"


def token_table(v: Vocabulary) -> dict[str, list]:
    """The lexer's states.

    ``root`` reads statements; ``operand`` is what may stand inside an expression;
    ``nested`` is inside brackets (where ``NAME :`` is a range, not a term);
    ``constraints`` follows ``constrain`` up to the next keyword.
    """
    keywords = v.statement_keywords + v.keywords
    # what a statement keyword declares: not a reserved word, as in the grammar's NAME
    declared = _not(v.statement_keywords)
    # a builtin that is also a keyword (normalize, encoder) is a builtin only where the rules below say so
    plain = [w for w in v.builtins if w not in keywords]
    keyword_calls = rf"{_word([f for f in v.builtins if f in keywords])}(?=\s*\()"  # normalize(z), samples(x)
    return {
        "root": [
            include("space"),
            (
                rf"\b({'|'.join(v.method_introducers)})(\s+)({_word(SOLVERS)})",
                bygroups(Keyword, Whitespace, Name.Builtin),
            ),
            (
                rf"\b({'|'.join(v.declaring)})(\s+)({declared})",
                bygroups(Keyword.Declaration, Whitespace, Name.Variable),
            ),
            (rf"\b({v.phase_keyword})(\s+)({_IDENTIFIER})", bygroups(Keyword, Whitespace, Name.Label)),
            (_word([v.constraint_introducer]), Keyword, "constraints"),
            (rf"({_not(keywords)})(\s*)(:)", bygroups(Name.Label, Whitespace, Punctuation)),
            include("argument"),
            (keyword_calls, Name.Builtin),
            (_word(v.statement_keywords), Keyword.Declaration),
            (_word(v.keywords), Keyword),
            include("operand"),
            (r"[)\]}]", Punctuation),  # unbalanced: the parser will say so
        ],
        "space": [
            (r"\s+", Whitespace),
            (r"#[^\n]*", Comment.Single),
        ],
        "argument": [
            (rf"({_IDENTIFIER})(\s*)(=)(?!=)", bygroups(Name.Attribute, Whitespace, Operator)),
        ],
        "operand": [
            include("space"),
            (r'"[^"\n]*"', String.Double),
            (r"(\d+\.\d*|\.\d+)([eE][-+]?\d+)?|\d+[eE][-+]?\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"\.T\b", Operator),
            (_word(v.terms), Name.Function),
            (_word(plain), Name.Builtin),
            (_word(v.constants), Name.Constant),
            (_not(keywords), Name),
            (r"\*\*|<=|>=|==|[-+*/@=]", Operator),
            (r"[,:]", Punctuation),
            (r"[(\[{]", Punctuation, "nested"),
        ],
        "nested": [
            (r"[)\]}]", Punctuation, "#pop"),
            include("argument"),
            (keyword_calls, Name.Builtin),
            (_word(v.statement_keywords), Keyword.Declaration),
            (_word(v.keywords), Keyword),
            include("operand"),
        ],
        "constraints": [
            (_word(CONSTRAINTS), Name.Constant),
            include("operand"),
            default("#pop"),  # at the next keyword
        ],
    }


class EnergyLexer(RegexLexer):
    """Lexer for energydsl ``.energy`` specs."""

    name = "energy"
    aliases: ClassVar[list[str]] = ["energy", "energydsl"]
    filenames: ClassVar[list[str]] = ["*.energy"]
    mimetypes: ClassVar[list[str]] = ["text/x-energy"]
    tokens = token_table(vocabulary())
