"""The one registry style every extension point uses (energydsl.registry)."""

import subprocess
import sys

import pytest

from energydsl.compiler.initialisers import INITIALISERS
from energydsl.compiler.pools import POOL_FAMILIES
from energydsl.compiler.structures import STRUCTURES
from energydsl.data import SOURCES
from energydsl.ops.constraints import CONSTRAINTS
from energydsl.registry import PluginError, Registry
from energydsl.solvers import SOLVERS
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
