"""The README's "Extending energydsl" example, run as a user would run it.

The plugin in ``examples/plugin/`` defines the elastic-net term with its prox outside the
package and registers it through the ``energydsl.terms`` entry point group.  Here it is laid
out as pip installs it (its module beside a ``.dist-info`` holding its entry points) on a path
of its own, and used from a directory outside the repository: its prox is checked against
cvxpy, a spec that uses it trains from the command line, and the trained run's codes are
checked against cvxpy's solution of the same energy.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import tomllib
import torch

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin as pip leaves it: the module, and its metadata with the entry points of its pyproject.toml."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(PLUGIN / "energydsl_elastic_net.py", site)
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines += [f"[{group}]"] + [f"{name} = {target}" for name, target in entries.items()] + [""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return site


def run_python(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_plugin_prox_is_the_prox(site, monkeypatch):
    """prox_{τ·en}(v) against cvxpy's argmin_u ½‖u − v‖² + τ(‖u‖₁ + γ/2‖u‖²), for several τ and γ."""
    monkeypatch.syspath_prepend(str(site))
    from energydsl_elastic_net import ElasticNet

    term = ElasticNet({})
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(4, 12, generator=generator, dtype=torch.float64)
    for tau, gamma in [(0.1, 0.0), (0.5, 2.0), (1.3, 0.7)]:
        ours = term.prox(v, torch.full((4, 1), tau, dtype=torch.float64), gamma).numpy()
        for row, expected in zip(v.numpy(), ours):
            u = cp.Variable(12)
            cp.Problem(cp.Minimize(0.5 * cp.sum_squares(u - row) + tau * (cp.norm1(u) + gamma / 2 * cp.sum_squares(u)))).solve()
            np.testing.assert_allclose(expected, u.value, atol=1e-6)


@pytest.mark.slow
def test_a_spec_trains_with_the_plugin_term_from_outside_the_repository(site, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(PLUGIN / "elastic_net.energy", work)
    checked = run_python(site, work, "-m", "energydsl.cli", "check", "elastic_net.energy")
    assert checked.returncode == 0, checked.stderr
    trained = run_python(site, work, "-m", "energydsl.cli", "run", "elastic_net.energy", "--out", "run", "--quiet")
    assert trained.returncode == 0, trained.stderr
    history = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3 and history[-1]["energy"] < history[0]["energy"]
    # the trained run reopens, and its codes are the optimum of its own energy
    script = """
import json, energydsl
model = energydsl.load_run("run").double()
x = energydsl.load("elastic_net.energy").dataset.x_test[:6].double()  # the same synthetic draw
z = model.infer(x)
print(json.dumps({"x": model.preprocess(x).tolist(), "W": model.params["W"].tolist(), "z": z.tolist(),
                  "energy": model.energy(x, z).tolist()}))
"""
    opened = run_python(site, work, "-c", script)
    assert opened.returncode == 0, opened.stderr
    result = json.loads(opened.stdout)
    W = np.array(result["W"])
    for x, z, energy in zip(np.array(result["x"]), np.array(result["z"]), result["energy"]):
        u = cp.Variable(W.shape[1])
        objective = 0.5 * cp.sum_squares(x - W @ u) + 0.1 * (cp.norm1(u) + 0.25 * cp.sum_squares(u))
        optimum = cp.Problem(cp.Minimize(objective)).solve()
        assert energy == pytest.approx(optimum, rel=1e-6, abs=1e-8)
        np.testing.assert_allclose(z, u.value, atol=1e-4)


def test_the_term_needs_the_plugin(tmp_path):
    """Without the plugin installed, the spec's term is unknown: a one-line error, not a traceback."""
    shutil.copy(PLUGIN / "elastic_net.energy", tmp_path)
    result = subprocess.run([sys.executable, "-m", "energydsl.cli", "check", "elastic_net.energy"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("elastic_net.energy:14:18: unknown energy term 'elastic_net'")
    assert "Traceback" not in result.stderr
