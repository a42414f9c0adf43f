"""Golden error messages: what `energydsl check` tells a user about a broken spec.

Every ``tests/specs/bad/<kind>.energy`` holds one mistake; ``<kind>.err`` is the exact
stderr of ``energydsl check tests/specs/bad/<kind>.energy`` run from the repository
root (``path:line:col: message``, the source line, a caret line).  Every valid spec
(``tests/specs/ok/`` and ``specs/``) must check cleanly.

After changing a message on purpose, rewrite the golden files and review the diff::

    ENERGYDSL_UPDATE_GOLDEN=1 python -m pytest tests/test_errors.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import energydsl
from energydsl.cli import main

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests/specs/bad").glob("*.energy"))
OK = sorted((ROOT / "tests/specs/ok").glob("*.energy")) + sorted((ROOT / "specs").glob("*.energy"))
UPDATE = os.environ.get("ENERGYDSL_UPDATE_GOLDEN") == "1"
SPEC = "specs/sparse_coding.energy"

@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def check(capsys, *argv: str) -> tuple[int, str]:
    """Run ``energydsl check ARGV`` in-process; its exit code and stderr."""
    code = main(["check", *argv])
    return code, capsys.readouterr().err


def test_there_are_bad_specs():
    assert len(BAD) >= 30


@pytest.mark.parametrize("spec", BAD, ids=lambda p: p.stem)
def test_bad_spec_message(spec: Path, capsys):
    code, err = check(capsys, spec.relative_to(ROOT).as_posix())
    assert "Traceback" not in err
    assert code == 2
    golden = spec.with_suffix(".err")
    if UPDATE:
        golden.write_text(err, encoding="utf-8")
    else:
        assert err == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", OK, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_valid_spec_checks(spec: Path, capsys):
    code, err = check(capsys, spec.relative_to(ROOT).as_posix())
    assert (code, err) == (0, "")


def test_set_value_not_a_number():
    with pytest.raises(energydsl.SpecError, match=r"--set lam: expected a number, got 'abc'"):
        energydsl.compile_program(SPEC, set={"lam": "abc"})


def test_set_unknown_name_suggests():
    with pytest.raises(energydsl.SpecError, match=r"unknown constant 'lamda' \(did you mean 'lam'\?\)"):
        energydsl.compile_program(SPEC, set={"lamda": 0.1})


def test_set_without_value_is_one_line(capsys):
    code, err = check(capsys, "--set", "lam", SPEC)
    assert code == 2
    assert err == "--set lam: expected NAME=VALUE, e.g. --set lam=0.05\n"


def test_cli_module_exits_2_without_traceback():
    spec = "tests/specs/bad/unknown_name_in_term.energy"
    result = subprocess.run([sys.executable, "-m", "energydsl.cli", "check", spec],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == (ROOT / spec).with_suffix(".err").read_text(encoding="utf-8")
