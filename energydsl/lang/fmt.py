"""``energydsl fmt``: rewrite specs in one canonical layout, keeping every comment.

The layout comes from the parse tree (the grammar in ``grammar.lark``, parsed with every
token kept), never from the spacing of the input, so that formatting twice changes
nothing.  Numbers, names and strings are kept exactly as written; lines are never wrapped.

* One statement per line, opened by its keyword.  ``energy`` and ``train`` stand alone on
  their line and their entries (terms; settings and phases) follow one per line, indented
  two spaces.
* Within an expression: one space around binary operators (``+ - * / @ ** = : <= == >=``)
  and after commas; none inside brackets, parentheses, before ``(``/``[`` of a call, a shape
  or an index, after a unary minus, before ``.T``, nor around the ``:`` of an index range
  (``z[0:8]``).  A recurrent body keeps one space inside its braces: ``{ relu(...) }``.
* Alignment, within a run of adjacent lines (a blank line ends the run, a comment line
  does not):

  - ``const``, ``let``, ``graph``, ``pool``, ``pools`` and ``encoder`` statements of one
    keyword align their ``=``: ``const lam   = 0.01`` above ``const units = 400``;
  - ``input``, ``target``, ``label`` and ``latent`` pad their keyword so that the names align;
  - energy terms align their ``:``;
  - ``param`` statements align the column where their options start, two spaces after the
    longest head (``param NAME[shape]``); ``phase`` lines of ``train`` likewise after
    ``phase NAME``.  Further options, and the options of ``input``, follow two spaces apart.

* A parameter's options may continue on the following lines (``init`` on one line,
  ``constrain`` on the next): a line break the author put before an option is kept, and
  the continuation lines are indented under the first option of the head line, or under
  the parameter's name when the head line has none.  Every other line break inside a
  statement is removed.
* Blank lines between statements, terms and settings are kept as written, at most one in a
  row; none at the start or end of the file, none before the first entry of a block or a
  continuation line.  The file ends with one newline.
* Comments stay where they were: a comment on its own line keeps its line, indented like
  the line that follows it (when that line is joined with others, the comment goes above
  the joined line); a comment after code stays at the end of the line that now holds that
  code, two spaces after it (several such comments of a joined line follow one another).

Only specs that parse are formatted: :func:`format_source` raises the parser's
:class:`~energydsl.errors.SpecError` for anything else.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree

from energydsl.atomic import atomic_write
from energydsl.errors import SpecError
from energydsl.lang.parser import _AlwaysAcceptNames, parse, parse_file

BLOCK_INDENT = "  "
COMMENT_GAP = "  "
OPTION_GAP = "  "
ASSIGNMENTS = {"const_stmt", "let_stmt", "graph_stmt", "pool_stmt", "pools_stmt", "encoder_stmt"}
VARIABLES = {"input_stmt", "target_stmt", "label_stmt", "latent_stmt"}
NO_SPACE_BEFORE = {")", "]", ",", ".T"}
NO_SPACE_AFTER = {"(", "["}


@lru_cache(maxsize=1)
def _concrete_parser() -> Lark:
    """The spec grammar, keeping keywords and punctuation in the tree (the parser drops them)."""
    return Lark.open_from_package(
        "energydsl.lang",
        "grammar.lark",
        parser="lalr",
        keep_all_tokens=True,
        maybe_placeholders=False,  # no None for an option left out
        postlex=_AlwaysAcceptNames(),
    )


def format_source(source: str, path: str = "<spec>") -> str:
    """The canonical text of a spec; raises :class:`SpecError` when it does not parse."""
    parse(source, path)  # the parser's own messages, and its checks beyond the grammar
    return _format_parsed(source)


def format_paths(paths: list[str], check: bool, diff: bool = False) -> int:
    """Format spec files in place (``check``: only report), print what changes; 0, or 1 if a check fails.

    ``diff`` prints a unified diff of each file that would change and writes nothing.

    Every file is read and formatted before any is written, so a spec that does not
    parse stops the command (its :class:`SpecError` propagates) with no file changed.
    """
    jobs = []
    for path in dict.fromkeys(paths):
        source = parse_file(path).source  # read and parse errors, as `check` reports them
        jobs.append((path, source, _format_parsed(source)))
    changed = [(path, formatted) for path, source, formatted in jobs if formatted != source]
    for path, formatted in changed:
        if diff:
            source = next(source for p, source, _ in jobs if p == path)
            sys.stdout.writelines(difflib.unified_diff(_lines(source), _lines(formatted), path, f"{path} (formatted)"))
        elif check:
            print(f"would reformat {path}")
        else:
            _replace_file(Path(path), formatted)
            print(f"reformatted {path}")
    unchanged = len(jobs) - len(changed)
    if check or diff:
        print(f"{_files(len(changed))} would be reformatted, {_files(unchanged)} would be left unchanged")
    else:
        print(f"{_files(len(changed))} reformatted, {_files(unchanged)} left unchanged")
    return 1 if check and changed else 0


def _lines(text: str) -> list[str]:
    """The lines of ``text`` for a diff, each ending in a newline (the last one too)."""
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)]


def _files(count: int) -> str:
    return f"{count} file" + ("" if count == 1 else "s")


def _replace_file(path: Path, text: str) -> None:
    """Replace the spec atomically (readers see the old spec or the new one); its permissions stay."""
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as error:
        raise SpecError(f"cannot write the formatted spec: {error.strerror}", path=str(path)) from None


# ---------------------------------------------------------------- lines


@dataclass
class _Line:
    """One output line: its columns before alignment and the source tokens it holds."""

    cells: list[str]  # text columns; a column is padded to its group's widest, then `gap` follows
    first: int  # index of its first and last token in the source's token list
    last: int
    indent: str = ""
    key: str | None = None  # adjacent lines with the same key align their columns
    gap: str = " "
    head: _Line | None = None  # for a continuation line: the first line of its statement
    keeps_blank: bool = True  # False where no blank line may precede it
    blank: bool = False  # a blank line precedes it
    leading: list[tuple[str, bool]] = field(default_factory=list)  # own-line comments before it, blank before
    moved: list[tuple[str, bool]] = field(default_factory=list)  # own-line comments from inside it
    trailing: list[str] = field(default_factory=list)
    text: str = ""


def _leaves(node, parent: str):
    """The tokens under ``node`` in source order, each with the rule that holds it.

    Iterative: a spec nested deeper than Python's recursion limit still parses.
    """
    stack = [(node, parent)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, Token):
            yield node, parent
        else:
            stack.extend((child, node.data) for child in reversed(node.children))


def _spaced(previous: tuple[Token, str], current: tuple[Token, str]) -> bool:
    """Whether one space separates two adjacent tokens."""
    (before, before_rule), (token, rule) = previous, current
    if token in NO_SPACE_BEFORE or before in NO_SPACE_AFTER:
        return False
    if before == "-" and before_rule == "neg":
        return False
    if (token == ":" and rule == "index") or (before == ":" and before_rule == "index"):
        return False
    # A bracket that opens a call, a shape or an index hugs the name before it; a list or a parenthesis does not.
    return not (token in NO_SPACE_AFTER and rule not in ("list", "atom"))


def _text(nodes: list, parent: str) -> str:
    pieces = []
    previous = None
    for node in nodes:
        for current in _leaves(node, parent):
            if previous is not None and _spaced(previous, current):
                pieces.append(" ")
            pieces.append(current[0])
            previous = current
    return "".join(pieces)


class _LineBuilder:
    """Turns each statement of the concrete tree into output lines."""

    def __init__(self, tokens: list[Token]):
        self.index = {token.start_pos: i for i, token in enumerate(tokens)}

    def line(self, cells: list[str], nodes: list, parent: str, **layout) -> _Line:
        tokens = [token for node in nodes for token, _ in _leaves(node, parent)]
        return _Line(cells, self.index[tokens[0].start_pos], self.index[tokens[-1].start_pos], **layout)

    def statement(self, node: Tree) -> list[_Line]:
        kind, children = node.data, node.children
        if kind in ASSIGNMENTS:
            equals = children.index("=")
            cells = [_text(children[:equals], kind), _text(children[equals:], kind)]
            return [self.line(cells, children, kind, key=kind)]
        if kind in VARIABLES:
            body = [c for c in children[1:] if not isinstance(c, Tree) or c.data != "input_option"]
            options = [_text([c], kind) for c in children[1 + len(body) :]]
            cells = [children[0], OPTION_GAP.join([_text(body, kind), *options])]
            return [self.line(cells, children, kind, key="variables")]
        if kind == "param_stmt":
            return self.param(children)
        if kind == "energy_block":
            return self.block(children, [self.term(term) for term in children[1:]])
        if kind == "train_block":
            return self.block(children, [self.setting(setting) for setting in children[1:]])
        return [self.line([_text(children, kind)], children, kind)]

    def param(self, children: list) -> list[_Line]:
        """The head line, then a line for each run of options the author began on a new line."""
        head, options = children[:3], children[3:]
        runs: list[list] = [[]]
        previous = [token for token, _ in _leaves(children[2], "param_stmt")][-1]
        for option in options:
            tokens = [token for token, _ in _leaves(option, "param_stmt")]
            if tokens[0].line > previous.end_line:
                runs.append([])
            runs[-1].append(option)
            previous = tokens[-1]
        first_cells = [_text(head, "param_stmt")] + ([self._options(runs[0])] if runs[0] else [])
        first = self.line(first_cells, head + runs[0], "param_stmt", key="params", gap=OPTION_GAP)
        rest = [self.line([self._options(run)], run, "param_stmt", head=first, keeps_blank=False) for run in runs[1:]]
        return [first, *rest]

    def term(self, term: Tree) -> _Line:
        name, *value = term.children
        return self.line([name, _text(value, "term")], term.children, "term", indent=BLOCK_INDENT, key="terms")

    def setting(self, setting: Tree) -> _Line:
        if setting.data != "phase":
            return self.line([_text([setting], "train_block")], [setting], "train_block", indent=BLOCK_INDENT)
        head, settings = setting.children[:2], setting.children[2:]
        cells = [_text(head, "phase")] + ([self._options(settings)] if settings else [])
        return self.line(cells, setting.children, "phase", indent=BLOCK_INDENT, key="phases", gap=OPTION_GAP)

    def block(self, children: list, entries: list[_Line]) -> list[_Line]:
        """A block keyword alone on its line, then its entries; no blank line right after it."""
        if entries:
            entries[0].keeps_blank = False
        return [self.line([children[0]], children[:1], ""), *entries]

    @staticmethod
    def _options(options: list) -> str:
        return OPTION_GAP.join(_text([option], "") for option in options)


# ---------------------------------------------------------------- comments


@dataclass
class _Gap:
    """What lies between two tokens: comments, and whether a blank line precedes the next token."""

    trailing: list[str]  # comments on the previous token's line
    own_line: list[tuple[str, bool]]  # comments on lines of their own, each with "a blank line before"
    blank: bool


def _read_gap(text: str, after_token: bool) -> _Gap:
    """Split whitespace-and-comments text (all that lies between tokens of a spec that parsed)."""
    gap = _Gap([], [], False)
    newlines = 0
    for number, segment in enumerate(text.split("\n")):
        newlines += number > 0
        comment = segment.strip()
        if not comment:
            continue
        if number == 0 and after_token:
            gap.trailing.append(comment)
        else:
            gap.own_line.append((comment, newlines >= 2))
        newlines = 0
    gap.blank = newlines >= 2
    return gap


def _gaps(source: str, tokens: list[Token]) -> list[_Gap]:
    """The gap before each token, and one more after the last token."""
    bounds = [0] + [end for token in tokens for end in (token.start_pos, token.end_pos)] + [len(source)]
    return [_read_gap(source[bounds[2 * i] : bounds[2 * i + 1]], i > 0) for i in range(len(tokens) + 1)]


def _attach_comments(lines: list[_Line], gaps: list[_Gap]) -> None:
    for line in lines:
        line.leading = gaps[line.first].own_line
        line.blank = gaps[line.first].blank and line.keeps_blank
        for index in range(line.first, line.last + 1):
            line.trailing += gaps[index + 1].trailing
            if index > line.first:
                line.moved += gaps[index].own_line


# ---------------------------------------------------------------- layout


def _separated(line: _Line) -> bool:
    """Whether a blank line will stand between this line and the previous one."""
    return line.keeps_blank and (line.blank or any(blank for _, blank in line.leading + line.moved))


def _alignment_groups(lines: list[_Line]):
    group: list[_Line] = []
    for line in lines:
        if line.head is not None:  # continuation lines neither align nor end a group
            yield [line]
            continue
        if group and (line.key is None or line.key != group[-1].key or _separated(line)):
            yield group
            group = []
        group.append(line)
    if group:
        yield group


def _align(group: list[_Line]) -> None:
    """Pad every column but the last to the widest of the group (among lines that go on)."""
    columns = max(len(line.cells) for line in group)
    widths = [max((len(line.cells[c]) for line in group if len(line.cells) > c + 1), default=0) for c in range(columns)]
    for line in group:
        padded = [cell.ljust(widths[c]) + line.gap for c, cell in enumerate(line.cells[:-1])]
        line.text = "".join(padded) + line.cells[-1]


def _indent_continuations(lines: list[_Line]) -> None:
    """Continuation lines go under the head line's first option, or under the parameter's name."""
    for line in lines:
        if line.head is not None:
            head = line.head
            column = len(head.text) - len(head.cells[-1]) if len(head.cells) > 1 else len("param ")
            line.indent = " " * column


def _render(lines: list[_Line], end: _Gap) -> str:
    out: list[str] = []

    def blank_line() -> None:
        if out and out[-1]:
            out.append("")

    def comments(items: list[tuple[str, bool]], indent: str, keep_blank: bool = True) -> None:
        for text, blank in items:
            if blank and keep_blank:
                blank_line()
            out.append(indent + text)

    for line in lines:
        comments(line.leading, line.indent, line.keeps_blank)
        if line.blank:
            blank_line()
        comments(line.moved, line.indent, line.keeps_blank)
        out.append(line.indent + line.text + "".join(COMMENT_GAP + text for text in line.trailing))
    comments(end.own_line, "")
    return "".join(text + "\n" for text in out)


def _format_parsed(source: str) -> str:
    """The canonical text of a spec known to parse."""
    tree = _concrete_parser().parse(source)
    tokens = [token for token, _ in _leaves(tree, "start")]
    builder = _LineBuilder(tokens)
    lines = [line for statement in tree.children for line in builder.statement(statement)]
    gaps = _gaps(source, tokens)
    _attach_comments(lines, gaps)
    for group in _alignment_groups(lines):
        _align(group)
    _indent_continuations(lines)
    return _render(lines, gaps[-1])
