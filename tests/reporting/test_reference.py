"""The language reference: docs/reference.md is what the code generates, and it names
every statement and every entry of every registry, with its description."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from energydsl.compiler.initialisers import INITIALISERS
from energydsl.compiler.params import LEARN_MODES
from energydsl.compiler.pools import POOL_FAMILIES
from energydsl.compiler.structures import STRUCTURES
from energydsl.compiler.training import SCHEDULES
from energydsl.data import SOURCES
from energydsl.expr.functions import FUNCTION_DESCRIPTIONS, FUNCTIONS
from energydsl.lang.parser import STATEMENT_KEYWORDS
from energydsl.mechanisms import MECHANISMS
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.optim import OPTIMIZERS
from energydsl.reporting import reference
from energydsl.reporting.reference import REGENERATE, reference_markdown
from energydsl.solvers import SOLVERS
from energydsl.terms import TERMS

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = reference_markdown()


def section(title: str) -> str:
    """The text of the ``## title`` section."""
    start = MARKDOWN.index(f"\n## {title}\n")
    end = MARKDOWN.find("\n## ", start + 1)
    return MARKDOWN[start : end if end >= 0 else None]


def first_line(obj) -> str:
    return inspect.getdoc(obj).splitlines()[0].replace("``", "`")


def test_the_checked_in_reference_is_up_to_date():
    checked_in = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert checked_in == MARKDOWN, f"docs/reference.md is out of date; regenerate it: {REGENERATE}"


def test_running_the_module_prints_the_reference():
    result = subprocess.run([sys.executable, "-m", "energydsl.reporting.reference"], capture_output=True, text=True, check=True)
    assert result.stdout == MARKDOWN


@pytest.mark.parametrize("keyword", STATEMENT_KEYWORDS)
def test_every_statement_has_its_syntax_and_description(keyword):
    text = section("Statements")
    entry = text[text.index(f"\n### `{keyword}`\n") :].split("\n### ")[1]
    rule = next(r for r in reference.statement_rules() if reference.statement_keyword(r) == keyword)
    assert rule.comment and rule.comment in entry
    assert f'{rule.name}: "{keyword}"' in entry  # the grammar rule, as the parser reads it


def test_every_learning_mode_is_listed():
    assert all(f"`{mode}`" in section("Statements") for mode in LEARN_MODES)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_every_energy_term_has_its_signature_and_docstring(name):
    cls = TERMS[name]
    text = section("Energy terms")
    closing = ", " if cls.options else ")`"  # the options follow the arguments
    assert f"### `{name}({', '.join(cls.arguments)}{closing}" in text
    assert first_line(cls) in text
    entry = text[text.index(f"### `{name}(") :].split("\n### ")[0]
    for option in cls.options:
        assert f"`{option}` (" in entry  # each option, its kind, default and meaning


def test_term_options_show_their_defaults():
    text = section("Energy terms")
    bandwidth = TERMS["l0"].options["bandwidth"].default
    assert f"### `l0(v, theta, bandwidth = {bandwidth:g}, target = ...)`" in text
    assert "### `matryoshka(x, D, z, b, prefixes = [...])`" in text
    assert "`prefixes` (a list of positive whole numbers, required)" in text


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_expression_function_is_described(name):
    assert f"- {FUNCTION_DESCRIPTIONS[name].replace('``', '`')}" in section("Expressions")


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_every_structure_is_listed_with_its_arguments(name):
    assert f"### `{name}`\n\nArguments: {', '.join(STRUCTURES[name].arguments)}." in section("Structures")


@pytest.mark.parametrize("name", sorted(POOL_FAMILIES))
def test_every_pool_family_builder_is_listed_with_its_arguments(name):
    assert f"### `{name}({', '.join(POOL_FAMILIES[name].arguments)})`" in section("Pool families")


@pytest.mark.parametrize("name", sorted(INITIALISERS))
def test_every_init_and_matrix_builder_is_listed(name):
    assert f"- `{name}" in section("Initial values and matrices")


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_every_constraint_is_described(kind):
    assert f"- `{kind}`: {CONSTRAINTS[kind].description}" in section("Constraints")


@pytest.mark.parametrize("method", SOLVERS.names())
def test_every_inference_method_is_listed(method):
    assert f"### `{method}" in section("Inference methods")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_is_listed_with_its_options(name):
    assert f"### `{name}({', '.join(OPTIMIZERS[name].options)})`" in section("Optimizers")


def test_a_new_optimizer_is_one_registry_entry():
    """An entry registered under a new word: specs compile with it, the loop builds it, the reference lists it."""
    import torch

    import energydsl
    from energydsl.optim import Optimizer
    from energydsl.training.loop import make_optimizers

    class RMSprop(Optimizer):
        name = "rmsprop"
        options = {"lr": 0.01, "alpha": 0.99}
        unit_options = ("alpha",)
        description = "RMSprop (torch.optim.RMSprop)"

        def make(self, groups, options, lr, maximize, column_projection):
            return torch.optim.RMSprop(groups, lr=lr, maximize=maximize, **options)

    OPTIMIZERS.register(RMSprop())
    try:
        model = energydsl.load(
            "model tiny\ndata synthetic(dim = 8, atoms = 12, count = 50, k = 2, seed = 0)\ninput x[8]\nlatent z[12]\n"
            "param D[8, 12]  init samples(x)  constrain col_norm <= 1\n"
            "energy\n  recon : 0.5 * sqerr(x, D @ z)\n  sparse : 0.1 * l1(z)\n"
            "infer z by fista(steps = 20)\ntrain\n  optimizer rmsprop(alpha = 0.9)\n"
        )
        assert model.program.training.settings() == {"lr": 0.01, "alpha": 0.9}
        assert isinstance(make_optimizers(model).descent, torch.optim.RMSprop)
        assert "### `rmsprop(lr, alpha)`\n\nRMSprop (torch.optim.RMSprop); default `lr = 0.01`." in reference_markdown()
    finally:
        OPTIMIZERS.unregister("rmsprop")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_data_source_has_its_parameters_and_docstring(name):
    text = section("Data sources")
    entry = text[text.index(f"### `{name}(") :].split("\n### ")[0]
    assert first_line(SOURCES[name].load) in entry
    for parameter in reference.source_parameters(SOURCES[name]):
        assert f"- `{parameter.name}`:" in entry  # the docstring's Args, as a list


def test_the_defaults_of_a_data_source_are_written_as_in_a_spec():
    assert '### `patches(size = 12, count = 20000, whiten = "zca", center = true,' in section("Data sources")


def test_a_registry_entry_without_a_description_stops_the_generation(monkeypatch):
    monkeypatch.setattr(reference, "FUNCTIONS", [*FUNCTIONS, "cosh"])
    with pytest.raises(ValueError, match="no description for expression function cosh"):
        reference_markdown()


def test_docs_command_prints_the_reference(capsys):
    from energydsl.cli import main

    assert main(["docs"]) == 0
    assert capsys.readouterr().out == reference_markdown()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_is_listed(name):
    assert f"- `{name}`: " in section("Optimizers")


def test_every_sparsity_mechanism_is_listed_with_its_signature_and_description():
    text = section("Sparsity mechanisms")
    for cls in MECHANISMS.values():
        assert f"\n### `{cls.signature}`\n" in text
        assert first_line(cls) in text
