"""A run directory holds everything it needs to reopen, from any folder, on any machine.

A tree read from a file is written into the run's spec by its edges; data files are
recorded at the absolute path they were found at; ``load_run`` reads no data, and
``eval``/``plot`` take ``--data`` when the data has moved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import energydsl
from energydsl import api
from energydsl.cli import EXIT_USER_ERROR, main
from energydsl.errors import RunError
from energydsl.runs.checkpoint import SPEC_FILE

TREE_SPEC = """model mytree
data synthetic(dim = 8, atoms = 7, count = 60, k = 2, seed = 1)
input x[8]
latent z[7]
graph T = tree(file = "tree.txt")
pools P = subtrees(T)
param W[8, 7] init samples(x) constrain col_norm <= 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  tree  : 0.05 * group_l2(z, P)
infer z by fista(steps = 20)
train
  optimizer sgd(lr = 0.05)
  batch 20
  epochs 1
"""
TREE_EDGES = "0 1\n0 2\n1 3\n1 4\n2 5\n2 6\n"

FILE_SPEC = """model mine
data file("mine.npz")
input x[8]
latent z[6]
param W[8, 6] init samples(x) constrain col_norm <= 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.1 * l1(z)
infer z by fista(steps = 20)
train
  optimizer sgd(lr = 0.05)
  batch 20
  epochs 1
"""


def write_npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(60, 8)).astype(np.float32))


@pytest.fixture
def tree_run(tmp_path, monkeypatch):
    """A tree-from-file spec in project/, trained from tmp_path into runs/mytree; cwd: elsewhere/."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tree.energy").write_text(TREE_SPEC)
    (project / "tree.txt").write_text(TREE_EDGES)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "project/tree.energy", "--out", "runs/mytree", "--quiet"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "runs" / "mytree"


@pytest.fixture
def file_run(tmp_path, monkeypatch):
    """A file("mine.npz") spec in project/, trained from tmp_path into runs/mine; cwd: elsewhere/."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mine.energy").write_text(FILE_SPEC)
    write_npz(project / "mine.npz")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "project/mine.energy", "--out", "runs/mine", "--quiet"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "runs" / "mine"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---------------------------------------------------------------- a tree from a file


def test_tree_file_is_written_into_the_runs_spec(tree_run, tmp_path):
    (tmp_path / "project" / "tree.txt").unlink()  # the run must not need it any more
    spec = (tree_run / SPEC_FILE).read_text()
    assert "tree.txt" not in spec
    assert "graph T = tree(edges = [[0, 1], [0, 2], [1, 3], [1, 4], [2, 5], [2, 6]], root = 0)" in spec
    model = energydsl.load_run(tree_run)
    assert model.program.structures["T"].parents.tolist() == [-1, 0, 0, 1, 1, 2, 2]


def test_tree_file_run_evaluates_plots_and_prunes_from_another_folder(tree_run, tmp_path, capsys):
    (tmp_path / "project" / "tree.txt").unlink()
    assert main(["eval", str(tree_run), "--json"]) == 0
    assert '"recon' in capsys.readouterr().out
    assert main(["plot", str(tree_run)]) == 0
    assert (tree_run / "report.html").is_file()
    assert main(["prune", str(tree_run), "--threshold", "0", "--out", "pruned"]) == 0
    assert energydsl.load_run("pruned").program.structures["T"].size == 7


def test_a_large_tree_is_written_on_several_lines():
    from energydsl.runs.checkpoint import tree_text

    edges = [[i // 2, i] for i in range(1, 200)]
    graph = "graph T = "
    text = tree_text(edges, root=0, indent=len(graph))
    assert len(text.splitlines()) > 10
    assert max(map(len, text.splitlines())) < 140
    source = (TREE_SPEC.replace('tree(file = "tree.txt")', text).replace("atoms = 7", "atoms = 200")
              .replace("z[7]", "z[200]").replace("W[8, 7]", "W[8, 200]"))  # fmt: skip
    assert energydsl.compile_program(source).structures["T"].parents.tolist() == [-1] + [i // 2 for i in range(1, 200)]


# ---------------------------------------------------------------- data files


def test_data_file_is_recorded_at_its_absolute_path(file_run, tmp_path, capsys):
    data = (tmp_path / "project" / "mine.npz").resolve()
    assert f'data file("{data.as_posix()}")' in (file_run / SPEC_FILE).read_text()
    assert main(["eval", str(file_run), "--json"]) == 0  # from another folder
    assert '"recon' in capsys.readouterr().out


def test_moved_data_is_a_one_line_error_naming_the_path(file_run, tmp_path, capsys):
    data = (tmp_path / "project" / "mine.npz").resolve()
    data.rename(tmp_path / "moved.npz")
    assert main(["eval", str(file_run)]) == EXIT_USER_ERROR
    message = one_line_error(capsys)
    assert f"file not found: {data}" in message and "--data" in message
    assert main(["plot", str(file_run)]) == EXIT_USER_ERROR
    assert str(data) in one_line_error(capsys)


def test_a_moved_run_loads_without_data_and_evaluates_with_data(file_run, tmp_path, capsys):
    moved = Path(shutil.move(str(file_run), str(tmp_path / "other_machine" / "mine")))
    shutil.move(str(tmp_path / "project"), str(tmp_path / "other_machine" / "project"))
    model = energydsl.load_run(moved)  # reads no data
    assert model.params["W"].shape == (8, 6)
    old = (tmp_path / "project" / "mine.npz").resolve()
    assert main(["eval", str(moved)]) == EXIT_USER_ERROR
    assert f"file not found: {old}" in one_line_error(capsys)
    # --data paths are read from the current folder
    given = 'file("../other_machine/project/mine.npz")'
    assert main(["eval", str(moved), "--data", given, "--json"]) == 0
    assert '"recon' in capsys.readouterr().out
    assert main(["plot", str(moved), "--data", given]) == 0
    metrics = api.evaluate_run(moved, data=given)
    assert "term.recon" in metrics


def test_data_of_another_shape_is_refused(file_run, capsys):
    assert main(["eval", str(file_run), "--data", "synthetic(dim = 4, atoms = 6, count = 40)"]) == EXIT_USER_ERROR
    assert "--data" in one_line_error(capsys)
    with pytest.raises(RunError, match=r"\[4\].*\[8\]"):
        api.evaluate_run(file_run, data="synthetic(dim = 4, atoms = 6, count = 40)")
