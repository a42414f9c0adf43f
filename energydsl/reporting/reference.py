"""The language reference, generated from the code that implements the language.

Every list in it is read from where the compiler reads it: the statements and their
syntax from ``grammar.lark`` (with the ``//`` comment above each statement rule), the
energy terms from :data:`energydsl.terms.TERMS`, the data sources from
:data:`energydsl.data.SOURCES`, and so on; every description is the docstring or the
one-line description next to the registry entry.  ``docs/reference.md`` is this module's
output, checked in; ``tests/reporting/test_reference.py`` fails when the two differ::

    python -m energydsl.reporting.reference > docs/reference.md

The grammar helpers here also feed the syntax highlighter (:mod:`energydsl.reporting.highlight`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from energydsl.compiler.initialisers import INITIALISERS
from energydsl.compiler.params import LEARN_MODES
from energydsl.compiler.pools import POOL_FAMILIES, family_from_list
from energydsl.compiler.program import DEFAULT_STEPS, DEFAULT_TOL
from energydsl.compiler.structures import STRUCTURES
from energydsl.compiler.training import SCHEDULES
from energydsl.compiler.variables import NORMALIZATIONS
from energydsl.data import SOURCES
from energydsl.expr.functions import FUNCTION_DESCRIPTIONS, FUNCTIONS
from energydsl.mechanisms import MECHANISMS
from energydsl.ops import constraints
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.optim import OPTIMIZERS
from energydsl.solvers import SOLVERS
from energydsl.terms import TERMS

REGENERATE = "python -m energydsl.reporting.reference > docs/reference.md"

# ---------------------------------------------------------------- the grammar


@dataclass(frozen=True)
class GrammarRule:
    """One rule or terminal of ``grammar.lark``, as written (without lark's ``?``, ``!`` and ``-> alias``)."""

    name: str
    text: str
    comment: str  # the ``//`` lines right above it, joined, or ""

    @property
    def is_terminal(self) -> bool:
        return self.name.isupper()

    @property
    def literals(self) -> list[str]:
        """The words it spells out in quotes, in order: its keywords."""
        return re.findall(r'"([A-Za-z_]\w*)"', self.text)

    @property
    def references(self) -> list[str]:
        """The rules and terminals it refers to, in order."""
        body = self.text.split(":", 1)[1]
        body = re.sub(r'"[^"]*"|/(?:\\.|[^/\\])*/', " ", body)  # leave out literals and regexes
        return list(dict.fromkeys(re.findall(r"\b[A-Za-z_]\w*\b", body)))


_RULE_START = re.compile(r"^([?!]?)([A-Za-z_]\w*)\s*:")  # lark's '?' inlines a rule, '!' keeps its tokens
_ALIAS = re.compile(r"\s*->\s*\w+\s*$")


@lru_cache(maxsize=1)
def grammar_rules() -> dict[str, GrammarRule]:
    """Every rule and terminal of the grammar, in file order."""
    text = files("energydsl.lang").joinpath("grammar.lark").read_text(encoding="utf-8")
    rules: dict[str, GrammarRule] = {}
    name, lines, comment, comment_above, inlined = None, [], "", "", False
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if name is not None and line[:1].isspace() and stripped and not stripped.startswith("//"):
            # a continuation line, kept aligned under the ':' once the '?' is gone
            lines.append(_ALIAS.sub("", line[1:] if inlined else line))
            continue
        if name is not None:
            rules[name] = GrammarRule(name, "\n".join(lines), comment)
            name = None
        start = _RULE_START.match(line)
        if start:
            inlined, name, comment = bool(start.group(1)), start.group(2), comment_above
            lines = [_ALIAS.sub("", line[len(start.group(1)) :])]
        comment_above = f"{comment_above} {stripped[2:].strip()}".strip() if stripped.startswith("//") else ""
    return rules


def statement_rules() -> list[GrammarRule]:
    """The rules a spec's statements follow, in the grammar's order."""
    rules = grammar_rules()
    return [rules[name] for name in rules["statement"].references]


def statement_keyword(rule: GrammarRule) -> str:
    """The keyword that opens a statement."""
    return rule.literals[0]


def grammar_keywords() -> list[str]:
    """Every word the grammar spells out, statement keywords included."""
    words = (word for rule in grammar_rules().values() for word in rule.literals)
    return list(dict.fromkeys(words))


def _reachable(start: Iterable[str], stop: set[str] = frozenset()) -> list[str]:
    """The rules reachable from ``start``, without going through ``stop``, in grammar order."""
    rules, seen, todo = grammar_rules(), set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or name in stop or name not in rules:
            continue
        seen.add(name)
        todo.extend(rules[name].references)
    return [name for name in rules if name in seen]


def _expression_rules() -> list[str]:
    return _reachable(["expr"])


def _is_plain_terminal(rule: GrammarRule) -> bool:
    """A terminal made of literals only (``COMPARE: "<=" | "=="``), worth showing next to its rule."""
    return rule.is_terminal and "/" not in rule.text.split(":", 1)[1]


# ---------------------------------------------------------------- builders the compiler makes per parameter


def init_builders() -> dict[str, type]:
    """What an ``init`` or ``mask`` expression may use besides constants and earlier parameters
    (the registry's entries that are not matrices from structures)."""
    return {name: entry for name, entry in INITIALISERS.items() if not entry.from_structure}


def matrix_builders() -> dict[str, type]:
    """The matrices made from structures (``tree_inhibition(T)``, ...), usable in ``init`` and ``mask``."""
    return {name: entry for name, entry in INITIALISERS.items() if entry.from_structure}


_ARGUMENT_KINDS = {"value": "an expression", "affine": "an expression", "label": "the label", "pools": "a pool family", "structure": "a tree or a forest"}
_OPTION_KINDS = {"number": "a {positive}number", "whole": "a {positive}whole number",
                 "wholes": "a list of {positive}whole numbers"}  # fmt: skip


# ---------------------------------------------------------------- markdown


def _inline(text: str) -> str:
    """reStructuredText inline markup → Markdown: ``code`` and :role:`name`."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _docstring(obj) -> str:
    """A docstring as Markdown; Google-style ``Args:`` sections become lists."""
    doc = inspect.getdoc(obj)
    if not doc:
        raise ValueError(f"{getattr(obj, '__qualname__', obj)!r} has no docstring: the reference needs one")
    out, in_args = [], False
    for line in doc.splitlines():
        if line.strip() == "Args:":
            out += ["Arguments:", ""]
            in_args = True
        elif in_args and re.match(r"^ {4}\w+:", line):
            name, text = line.strip().split(":", 1)
            out.append(f"- `{name}`:{text}")
        elif in_args and line.startswith("        "):
            out[-1] += " " + line.strip()
        else:
            in_args = in_args and line.startswith(" ")
            out.append(line)
    return _inline("\n".join(out)).strip()


def _code_block(lines: Iterable[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


def _default(value) -> str:
    """A default value as a spec writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _required(mapping: dict, names: Iterable[str], what: str) -> dict:
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ValueError(f"no description for {what} {', '.join(missing)}: add one next to the registry")
    return mapping


# ---------------------------------------------------------------- sections

_INTRO = {
    "Statements": (
        "A spec is a sequence of statements, each opened by a keyword; line breaks and indentation are free, "
        "and `#` starts a comment. The syntax is the parser's own grammar (`energydsl/lang/grammar.lark`); "
        "`expr` is an expression (next section)."
    ),
    "Expressions": (
        "One grammar for constants, initial values, encoders and energies; shapes are checked when the spec "
        "is compiled. `W @ z` with a parameter matrix `W` and a per-sample vector `z` applies to every sample."
    ),
    "Sparsity mechanisms": (
        "Functions of model expressions (encoders, lets, the arguments of energy terms) with their own forward "
        "rule, gradient and, for some, state saved with the model: what makes a sparse auto-encoder's code sparse."
    ),
    "Energy terms": (
        "A term is `NAME : WEIGHT * TERM(...)` in the energy block, with a constant weight ≥ 0. "
        "Energies are per sample."
    ),
    "Structures": "`graph NAME = STRUCTURE` lays the latent units on a structure: unit i is node i.",
    "Pool families": "`pools NAME = FAMILY` groups latent units into pools for a group term.",
    "Initial values and matrices": (
        "What `init` and `mask` expressions may use besides numbers, constants and earlier parameters. "
        "Without `init`, a vector starts at zero and a matrix at N(0, 1/fan_in)."
    ),
    "Constraints": "`constrain C, C, ...` in a parameter declaration.",
    "Inference methods": "`infer z by METHOD`, or `infer z by encoder then METHOD(...)`.",
    "Optimizers": "`optimizer NAME(OPTIONS)` in the train block; options are given by name.",
    "Data sources": (
        "`data SOURCE` or `data SOURCE(ARGUMENTS)`; `--data` on the command line replaces it. "
        "Paths are relative to the spec."
    ),
}


def _heading(title: str) -> list[str]:
    return [f"## {title}", "", _INTRO[title]]


def _statements() -> list[str]:
    expressions = set(_expression_rules())
    rules = grammar_rules()
    out = _heading("Statements")
    for rule in statement_rules():
        if not rule.comment:
            raise ValueError(f"grammar rule {rule.name} has no '//' description above it")
        helpers = [rules[name] for name in _reachable([rule.name], expressions) if name != rule.name]
        shown = [rule] + [r for r in helpers if not r.is_terminal or _is_plain_terminal(r)]
        syntax = _code_block(r.text for r in shown)
        out += ["", f"### `{statement_keyword(rule)}`", "", _inline(rule.comment), "", syntax]
    modes = ", ".join(f"`{m}`" for m in LEARN_MODES)
    norms = ", ".join(f"`{n}`" for n in NORMALIZATIONS)
    learning = f"Learning modes (`learn MODE`, optionally with `(lr = ...)`): {modes}."
    return out + ["", f"{learning} Input normalisations (`normalize NAME`): {norms}."]


def _expressions() -> list[str]:
    rules = grammar_rules()
    # NAME's regex only says which words are reserved: the statement keywords above
    shown = [rules[name] for name in _expression_rules() if name != "NAME"]
    out = _heading("Expressions") + ["", _code_block(r.text for r in shown), "", "### Functions", ""]
    descriptions = _required(FUNCTION_DESCRIPTIONS, FUNCTIONS, "expression function")
    return out + [f"- {_inline(descriptions[name])}" for name in FUNCTIONS]


def _mechanisms() -> list[str]:
    out = _heading("Sparsity mechanisms")
    for cls in MECHANISMS.values():
        out += ["", f"### `{cls.signature}`", "", _docstring(cls)]
    return out


def _terms() -> list[str]:
    out = _heading("Energy terms")
    for name, cls in TERMS.items():
        kinds = ", ".join(f"`{arg}` ({_ARGUMENT_KINDS[kind]})" for arg, kind in zip(cls.arguments, cls.kinds))
        nature = "smooth" if cls.smooth else "nonsmooth"
        written = [*cls.arguments, *(_option_signature(option, entry) for option, entry in cls.options.items())]
        signature = f"{name}({', '.join(written)})"
        out += ["", f"### `{signature}`", "", f"Arguments: {kinds}; {nature}.", *_options(cls), "", _docstring(cls)]
    return out


def _option_signature(name: str, option) -> str:
    """``bandwidth = 0.001``; ``target = ...`` when unset by default; ``prefixes = [...]`` for a list."""
    if option.default is None:
        return f"{name} = {'[...]' if option.kind == 'wholes' else '...'}"
    return f"{name} = {option.default:g}"


def _options(cls) -> list[str]:
    """The line that lists a term's keyword options, if it has any."""
    if not cls.options:
        return []
    items = []
    for name, option in cls.options.items():
        kind = _OPTION_KINDS[option.kind].format(positive="positive " if option.positive else "")
        default = "required" if option.required else "unset by default" if option.default is None else "default " + (
            f"{option.default:g}")  # fmt: skip
        items.append(f"`{name}` ({kind}, {default}): {option.text}")
    return ["", f"Options, written by name after the arguments (constants): {'; '.join(items)}."]


def _structures() -> list[str]:
    out = _heading("Structures")
    for name, entry in STRUCTURES.items():
        out += ["", f"### `{name}`", "", f"Arguments: {', '.join(entry.arguments)}."]
        out += [line for form, builder in entry.forms for line in ("", f"`{form}`: {_docstring(builder)}")]
    return out


def _pool_families() -> list[str]:
    out = _heading("Pool families")
    for name, entry in POOL_FAMILIES.items():
        out += ["", f"### `{name}({', '.join(entry.arguments)})`", "", _docstring(entry)]
    return out + ["", "### `[a, b, ...]`", "", _docstring(family_from_list)]


def _builders() -> list[str]:
    out = _heading("Initial values and matrices") + [""]
    out += [_builder_item(name, fn) for name, fn in init_builders().items()]
    out += ["", "Matrices from structures:", ""]
    return out + [_builder_item(name, fn) for name, fn in matrix_builders().items()]


def _builder_item(name: str, builder: Callable) -> str:
    """One list item; a docstring that starts with the call (``normal(std)``: ...) names it itself."""
    text = " ".join(_docstring(builder).split())
    return f"- {text}" if text.startswith(f"`{name}(") else f"- `{name}`: {text}"


def _constraints() -> list[str]:
    projection = inspect.getdoc(constraints).split("\n\n", 1)[1]  # after the module's one-line summary
    out = _heading("Constraints") + [""]
    out += [f"- `{name}`: {_inline(entry.description)}" for name, entry in CONSTRAINTS.items()]
    return out + ["", _inline(" ".join(projection.split()))]


def _inference() -> list[str]:
    out = _heading("Inference methods")
    defaults = {"steps": DEFAULT_STEPS, "tol": DEFAULT_TOL}
    for name, solver in SOLVERS.items():
        options = f"({', '.join(solver.options)})" if solver.options else ""
        out += ["", f"### `{name}{options}`", "", _inline(solver.description) + "."]
        known = [o for o in solver.options if o in defaults]
        if known:
            out += ["", "Defaults: " + ", ".join(f"`{o} = {defaults[o]:g}`" for o in known) + "."]
    return out


def _optimizers() -> list[str]:
    out = _heading("Optimizers")
    for name, entry in OPTIMIZERS.items():
        default = f"default `lr = {entry.default_lr:g}`" if entry.has_lr else "no learning rate"
        summary = f"{_inline(entry.description)}; {default}."
        out += ["", f"### `{name}({', '.join(entry.options)})`", "", summary]
    out += ["", "Learning-rate schedules, per phase (`phase NAME epochs N schedule cosine`):", ""]
    out += [f"- `{name}`: {_inline(text)}" for name, text in SCHEDULES.items()]
    return out


def source_parameters(source) -> list[inspect.Parameter]:
    """What a spec may pass to a data source (its loader's keyword-only parameters are context)."""
    return source.parameters


def _data_sources() -> list[str]:
    out = _heading("Data sources")
    for name, source in SOURCES.items():
        shown = [
            p.name if p.default is p.empty else f"{p.name} = {_default(p.default)}" for p in source_parameters(source)
        ]
        out += ["", f"### `{name}({', '.join(shown)})`", "", _docstring(source.load)]
    return out


SECTIONS = (
    _statements, _expressions, _mechanisms, _terms, _structures, _pool_families, _builders, _constraints, _inference,
    _optimizers, _data_sources,
)  # fmt: skip


def reference_markdown() -> str:
    """The whole language reference, as Markdown."""
    header = [
        "# The .energy language: reference",
        "",
        f"<!-- Generated from the code by energydsl/reporting/reference.py; do not edit. Regenerate: {REGENERATE} -->",
    ]
    body = [line for section in SECTIONS for line in ["", *section()]]
    return "\n".join(header + body) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
