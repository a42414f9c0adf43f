"""The README is executed: every ``energydsl ...`` line of its ```sh blocks and every
```python block runs, in README order, in a scratch directory.

What runs, and where:

- The scratch directory (one per module for the ordered walk, one per command for the
  cheap ones) holds copies of ``specs/``, ``examples/`` and ``tests/specs/``; ``runs/``,
  ``features.pt`` and reformatted specs land there, never in the repository.
- A command line is split at ``&&``; each ``energydsl ...`` part runs in this process
  (``energydsl.cli.main``, the code of this checkout), with ``#`` comments removed and
  shell globs (``specs/*.energy``) expanded.  Its exit status must be 0.
- Python blocks run one after another in one namespace, so a block may use what a block
  before it defined (as a reader following the README would); each must be complete.

**Shortening** (the one convention): an HTML comment, invisible on GitHub, on a line
before a code block (only blank lines and other such comments between them)::

    <!-- test: energydsl run specs/drsae.energy += --data "mnist(count=300)" --set units=32 -->

appends the options after ``+=`` to every command line of that block that is exactly the
text before ``+=`` (its ``#`` comment removed).  A marker that matches no command fails
the test, so markers cannot go stale.

**Not run**, by the rules in :data:`SKIPS` (each with its reason; a skipped line shows up
in ``test_every_command_is_run_or_skipped_by_a_listed_rule``): ``pip install`` (the test
runs this checkout), lines that are not ``energydsl`` commands (``python -m pytest``,
benchmarks, ``torchrun``: other tests cover them), a second machine's rendezvous,
``--device cuda`` without CUDA, and the plugin's spec (it needs ``pip install
./examples/plugin``; tests/test_extending.py installs and runs it).

The default pass runs the cheap commands (``check``, ``explain``, ``fmt``, ``docs``), each
on its own; ``-m slow`` walks the whole README in order (trainings, eval, plot, export, the
Python blocks).
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from energydsl.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COPIED = ("specs", "examples", "tests/specs")
CHEAP = {"check", "explain", "fmt", "docs"}

# (pattern searched in the command line, why it is not run here)
SKIPS: tuple[tuple[str, str], ...] = (
    (r"^pip install\b", "installs packages; the test runs this checkout"),
    (r"^(?!energydsl\b)", "not an energydsl command (tests, benchmarks and torchrun are run elsewhere)"),
    (r"--nnodes|--rdzv-endpoint", "needs a second machine to meet at the rendezvous"),
    (r"^energydsl run examples/plugin/", "needs `pip install ./examples/plugin`; tests/test_extending.py runs it"),
)
CUDA_SKIP = (r"--device cuda", "needs a GPU")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    markers: tuple[tuple[str, str], ...]  # (command, options appended)


@dataclass(frozen=True)
class Command:
    line: int
    text: str  # as written, comment removed
    extra: str  # options a marker appends

    @property
    def argv(self) -> list[str]:
        words = shlex.split(f"{self.text} {self.extra}")[1:]
        out = []
        for word in words:
            matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
            out.extend(matches or [word])
        return out

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.text[len('energydsl '):][:60]}"


MARKER = re.compile(r"^<!--\s*test:\s*(.+?)\s*\+=\s*(.+?)\s*-->\s*$")


def blocks(text: str) -> list[Block]:
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        markers, k = [], i - 1
        while k >= 0 and (not lines[k].strip() or MARKER.match(lines[k])):
            if m := MARKER.match(lines[k]):
                markers.append((m.group(1), m.group(2)))
            k -= 1
        out.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]), tuple(reversed(markers))))
        i = end + 1
    return out


def strip_comment(line: str) -> str:
    """The command without its trailing ``# ...`` (a ``#`` inside quotes stays)."""
    for match in re.finditer(r"(^|\s)#", line):
        try:
            shlex.split(line[: match.start()])
        except ValueError:
            continue  # the '#' is inside quotes
        return line[: match.start()].strip()
    return line.strip()


def sh_lines(block: Block) -> list[tuple[int, str]]:
    """(README line, command) for every command of an sh block, split at ``&&``."""
    out = []
    for offset, raw in enumerate(block.text.split("\n")):
        line = strip_comment(raw)
        if not line:
            continue
        out.extend((block.line + 1 + offset, part.strip()) for part in line.split("&&"))
    return out


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIPS:
        if re.search(pattern, command):
            return reason
    if re.search(CUDA_SKIP[0], command) and not torch.cuda.is_available():
        return CUDA_SKIP[1]
    return None


def steps() -> list[tuple[str, object]]:
    """The README in order: ("command", Command) and ("python", Block)."""
    out = []
    for block in blocks(README.read_text(encoding="utf-8")):
        if block.language == "python":
            out.append(("python", block))
        elif block.language == "sh":
            extra = dict(block.markers)
            for line, text in sh_lines(block):
                if skip_reason(text) is None:
                    out.append(("command", Command(line, text, extra.get(text, ""))))
    return out


def scratch(directory: Path) -> Path:
    for part in COPIED:
        shutil.copytree(ROOT / part, directory / part)
    return directory


def run_command(command: Command, capsys) -> None:
    code = main(command.argv)
    captured = capsys.readouterr()
    assert code == 0, f"README line {command.line}: `{command.text} {command.extra}` exited {code}:\n{captured.err}"


COMMANDS = [c for kind, c in steps() if kind == "command"]
CHEAP_COMMANDS = [c for c in COMMANDS if c.argv[0] in CHEAP]


# ---------------------------------------------------------------- the reading itself


def test_every_command_is_run_or_skipped_by_a_listed_rule():
    seen = []
    for block in blocks(README.read_text(encoding="utf-8")):
        if block.language != "sh":
            continue
        commands = [text for _, text in sh_lines(block)]
        for command, _ in block.markers:
            assert command in commands, f"README line {block.line}: the marker for `{command}` matches no command"
        for text in commands:
            seen.append((text, skip_reason(text)))
    run = [text for text, reason in seen if reason is None]
    assert "energydsl run specs/drsae.energy" in run and "energydsl docs" in run
    assert ("pip install -e .", SKIPS[0][1]) in seen
    assert len(CHEAP_COMMANDS) >= 4 and len(COMMANDS) > len(CHEAP_COMMANDS)


def test_strip_comment_keeps_quoted_hashes():
    assert strip_comment('energydsl run a.energy --data "file(\'#x\')"   # note') == \
        'energydsl run a.energy --data "file(\'#x\')"'
    assert strip_comment("energydsl docs   # the reference") == "energydsl docs"


# ---------------------------------------------------------------- cheap: every check, explain, fmt, docs


@pytest.mark.parametrize("command", CHEAP_COMMANDS, ids=lambda c: c.id)
def test_cheap_readme_command(command: Command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(scratch(tmp_path))
    run_command(command, capsys)


# ---------------------------------------------------------------- slow: the README in order


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """The scratch directory and the Python namespace shared by the ordered walk."""
    directory = scratch(tmp_path_factory.mktemp("readme"))
    return directory, {"__name__": "__readme__"}


@pytest.mark.slow
@pytest.mark.parametrize("kind,step", steps(),
                         ids=lambda s: s if isinstance(s, str) else (s.id if isinstance(s, Command) else f"L{s.line}"))
def test_readme_in_order(kind, step, walk, monkeypatch, capsys):
    directory, namespace = walk
    monkeypatch.chdir(directory)
    if kind == "command":
        run_command(step, capsys)
    else:
        exec(compile(step.text, f"README.md (python block at line {step.line})", "exec"), namespace)


# ---------------------------------------------------------------- docs/reference.md: every listed option compiles

REFERENCE = ROOT / "docs" / "reference.md"
BASE = """data synthetic(dim = 8, atoms = 12, count = 100)
input x
latent z[12]
param W[8, 12]
param E[12, 8]
encoder z = E @ x
energy
  recon : 0.5 * sqerr(x, W @ z)
  sparse : 0.1 * l1(z)
infer z by {infer}
train optimizer {optimizer} batch 20 epochs 1
"""


def listed(name: str) -> list[str]:
    """The options docs/reference.md lists for ``name``: its heading ``### `name(a, b)` ``."""
    match = re.search(rf"^### `{re.escape(name)}(?:\((.*?)\))?`", REFERENCE.read_text(encoding="utf-8"), re.M)
    assert match, f"docs/reference.md has no heading for {name}"
    return [a.strip() for a in (match.group(1) or "").split(",") if a.strip()]


def test_every_listed_solver_and_optimizer_option_compiles(tmp_path):
    import energydsl
    from energydsl.optim import OPTIMIZERS
    from energydsl.solvers import SOLVERS

    values = {"steps": "5", "tol": "1e-3", "k": "2", "gap": "1e-6"}
    spec = tmp_path / "options.energy"
    for name in SOLVERS:
        options = listed(name)
        assert set(options) == set(SOLVERS[name].options), name
        # a method stops on tol or on gap, never both: each is written once
        for written in ([[o for o in options if o != "gap"], [o for o in options if o != "tol"]]
                        if "gap" in options else [options]):  # fmt: skip
            call = f"{name}({', '.join(f'{o} = {values[o]}' for o in written)})" if written else name
            call += " terms recon" if name == "omp" else ""  # omp takes no l1 term: it minimises the reconstruction
            spec.write_text(BASE.format(infer=call, optimizer="adam()"))
            assert energydsl.compile_program(str(spec)).methods[0].kind == name
    for name in OPTIMIZERS:
        defaults = OPTIMIZERS[name].options
        assert set(listed(name)) == set(defaults), name
        for option in listed(name):
            value = defaults[option]
            text = str(int(value)) if isinstance(value, bool) else repr(value)  # a flag is 0 or 1
            optimizer = f"{name}({option} = {text})"
            if name == "bcd":  # every parameter must be a dictionary of one sqerr term
                spec.write_text(BASE.replace("param E[12, 8]\nencoder z = E @ x\n", "").format(
                    infer="fista", optimizer=optimizer))
            else:
                spec.write_text(BASE.format(infer="fista", optimizer=optimizer))
            assert energydsl.compile_program(str(spec)).training.optimizer == name, optimizer
