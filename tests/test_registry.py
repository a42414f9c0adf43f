"""The one registry style every extension point uses (energydsl.registry)."""

import subprocess
import sys

import pytest
import torch

from energydsl.compiler.initialisers import INITIALISERS
from energydsl.compiler.pools import POOL_FAMILIES
from energydsl.compiler.structures import STRUCTURES
from energydsl.data import SOURCES
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.registry import PluginError, Registry
from energydsl.solvers import SOLVERS, Solver
from energydsl.terms import TERMS


class Named:
    def __init__(self, name):
        self.name = name


def test_entries_are_found_by_name_in_registration_order():
    registry = Registry("widget", "energydsl.test-widgets")
    first, second = registry.register(Named("b")), registry.register(Named("a"))
    assert registry["b"] is first and registry.get("a") is second and registry.get("c") is None
    assert list(registry) == ["b", "a"] and "a" in registry and len(registry) == 2


def test_a_second_entry_under_one_name_is_refused_and_names_both():
    registry = Registry("widget", "energydsl.test-widgets")
    registry.register(Named("w"))
    with pytest.raises(PluginError, match="widget 'w' is registered twice"):
        registry.register(Named("w"))


def test_a_name_a_spec_cannot_write_is_refused():
    with pytest.raises(ValueError, match="a widget needs a name that a spec can write"):
        Registry("widget", "energydsl.test-widgets").register(Named("two words"))


@pytest.mark.parametrize("registry, expected", [
    (TERMS, {"sqerr", "l1", "group_l2", "tree_group", "inhibition", "xent"}),
    (SOLVERS, {"fista", "ista", "lars", "encoder"}),
    (SOURCES, {"mnist", "patches", "synthetic", "file", "stacked"}),
    (STRUCTURES, {"grid", "torus", "chain", "tree"}),
    (POOL_FAMILIES, {"blocks", "maps", "windows", "neighborhoods", "subtrees"}),
    (CONSTRAINTS, {"col_norm", "row_norm", "filter_norm", "norm", "nonneg", "symmetric", "zero_diag", "mask"}),
    (INITIALISERS, {"normal", "uniform", "samples", "zeros", "ones", "I", "eye", "tree_inhibition", "grid_inhibition"}),
], ids=lambda value: getattr(value, "kind", ""))
def test_every_extension_point_is_a_registry_holding_the_built_in_entries(registry, expected):
    assert isinstance(registry, Registry)
    assert expected <= set(registry)


def plugin_site(tmp_path, group: str, line: str):
    """A distribution on a path of its own whose one entry point is ``line`` in ``group``."""
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{line}\n")
    return tmp_path


@pytest.mark.parametrize("line, message", [
    ("huber = no_such_module:Huber", "the energy term plugin 'huber = no_such_module:Huber' (entry point group "
                                     "energydsl.terms) failed to load: ModuleNotFoundError"),
    ("huber = energydsl.terms.l1:l1", "the energy term plugin 'huber = energydsl.terms.l1:l1' names itself 'l1'"),
])
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, line, message):
    site = plugin_site(tmp_path, "energydsl.terms", line)
    spec = tmp_path / "s.energy"
    spec.write_text("data synthetic\ninput x\nlatent z[4]\nparam W[16, 4]\nenergy\n  r : sqerr(x, W @ z)\n")
    result = subprocess.run([sys.executable, "-m", "energydsl.cli", "check", str(spec)], capture_output=True,
                            text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- a new entry is one class and one line

NEW_ENTRIES_SPEC = """
model new_entries
data ramp(dim = 12, count = 80)
input x[12]
latent z[16]
graph G = ring(16)
param W[12, 16] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.05 * l1(z)
infer z by twice(steps = 1000, tol = 1e-10)
train optimizer sgd(lr = 0.05) batch 20 epochs 1
"""


class Twice(Solver):
    """FISTA run twice from where it stopped (a stand-in for a new method)."""

    name = "twice"
    description = "FISTA, then FISTA again from its answer"
    uses_prox = True

    def solve(self, batch, z, steps, tol):
        from energydsl.solvers.fista import fista

        problem = batch.problem()
        first = fista(problem, batch.start(z), steps, tol)
        return fista(problem, first, steps, tol)

    def memory(self, units, size):
        return {"activations": 2 * units * size}


def ramp(dim: int = 8, count: int = 40):
    """Noisy ramps of random slope and offset (a stand-in for a new data source).

    Args:
        dim: the samples' length.
        count: the number of samples, train and test.
    """
    from energydsl.data import Dataset

    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, dim)
    x = torch.randn(count, 1, generator=generator) * t + torch.randn(count, 1, generator=generator)
    x = x + 0.3 * torch.randn(count, dim, generator=generator)
    return Dataset("ramp", x[: count // 2], x[count // 2 :], None, None, None)


def ring(name: str, length: int):
    """``ring(length)``: ``length`` units in a cycle, each the neighbour of the next and the last of the first."""
    from energydsl.ops import structures as st

    graph = st.chain(name, length).graph.copy()
    graph.add_edge(0, length - 1)
    return st.Structure(name, "ring", graph)


class Ring(STRUCTURES["chain"]):
    """A chain closed into a ring (a stand-in for a new structure)."""

    name = "ring"
    forms = (("ring(length)", ring),)

    @classmethod
    def build(cls, stage, name, node, slots, latent):
        return ring(name, super().build(stage, name, node, slots, latent).size)


@pytest.fixture
def new_entries():
    from energydsl.data import Source

    entries = [(SOLVERS, Twice()), (SOURCES, Source("ramp", ramp, lambda dim=8, count=40: ((dim,), None),
                                                    lambda **kwargs: None)), (STRUCTURES, Ring)]
    for registry, entry in entries:
        registry.register(entry)  # the one registration line each
    yield
    for registry, entry in entries:
        registry.unregister(entry.name)


def test_a_new_solver_data_source_and_structure_work_from_a_spec(new_entries):
    import energydsl
    from energydsl.reporting.explain import explain
    from energydsl.reporting.reference import reference_markdown
    from energydsl.reporting.resources import estimate
    from energydsl.solvers.fista import fista

    model = energydsl.load(NEW_ENTRIES_SPEC).double()
    x = model.dataset.x_test[:8].double()
    z = model.infer(x)
    optimum = fista(model.problem(model.preprocess(x)), torch.zeros_like(z), 5000, 1e-13)
    assert torch.allclose(model.energy(x, z), model.energy(x, optimum), rtol=1e-7)
    ring = model.program.structures["G"]
    assert ring.kind == "ring" and ring.size == 16 and ring.graph.has_edge(0, 15)
    assert "twice(steps = 1000" in explain(model.program)
    reference = reference_markdown()
    assert "### `twice(steps, tol)`" in reference and "### `ramp(dim = 8, count = 40)`" in reference
    assert estimate(model.program).parts["activations"] > 0
    energydsl.train(model)
