"""Source text → :class:`~energydsl.lang.spec.Spec`.

Lark parses with the LALR grammar in ``grammar.lark``; a transformer only reshapes
the tree into spec nodes carrying spans (it never raises: lark would wrap the error
in a ``VisitError``).  Syntax errors become :class:`SpecError` with a message a
person can act on, and statements that may appear once are checked here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from energydsl.errors import WHOLE_SPEC, Span, SpecError, did_you_mean
from energydsl.lang import spec as S

STATEMENT_KEYWORDS = (
    "model", "data", "const", "input", "target", "label", "latent", "param", "graph", "let",
    "pool", "pools", "encoder", "energy", "infer", "train",
)  # fmt: skip
OPERATORS = {"+", "-", "*", "/", "@", "**", ".T"}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark.open_from_package(
        "energydsl.lang",
        "grammar.lark",
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_AlwaysAcceptNames(),
    )


class _AlwaysAcceptNames:
    """Let the contextual lexer see names in every state.

    Without it, where only keywords are expected, ``paramm`` would lex as the
    keyword ``param`` followed by the name ``m``.
    """

    always_accept = ("NAME",)

    def process(self, stream):
        return stream


def parse(source: str, path: str = "<spec>") -> S.Spec:
    """Parse spec text; raise :class:`SpecError` with a location on any slip."""
    try:
        tree = _lark().parse(source)
        statements = _ToSpec().transform(tree)
        return _assemble(statements, source, path)
    except UnexpectedInput as error:
        raise _syntax_error(error, source, path) from None
    except SpecError as error:
        raise error.located(path, source) from None
    except (RecursionError, VisitError) as error:
        # The transformer recurses; lark wraps a RecursionError met inside one of its methods.
        if isinstance(error, VisitError) and not isinstance(error.orig_exc, RecursionError):
            raise  # a bug in the transformer, not a mistake in the spec
        raise SpecError("the spec is nested too deeply to read", WHOLE_SPEC, path=path, source=source) from None


def parse_file(path: str | Path) -> S.Spec:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8-sig")  # without the byte-order mark some editors write
    except FileNotFoundError:
        raise SpecError("spec file not found", path=str(path)) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", path=str(path)) from None
    except UnicodeDecodeError as error:
        span = _byte_span(error.object, error.start)  # read_text decodes the whole file at once
        raise SpecError(f"spec is not UTF-8 text (byte {error.start})", span, path=str(path)) from None
    except OSError as error:
        raise SpecError(f"cannot read spec: {error.strerror}", path=str(path)) from None
    return parse(source, str(path))


def _byte_span(data: bytes, offset: int) -> Span:
    """Where byte ``offset`` stands, in lines and characters as ``read_text`` counts them."""
    before = data[:offset].decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    line_start = before.rfind("\n") + 1
    return _point(before.count("\n") + 1, len(before) - line_start + 1)


def parse_source_call(text: str, what: str = "--data") -> S.Call:
    """Parse a data source given on the command line, e.g. ``patches(size=8)``."""
    spec = parse(f"data {text}", what)
    assert spec.data is not None
    return spec.data.call


# ---------------------------------------------------------------- tree → nodes


def _span(meta) -> Span:
    return Span(line=meta.line, column=meta.column, end_line=meta.end_line, end_column=meta.end_column)


def _token_span(token: Token) -> Span:
    return Span(line=token.line, column=token.column, end_line=token.end_line, end_column=token.end_column)


def _ident(token: Token) -> S.Ident:
    return S.Ident(span=_token_span(token), name=str(token))


def _split_args(args) -> tuple[tuple, tuple]:
    items = args or ()
    positional = tuple(a for a in items if not isinstance(a, S.KeywordArg))
    keywords = tuple(a for a in items if isinstance(a, S.KeywordArg))
    return positional, keywords


@v_args(meta=True)
class _ToSpec(Transformer):
    """Reshape the lark tree into spec nodes.  Never raises."""

    # expressions
    def number(self, meta, children):
        (token,) = children
        return S.Number(span=_token_span(token), value=float(token), text=str(token))

    def string(self, meta, children):
        (token,) = children
        return S.String(span=_token_span(token), value=str(token)[1:-1])

    def name(self, meta, children):
        (token,) = children
        return S.Name(span=_token_span(token), id=str(token))

    def args(self, meta, children):
        return tuple(children)

    def kwarg(self, meta, children):
        name, value = children
        return S.KeywordArg(span=_span(meta), name=str(name), value=value)

    def call(self, meta, children):
        func, args = children
        positional, keywords = _split_args(args)
        return S.Call(span=_span(meta), func=str(func), func_span=_token_span(func), args=positional, kwargs=keywords)

    def _binop(op):
        def build(self, meta, children):
            left, right = children
            return S.BinOp(span=_span(meta), op=op, left=left, right=right)

        return build

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, matmul, pow = _binop("/"), _binop("@"), _binop("**")

    def neg(self, meta, children):
        return S.Neg(span=_span(meta), operand=children[0])

    def transpose(self, meta, children):
        return S.Transpose(span=_span(meta), operand=children[0])

    def list(self, meta, children):
        return S.ListExpr(span=_span(meta), items=tuple(c for c in children if c is not None))

    def recurrent(self, meta, children):
        steps, body = children
        return S.Recurrent(span=_span(meta), steps=steps, body=body)

    # statements: (field, node) pairs, assembled by _assemble
    def start(self, meta, children):
        return children

    def model_stmt(self, meta, children):
        return "name", _ident(children[0])

    def source(self, meta, children):
        func, args = children
        positional, keywords = _split_args(args)
        return S.Call(span=_span(meta), func=str(func), func_span=_token_span(func), args=positional, kwargs=keywords)

    def data_stmt(self, meta, children):
        return "data", S.SourceDecl(span=_span(meta), call=children[0])

    def const_stmt(self, meta, children):
        name, value = children
        return "consts", S.ConstDecl(span=_span(meta), name=_ident(name), value=value)

    def shape(self, meta, children):
        return tuple(children)

    def input_option(self, meta, children):
        return "normalize", _ident(children[0])

    def input_stmt(self, meta, children):
        name, shape, *options = children
        return "inputs", (_ident(name), _span(meta), shape, options)

    def target_stmt(self, meta, children):
        name, shape = children
        return "targets", S.TargetDecl(span=_span(meta), name=_ident(name), shape=shape)

    def label_stmt(self, meta, children):
        name, classes = children
        return "labels", S.LabelDecl(span=_span(meta), name=_ident(name), classes=classes)

    def latent_stmt(self, meta, children):
        name, shape, lower_bound = children
        return "latents", S.LatentDecl(span=_span(meta), name=_ident(name), shape=shape, lower_bound=lower_bound)

    def init_option(self, meta, children):
        return "init", children[0]

    def constrain_option(self, meta, children):
        return "constraints", tuple(children)

    def lr_scale_option(self, meta, children):
        return "lr_scale", children[0]

    def learn_option(self, meta, children):
        mode, args = children
        positional, keywords = _split_args(args)
        return "learn", S.LearnDecl(span=_span(meta), mode=_ident(mode), args=positional, kwargs=keywords)

    def constraint(self, meta, children):
        kind, compare, value = children
        return S.ConstraintDecl(
            span=_span(meta),
            kind=str(kind),
            kind_span=_token_span(kind),
            compare=str(compare) if compare is not None else None,
            value=value,
        )

    def mask_constraint(self, meta, children):
        span = _span(meta)
        kind_span = Span(line=span.line, column=span.column, end_line=span.line, end_column=span.column + 4)
        return S.ConstraintDecl(span=span, kind="mask", kind_span=kind_span, value=children[0])

    def param_stmt(self, meta, children):
        name, shape, *options = children
        return "params", (_ident(name), _span(meta), shape, options)

    def graph_stmt(self, meta, children):
        name, value = children
        return "graphs", S.GraphDecl(span=_span(meta), name=_ident(name), value=value)

    def let_stmt(self, meta, children):
        name, value = children
        return "lets", S.LetDecl(span=_span(meta), name=_ident(name), value=value)

    def index(self, meta, children):
        start, stop = children
        return S.IndexRange(span=_span(meta), start=start, stop=stop)

    def pool_stmt(self, meta, children):
        name, variable, *indices = children
        decl = S.PoolDecl(span=_span(meta), name=_ident(name), variable=_ident(variable), indices=tuple(indices))
        return "pools", decl

    def pools_stmt(self, meta, children):
        name, value = children
        return "pools", S.PoolsDecl(span=_span(meta), name=_ident(name), value=value)

    def encoder_stmt(self, meta, children):
        target, value = children
        return "encoders", S.EncoderDecl(span=_span(meta), target=_ident(target), value=value)

    def term(self, meta, children):
        name, value = children
        return S.TermDecl(span=_span(meta), name=_ident(name), value=value)

    def energy_block(self, meta, children):
        return "energy", (tuple(children), _span(meta))

    def method(self, meta, children):
        name, args = children
        positional, keywords = _split_args(args)
        return S.MethodDecl(span=_span(meta), name=_ident(name), args=positional, kwargs=keywords)

    def encoder_method(self, meta, children):
        (token,) = children
        return S.MethodDecl(span=_token_span(token), name=_ident(token))

    def infer_terms(self, meta, children):
        return tuple(_ident(t) for t in children)

    def infer_stmt(self, meta, children):
        target, *methods, terms = children
        return "infer", S.InferDecl(span=_span(meta), target=_ident(target), methods=tuple(methods), terms=terms)

    def optimizer_setting(self, meta, children):
        func, args = children
        positional, keywords = _split_args(args)
        call = S.Call(span=_span(meta), func=str(func), func_span=_token_span(func), args=positional, kwargs=keywords)
        return "optimizer", call

    def batch_setting(self, meta, children):
        return "batch", children[0]

    def epochs_setting(self, meta, children):
        return "epochs", children[0]

    def seed_setting(self, meta, children):
        return "seed", children[0]

    def dead_after_setting(self, meta, children):
        return "dead_after", children[0]

    def dead_alarm_setting(self, meta, children):
        return "dead_alarm", children[0]

    def resample_setting(self, meta, children):
        return "resample_every", children[0]
    def ramp(self, meta, children):
        name, start, length, unit, shape = children
        return "ramp", S.RampDecl(span=_span(meta), name=_ident(name), start=start, length=length, unit=unit,
                                  shape=_ident(shape) if shape is not None else None)  # fmt: skip

    def ramp_unit(self, meta, children):
        return _ident(children[0])

    def schedule_setting(self, meta, children):
        return "schedule", _ident(children[0])

    def lr_scale_setting(self, meta, children):
        return "lr_scale", children[0]

    def terms_setting(self, meta, children):
        return "terms", tuple(_ident(t) for t in children)

    def phase(self, meta, children):
        name, *settings = children
        return "phase", (_ident(name), _span(meta), settings)

    def train_block(self, meta, children):
        return "train", (_span(meta), children)


# ---------------------------------------------------------------- assembly

_REPEATABLE = {"consts", "inputs", "targets", "labels", "latents", "params", "graphs", "lets", "pools", "encoders"}


def _setting_span(value) -> Span:
    return value[0].span if isinstance(value, tuple) else value.span


def _once(fields: dict, key: str, value, span: Span, what: str) -> None:
    if key in fields:
        raise SpecError(f"{what} is given twice", span, hint="remove one of them")
    fields[key] = value


def _build_phase(name: S.Ident, span: Span, settings) -> S.PhaseDecl:
    fields: dict = {}
    for key, value in settings:
        _once(fields, key, value, _setting_span(value), f"'{key}' of phase '{name.name}'")
    return S.PhaseDecl(span=span, name=name, **fields)


def _build_param(name: S.Ident, span: Span, shape, options) -> S.ParamDecl:
    fields: dict = {}
    for key, value in options:
        if key == "constraints":
            fields[key] = fields.get(key, ()) + value
        else:
            _once(fields, key, value, _setting_span(value), f"'{key}' of parameter '{name.name}'")
    return S.ParamDecl(span=span, name=name, shape=shape, **fields)


def _build_input(name: S.Ident, span: Span, shape, options) -> S.InputDecl:
    fields: dict = {}
    for key, value in options:
        _once(fields, key, value, value.span, f"'{key}' of input '{name.name}'")
    return S.InputDecl(span=span, name=name, shape=shape, **fields)


# training settings whose field is named otherwise than the words that write them
_WRITTEN = {"dead_after": "dead after", "dead_alarm": "warn dead above", "resample_every": "resample dead every"}


def _build_train(span: Span, settings) -> S.TrainDecl:
    fields: dict = {"phases": ()}
    for key, value in settings:
        if key == "phase":
            fields["phases"] += (_build_phase(*value),)
        elif key == "ramp":
            fields["ramps"] = fields.get("ramps", ()) + (value,)
        else:
            _once(fields, key, value, _setting_span(value), f"training setting '{_WRITTEN.get(key, key)}'")
    return S.TrainDecl(span=span, **fields)


def _assemble(statements, source: str, path: str) -> S.Spec:
    fields: dict = {key: () for key in _REPEATABLE}
    for key, node in statements:
        if key == "params":
            fields[key] += (_build_param(*node),)
        elif key == "inputs":
            fields[key] += (_build_input(*node),)
        elif key in _REPEATABLE:
            fields[key] += (node,)
        elif key == "energy":
            terms, span = node
            _once(fields, "energy", terms, span, "the 'energy' block")
            fields["energy_span"] = span
        elif key == "train":
            _once(fields, "train", _build_train(*node), node[0], "the 'train' block")
        else:
            _once(fields, key, node, node.span, f"the '{key if key != 'name' else 'model'}' statement")
    return S.Spec(path=path, source=source, **fields)


# ---------------------------------------------------------------- syntax errors


def _describe_terminal(name: str) -> str:
    special = {"an expression": "an expression", "COMPARE": "'<=' or '=='", "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "$END": "the end of the file"}
    if name in special:
        return special[name]
    try:
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'"


# Keywords that continue a block, by the kind of word the user meant to write.
BLOCK_WORDS = {
    "parameter option": ("init", "constrain", "lr_scale", "learn"),
    "training setting": ("optimizer", "batch", "epochs", "seed", "dead", "warn", "resample", "ramp", "phase"),
    "phase setting": ("epochs", "terms", "schedule", "lr_scale"),
    "input option": ("normalize",),
}


def _describe_expected(expected: set[str]) -> str:
    expected = {name for name in expected if not name.startswith("__")}  # lark's internal rules
    if {"NAME", "NUMBER"} <= expected:
        expected = (expected - {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "MINUS", "RECURRENT"}) | {"an expression"}
    if expected == {"NAME", "ENCODER"}:
        return "an inference method (fista, ista or encoder)"
    literals = {name: _describe_terminal(name) for name in expected}
    statements = {n for n, d in literals.items() if d.strip("'") in STATEMENT_KEYWORDS} if "MODEL" in expected else set()
    operators = {n for n, d in literals.items() if d.strip("'") in OPERATORS}
    words = sorted(d for n, d in literals.items() if n not in statements | operators)
    if statements:
        words.append("a statement")
    if not words:
        words = sorted(literals[n] for n in operators)
    if len(words) > 6:
        return "one of " + ", ".join(words[:6]) + ", ..."
    return words[0] if len(words) == 1 else "one of " + ", ".join(words)


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "NAME":
        return f"name '{token}'"
    if token.type == "NUMBER":
        return f"number {token}"
    return f"'{token}'"


def _accepted_terminals(error: UnexpectedToken) -> set[str]:
    """What the parser could take here (the lexer's own list also has NAME always)."""
    if error.interactive_parser is None:
        return set(error.expected)
    return {name for name in error.interactive_parser.choices() if name.isupper() or name.startswith("__")}


def _previous_token(source: str, pos: int) -> Token | None:
    """The last token that ends before ``pos`` (for 'expected X after Y')."""
    previous = None
    try:
        for token in _lark().lex(source):
            if token.start_pos >= pos:
                break
            previous = token
    except UnexpectedInput:
        pass
    return previous


def _point(line: int, column: int, width: int = 1) -> Span:
    return Span(line=line, column=column, end_line=line, end_column=column + width)


def _unknown_word(token: Token, accepted: set[str], source: str, path: str) -> SpecError:
    """A name where a keyword was expected: a misspelt statement, option or setting."""
    keywords = {_describe_terminal(n).strip("'") for n in accepted}
    kind, words = "statement", list(STATEMENT_KEYWORDS)
    for block_kind, block_words in BLOCK_WORDS.items():
        if set(block_words) <= keywords:
            kind, words = block_kind, list(block_words)
            break
    hint = did_you_mean(str(token), words + list(STATEMENT_KEYWORDS))
    if hint is not None and hint.split("'")[1] in STATEMENT_KEYWORDS:
        kind = "statement"  # a misspelt statement right after a block
    if hint is None and kind == "parameter option" and str(token) in ("lr", "rate", "learning_rate"):
        hint = "a parameter's learning rate is set by 'learn descent(lr = ...)' or 'lr_scale'"
    if hint is None:
        hint = "expected " + ", ".join(f"'{w}'" for w in words) + (" or a statement" if kind != "statement" else "")
    return SpecError(f"unknown {kind} '{token}'", _token_span(token), path=path, source=source, hint=hint)


def _cut_short_before_target(token: Token, source: str, path: str) -> SpecError | None:
    """The error of a statement cut short right before a line that opens with 'target', or None.

    'target' reads as a name wherever an expression may go (l0's option ``target = L``), so after a
    dangling ``let a = b +`` the error would fall on the name after it; the source cut before that
    line gives the parser's own message about the statement that stopped short.
    """
    previous = _previous_token(source, token.start_pos)
    if previous is None or str(previous) != "target":
        return None
    cut = source[: previous.start_pos]
    if cut.rstrip(" \t")[-1:] not in ("\n", ""):  # 'target' inside a line: a name, as the user meant
        return None
    try:
        _lark().parse(cut)
    except UnexpectedInput as error:
        return _syntax_error(error, cut, path)
    return None


def _syntax_error(error: UnexpectedInput, source: str, path: str) -> SpecError:
    if isinstance(error, UnexpectedCharacters):
        char = source[error.pos_in_stream]
        message = "unterminated string" if char == '"' else f"unexpected character {char!r}"
        return SpecError(message, _point(error.line, error.column), path=path, source=source)
    assert isinstance(error, UnexpectedToken)
    token = error.token
    cut_short = _cut_short_before_target(token, source, path) if token.type != "$END" else None
    if cut_short is not None:
        return cut_short
    accepted = _accepted_terminals(error)
    expected = _describe_expected(accepted)
    if token.type == "NAME" and "MODEL" in accepted:
        return _unknown_word(token, accepted, source, path)
    end = token.type == "$END"
    start = len(source) if end else token.start_pos
    previous = _previous_token(source, start)
    if previous is not None and (end or previous.end_line < token.line):
        # The statement stopped short: point just after its last token.
        span = _point(previous.end_line, previous.end_column)
        if previous.type == "ENERGY":
            expected = "a term such as 'recon : 0.5 * sqerr(x, W @ z)'"
        return SpecError(f"expected {expected} after '{previous}'", span, path=path, source=source)
    span = _token_span(token) if not end else _point(1, 1)
    return SpecError(f"unexpected {_describe_token(token)}; expected {expected}", span, path=path, source=source)
