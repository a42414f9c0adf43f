"""Fuzzing the spec front end: whatever the file holds, `energydsl check` answers
with success (exit 0) or a located message (exit 2), never a traceback.

Every valid spec (``specs/`` and ``tests/specs/ok/``) is cut into tokens by a simple
regex and mutated as text — tokens deleted, duplicated, swapped, replaced by
identifiers, keywords or punctuation, numbers replaced by extreme values
(0, negatives, 1e308, 10**30, nan, inf, denormals, many digits), the file
truncated at any byte.  Each mutant goes through the real CLI entry point,
``energydsl.cli.main(["check", path])``, in-process.  A mutant passes when:

- no exception escapes ``main``, and nothing printed contains "Traceback";
- the exit code is 0 (stderr empty) or 2;
- on exit 2, stderr is one ``path:line:col: message`` line, optionally followed
  by the source line at ``line`` and a caret line, and line:col lies in the file.

The same holds for arbitrary bytes and text, and for files made to hurt: empty,
NUL bytes, Latin-1 and UTF-16, a byte-order mark, 1 MB lines, expressions nested
thousands deep, data sources that cannot be used.  One test runs the real
``python -m energydsl.cli`` to show that no traceback reaches a process's stderr.

Hypothesis runs derandomized with no example database, so CI sees the same
mutants on every run (180 per spec: 2,520 for 14 specs).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from energydsl.cli import main
from energydsl.lang.parser import STATEMENT_KEYWORDS

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.energy")) + sorted((ROOT / "tests/specs/ok").glob("*.energy"))
# About 2,500 mutants in all, however many specs there are (about 20 s on one core)
MUTANTS_PER_SPEC = max(20, 2520 // len(SPECS))

# Strings and comments first so they stay whole; then whitespace, words, numbers,
# multi-character operators, and any other single character.
TOKEN = re.compile(
    r'"[^"\n]*"|#[^\n]*|\s+|[A-Za-z_]\w*|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|\*\*|<=|>=|==|\.T\b|.',
    re.DOTALL,
)
NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
WORD = re.compile(r"[A-Za-z_]\w*")

EXTREME_NUMBERS = (
    "0", "0.0", "-0", "-1", "-3", "1", "2", "0.5", "-0.5", "1e308", "1e309", "-1e308", "1e-320", "5e-324",
    "1e-9", str(10**30), str(-(10**30)), "nan", "inf", "-inf", "1e", "1.", ".5", "00", "007",
    "3" * 400, "1." + "9" * 400, "1e99999", "0x10", "2**1000", "10**30", "(0)", "1/0", "0/0",
)  # fmt: skip
KEYWORDS = STATEMENT_KEYWORDS + (
    "by", "then", "init", "constrain", "lr_scale", "learn", "mask", "normalize", "classes", "recurrent",
    "optimizer", "batch", "epochs", "seed", "phase", "terms", "fista", "ista", "encoder", "descent",
    "ascent", "fixed", "sgd", "adam", "lr", "zeros", "ones", "I", "eye", "samples", "normal", "uniform",
    "x", "y", "z", "W", "T", "l1", "sqerr", "group_l2", "tree_group", "inhibition", "xent", "relu",
    "col_norm", "row_norm", "norm", "nonneg", "symmetric", "zero_diag", "blocks", "windows",
    "neighborhoods", "subtrees", "grid", "torus", "chain", "tree", "edges", "file", "mnist", "patches",
    "synthetic", "tree_inhibition", "grid_inhibition", "size", "count", "dim", "atoms", "whiten",
)  # fmt: skip
PUNCTUATION = (
    "(", ")", "[", "]", "{", "}", ",", "=", ":", "+", "-", "*", "/", "@", "**", ".T", ">=", "<=", "==",
    '"', "#", ".", ";", "\n", "\t", "\r", "\f", "\x00", "é", "\u2028", '"nope.npz"', '""',
)  # fmt: skip

EDITS = ("delete", "duplicate", "swap", "insert", "replace", "number", "identifier")
random_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
random_numbers = st.one_of(st.integers(-(10**40), 10**40).map(str), st.floats(allow_nan=False).map(repr))


def tokenize(source: str) -> list[str]:
    tokens = TOKEN.findall(source)
    assert "".join(tokens) == source
    return tokens


@st.composite
def mutants(draw, source: str) -> bytes:
    """``source`` with one to three token edits, and one time in ten cut at a random byte.

    Positions and kinds of edit come from a ``random.Random`` that hypothesis seeds
    (so a derandomized run repeats): hypothesis' own choices inside a composite
    favour the first values, which would keep the edits in every file's header comment.
    """
    rnd = draw(st.randoms(use_true_random=True))
    tokens = tokenize(source)
    for _ in range(rnd.randint(1, 3)):
        tokens = _edit(tokens, rnd.choice(EDITS), rnd, draw)
    data = "".join(tokens).encode("utf-8")
    if rnd.random() < 0.1:  # at any byte, even inside a multi-byte character
        data = data[: rnd.randint(0, len(data))]
    return data


def _edit(tokens: list[str], kind: str, rnd, draw) -> list[str]:
    """One edit of ``kind``, at tokens other than whitespace and comments."""
    significant = [i for i, t in enumerate(tokens) if not t.isspace() and not t.startswith("#")]
    if not significant:
        return tokens + [_filler(rnd, draw)]
    tokens = list(tokens)
    i, j = rnd.choice(significant), rnd.choice(significant)
    numeric = [k for k in significant if NUMBER.fullmatch(tokens[k])] or [i]
    words = [k for k in significant if WORD.fullmatch(tokens[k])] or [i]
    if kind == "delete":
        del tokens[i]
    elif kind == "duplicate":
        tokens.insert(i, tokens[i])
    elif kind == "swap":
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif kind == "insert":  # glued to the next token or apart from it
        tokens[i:i] = [_filler(rnd, draw), rnd.choice(("", " "))]
    elif kind == "replace":
        tokens[i] = _filler(rnd, draw)
    elif kind == "number":
        tokens[rnd.choice(numeric)] = _number(rnd, draw)
    else:
        tokens[rnd.choice(words)] = _identifier(rnd, draw)
    return tokens


def _identifier(rnd, draw) -> str:
    return rnd.choice(KEYWORDS) if rnd.random() < 0.6 else draw(random_names)


def _number(rnd, draw) -> str:
    return rnd.choice(EXTREME_NUMBERS) if rnd.random() < 0.6 else draw(random_numbers)


def _filler(rnd, draw) -> str:
    kind = rnd.randrange(3)
    return _identifier(rnd, draw) if kind == 0 else _number(rnd, draw) if kind == 1 else rnd.choice(PUNCTUATION)


# ---------------------------------------------------------------- the oracle


def check_in_process(path: Path) -> tuple[int, str, str]:
    """``energydsl check PATH`` through the real entry point: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["check", str(path)])
    return code, out.getvalue(), err.getvalue()


def assert_clean_answer(path: Path, code: int, out: str, err: str) -> None:
    """Exit 0 with nothing on stderr but located warnings (a spec that compiles but is probably a
    slip), or exit 2 with one located message (+ source line and caret)."""
    assert "Traceback" not in out + err
    assert code in (0, 2), (code, err)
    if code == 0:
        lines = err.rstrip("\n").split("\n") if err else []
        for start in range(0, len(lines), 3):  # each warning: its message, the source line, the caret
            assert ": warning: " in lines[start], err
            assert_located(path, lines[start], lines[start + 1 : start + 3], err)
        assert out.startswith("model ")
        return
    first, *rest = err.rstrip("\n").split("\n")
    assert_located(path, first, rest, err)


def assert_located(path: Path, first: str, rest: list[str], err: str) -> None:
    """``first`` is ``path:line:col: message`` and ``rest`` the quoted line and its caret (or nothing)."""
    located = re.match(re.escape(str(path)) + r":(\d+):(\d+): \S", first)
    assert located, f"message without path:line:col: {first!r}"
    assert len(rest) in (0, 2), f"expected one message line (+ source and caret): {err!r}"
    line, column = int(located[1]), int(located[2])
    source_lines = _source_lines(path)
    assert 1 <= line <= max(1, len(source_lines)), f"line {line} is outside the file: {first!r}"
    if rest:
        text = source_lines[line - 1]
        assert rest[0] == "  " + text.expandtabs(1), f"the quoted line is not line {line}: {err!r}"
        assert 1 <= column <= len(text) + 1, f"column {column} is outside line {line}: {err!r}"
        assert rest[1].strip() and set(rest[1].strip()) <= {"^", "~"}, err


def _source_lines(path: Path) -> list[str]:
    """The file's lines as the parser sees them: without a byte-order mark, newlines translated,
    split at "\\n" only."""
    return path.read_text(encoding="utf-8-sig", errors="replace").split("\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where mutants are written, beside copies of the specs: a stacked spec names the spec
    of the layer below it by a path relative to its own directory."""
    directory = tmp_path_factory.mktemp("fuzz")
    for spec in SPECS:
        shutil.copy(spec, directory / spec.name)
    return directory


def check_bytes(workdir: Path, data: bytes, name: str = "mutant.energy") -> tuple[int, str]:
    path = workdir / name
    path.write_bytes(data)
    code, out, err = check_in_process(path)
    assert_clean_answer(path, code, out, err)
    return code, err


# ---------------------------------------------------------------- tests


def test_every_spec_tokenizes_and_checks(workdir):
    """The mutation bases are valid specs, so mutants start from a passing file."""
    assert len(SPECS) >= 10
    for spec in SPECS:
        source = spec.read_text(encoding="utf-8")
        assert "".join(tokenize(source)) == source
        code, err = check_bytes(workdir, source.encode("utf-8"), "base.energy")
        assert (code, err) == (0, ""), spec


# the stacked layer's mutants each compile the layer below: the slow pass takes that spec
@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.stem == "stacked_layer2" else s
                                  for s in SPECS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mutated_spec_never_crashes(spec: Path, workdir: Path):
    check_mutants(spec, workdir, MUTANTS_PER_SPEC)


def check_mutants(spec: Path, workdir: Path, count: int) -> None:
    """``count`` mutants of the spec, each answered cleanly (the same mutants every run)."""
    source = spec.read_text(encoding="utf-8")

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutant=mutants(source))
    def check_mutant(mutant: bytes) -> None:
        note(mutant.decode("utf-8", errors="backslashreplace"))
        check_bytes(workdir, mutant)

    check_mutant()


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(data=st.one_of(st.binary(max_size=4000), st.text(max_size=2000).map(str.encode)))
def test_arbitrary_bytes_never_crash(data: bytes, workdir: Path):
    check_bytes(workdir, data, "arbitrary.energy")


NASTY_INPUTS = {
    "empty": b"",
    "only_whitespace": b"   \n\n\t\n",
    "only_comment": b"# nothing here",
    "nul_bytes": b"model m\x00\ndata mnist\n",
    "only_nul": b"\x00" * 16,
    "latin1": "model café\n# é\n".encode("latin-1"),
    "latin1_late": b"model m\ndata mnist\nconst lam = 0.1 # \xe9t\xe9\n",
    "utf16_bom": "model m\ndata mnist\n".encode("utf-16"),
    "utf8_bom": "model m\n".encode("utf-8-sig"),
    "truncated_utf8": "model m # ü".encode()[:-1],
    "crlf": b"model m\r\ndata mnist\r\nconst a = ((1\r\n",
    "form_feed": b"model m\x0cdata mnist\x0c\nconst a = )\n",
    "line_separator": "model m\u2028data mnist\nconst a = )\n".encode(),
    "long_sum": b"const a = " + b"1 + " * 25_000 + b"1\n",  # a flat line, but a tree 25,000 deep
    "long_comment": b"# " + b"x" * 1_000_000 + b"\nconst a = )\n",
    "long_name": b"model " + b"m" * 1_000_000 + b"\n",
    "long_number": b"const a = " + b"9" * 1_000_000 + b"\n",
    "deep_parentheses": b"const a = " + b"(" * 10_000 + b"1" + b")" * 10_000 + b"\n",
    "deep_unclosed": b"const a = " + b"(" * 10_000 + b"\n",
    "deep_lists": b"graph T = tree(edges = " + b"[" * 10_000 + b"]" * 10_000 + b")\n",
    "deep_negation": b"const a = " + b"-" * 10_000 + b"1\n",
    "deep_power": b"const a = " + b"2 ** " * 5_000 + b"2\n",
    "deep_recurrent": b"encoder z = " + b"recurrent(1) { " * 2_000 + b"z" + b" }" * 2_000 + b"\n",
    "many_statements": b"const a = 1\n" * 5_000,
}


@pytest.mark.parametrize("name", NASTY_INPUTS)
def test_nasty_file_gives_located_answer(name: str, workdir: Path):
    code, _ = check_bytes(workdir, NASTY_INPUTS[name], f"{name}.energy")
    assert code == 2  # none of these is a complete spec


BAD_DATA_SOURCES = (
    "patches(size = -3)", "patches(size = 1e308)", "patches(count = 10**30)", "patches(whiten = nope)",
    "mnist(count = 0)", "synthetic(dim = 0)", "synthetic(k = -1, atoms = 1e300)", 'file("nope.npz")',
    'file("")', 'file(".")', "file(1)", 'file("x.npz", labels = 3)', "nope", "mnist(1, 2, 3)",
)  # fmt: skip


@pytest.mark.parametrize("source", BAD_DATA_SOURCES)
def test_bad_data_source_is_reported_on_its_line(source: str, workdir: Path):
    """check reads no training data, yet a data source it cannot use is a located error."""
    spec = (ROOT / "specs/sparse_coding.energy").read_text(encoding="utf-8")
    line = spec[: spec.index("\ndata ")].count("\n") + 2
    mutant = re.sub(r"^data .*$", f"data {source}", spec, count=1, flags=re.MULTILINE)
    code, err = check_bytes(workdir, mutant.encode(), "data.energy")
    assert code == 2
    assert err.startswith(f"{workdir / 'data.energy'}:{line}:6: "), err


def test_empty_file_is_reported_at_line_1_column_1(workdir: Path):
    path = workdir / "empty.energy"
    path.write_bytes(b"")
    code, _, err = check_in_process(path)
    assert code == 2
    assert err.startswith(f"{path}:1:1: ")


@pytest.mark.parametrize(
    "data, location",
    [
        (b"model m\n# caf\xe9\n", "2:6"),
        ("model m\n".encode("utf-16"), "1:1"),
        (b"\n\n  \xff", "3:3"),
        (b"\xef\xbb\xbfab\xff", "1:3"),
        (b"a\r\nb\rc\xe9", "3:2"),
        ("\u00e9\u00e9".encode() + b"\xff", "1:3"),
    ],
)
def test_non_utf8_file_points_at_the_first_bad_byte(data: bytes, location: str, workdir: Path):
    path = workdir / "latin.energy"
    path.write_bytes(data)
    code, _, err = check_in_process(path)
    assert code == 2
    assert err.startswith(f"{path}:{location}: spec is not UTF-8 text")


def test_byte_order_mark_is_not_part_of_the_spec(workdir: Path):
    spec = (ROOT / "specs/sparse_coding.energy").read_text(encoding="utf-8")
    assert check_bytes(workdir, spec.encode("utf-8-sig"), "bom.energy") == (0, "")
    code, err = check_bytes(workdir, "model m\nconst a = )\n".encode("utf-8-sig"), "bom.energy")
    assert (code, err.split(": ")[0]) == (2, f"{workdir / 'bom.energy'}:2:11")


def test_real_process_prints_no_traceback(workdir: Path):
    """The installed entry point, in a fresh interpreter, on the nastiest inputs."""
    names = ("deep_parentheses", "utf16_bom", "nul_bytes", "empty")
    paths = []
    for name in names:
        paths.append(workdir / f"process_{name}.energy")
        paths[-1].write_bytes(NASTY_INPUTS[name])
    result = subprocess.run([sys.executable, "-m", "energydsl.cli", "check", *map(str, paths)],
                            check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    firsts = [line for line in result.stderr.splitlines() if not line.startswith("  ")]
    assert len(firsts) == len(paths), result.stderr
    for path, first in zip(paths, firsts):
        assert re.match(re.escape(str(path)) + r":\d+:\d+: \S", first), first
