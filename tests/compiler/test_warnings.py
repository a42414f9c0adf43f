"""Spec warnings: what compiles but is probably a slip (``Program.warnings``), printed by
``energydsl check`` and ``run`` on stderr without failing."""

from __future__ import annotations

import energydsl
from energydsl.cli import main
from energydsl.errors import SpecWarning

UNPOOLED = """data synthetic(dim = 16, atoms = 20, count = 200)
input x
latent z[20]
param W[16, 20]
pool A = z[0:4]
pool B = z[8:12, 19]
pools P = [A, B]
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : 0.1 * group_l2(z, P)
infer z by fista(steps = 5)
train batch 50 epochs 1
"""
WARNING = ("warning: units 4-7, 12-18 of 'z' are in no pool of 'P': group_l2 leaves them unpenalised "
           "(add them to a pool, or an l1 term on 'z')")  # fmt: skip


def test_units_in_no_pool_of_a_group_term_are_a_warning(tmp_path):
    path = tmp_path / "unpooled.energy"
    path.write_text(UNPOOLED)
    program = energydsl.compile_program(str(path))
    assert [str(w) for w in program.warnings] == [f"{path}:10:29: {WARNING}"]
    assert isinstance(program.warnings[0], SpecWarning)
    assert program.warnings[0].render().splitlines()[1:] == ["    group : 0.1 * group_l2(z, P)", " " * 30 + "^"]


def test_no_warning_when_the_pools_cover_the_latent_or_l1_penalises_every_unit(tmp_path):
    covered = tmp_path / "covered.energy"
    covered.write_text(UNPOOLED.replace("pools P = [A, B]", "pools P = blocks(z, 4)"))
    with_l1 = tmp_path / "with_l1.energy"
    with_l1.write_text(UNPOOLED.replace("infer", "  sparse : 0.1 * l1(z)\ninfer"))
    assert energydsl.compile_program(str(covered)).warnings == ()
    assert energydsl.compile_program(str(with_l1)).warnings == ()


def test_check_and_run_print_the_warning_and_succeed(tmp_path, capsys):
    path = tmp_path / "unpooled.energy"
    path.write_text(UNPOOLED)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err.splitlines()[0] == f"{path}:10:29: {WARNING}"
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == f"{path}:10:29: {WARNING}"
    assert (tmp_path / "run" / "model.safetensors").exists()
