"""The parsed spec: frozen pydantic models, each node with the span it came from.

This is the immutable IR between the parser and the compiler.  It says what the
user wrote, not whether it makes sense: names, shapes and roles are checked by
:mod:`energydsl.compiler`.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

from energydsl.errors import Span


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    span: Span


# ---------------------------------------------------------------- expressions


class Number(Node):
    kind: Literal["number"] = "number"
    value: float
    text: str


class String(Node):
    kind: Literal["string"] = "string"
    value: str


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class KeywordArg(Node):
    name: str
    value: Expr


class Call(Node):
    kind: Literal["call"] = "call"
    func: str
    func_span: Span
    args: tuple[Expr, ...] = ()
    kwargs: tuple[KeywordArg, ...] = ()


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "/", "@", "**"]
    left: Expr
    right: Expr


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr


class Transpose(Node):
    kind: Literal["transpose"] = "transpose"
    operand: Expr


class ListExpr(Node):
    kind: Literal["list"] = "list"
    items: tuple[Expr, ...]


class Recurrent(Node):
    """``recurrent(T) { body }``: the body applied T times, from a zero state."""

    kind: Literal["recurrent"] = "recurrent"
    steps: Expr
    body: Expr


Expr = Union[Number, String, Name, Call, BinOp, Neg, Transpose, ListExpr, Recurrent]


# ---------------------------------------------------------------- declarations


class Ident(Node):
    """A name as written at its declaration."""

    name: str


class SourceDecl(Node):
    """``data mnist`` / ``data patches(size = 8)``: a call, without its keyword."""

    call: Call


class ConstDecl(Node):
    name: Ident
    value: Expr


class InputDecl(Node):
    name: Ident
    shape: tuple[Expr, ...] | None  # None: taken from the data
    normalize: Ident | None = None


class TargetDecl(Node):
    """``target y[e]``: a transcoder's target, the observed vector the energy reconstructs."""

    name: Ident
    shape: tuple[Expr, ...] | None  # None: taken from the data


class LabelDecl(Node):
    name: Ident
    classes: Expr | None  # None: taken from the data


class LatentDecl(Node):
    name: Ident
    shape: tuple[Expr, ...]
    lower_bound: Expr | None = None  # only `>= 0` is meaningful


class ConstraintDecl(Node):
    kind: str  # col_norm, row_norm, norm, nonneg, symmetric, zero_diag, mask
    kind_span: Span
    compare: Literal["<=", "=="] | None = None
    value: Expr | None = None


class LearnDecl(Node):
    mode: Ident  # descent | ascent | fixed
    kwargs: tuple[KeywordArg, ...] = ()
    args: tuple[Expr, ...] = ()


class ParamDecl(Node):
    name: Ident
    shape: tuple[Expr, ...]
    init: Expr | None = None
    constraints: tuple[ConstraintDecl, ...] = ()
    lr_scale: Expr | None = None
    learn: LearnDecl | None = None


class GraphDecl(Node):
    """``graph M = torus(16, 16)``: a structure over the latent units."""

    name: Ident
    value: Expr


class LetDecl(Node):
    name: Ident
    value: Expr


class IndexRange(Node):
    start: Expr
    stop: Expr | None  # None: a single index


class PoolDecl(Node):
    """``pool strokes = z[0:32, 40]``: one named pool of latent units."""

    name: Ident
    variable: Ident
    indices: tuple[IndexRange, ...]


class PoolsDecl(Node):
    """``pools P = blocks(z, 4)`` or ``pools P = [strokes, loops]``: a family."""

    name: Ident
    value: Expr


class EncoderDecl(Node):
    target: Ident
    value: Expr


class TermDecl(Node):
    name: Ident
    value: Expr


class MethodDecl(Node):
    name: Ident
    args: tuple[Expr, ...] = ()
    kwargs: tuple[KeywordArg, ...] = ()


class InferDecl(Node):
    target: Ident
    methods: tuple[MethodDecl, ...]
    terms: tuple[Ident, ...] | None = None  # the terms inference minimises (default: all)


class PhaseDecl(Node):
    name: Ident
    epochs: Expr | None = None
    terms: tuple[Ident, ...] | None = None
    schedule: Ident | None = None
    lr_scale: Expr | None = None  # every learning rate times this in the phase


class RampDecl(Node):
    """``ramp lam from 0 over 1000 steps [cosine]``: a constant that moves during training, from
    ``start`` to its declared value over ``length`` steps or epochs, then stays there."""

    name: Ident  # the constant
    start: Expr
    length: Expr
    unit: Ident  # steps | epochs (checked by the compiler)
    shape: Ident | None = None  # linear (the default) | cosine


class TrainDecl(Node):
    optimizer: Call | None = None
    batch: Expr | None = None
    epochs: Expr | None = None
    seed: Expr | None = None
    dead_after: Expr | None = None  # training samples without firing after which a unit is dead
    dead_alarm: Expr | None = None  # the share of dead units above which the run warns
    resample_every: Expr | None = None  # steps between resamplings of the dead units
    ramps: tuple[RampDecl, ...] = ()
    phases: tuple[PhaseDecl, ...] = ()


class Spec(BaseModel):
    """One .energy file, as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    source: str
    name: Ident | None = None
    data: SourceDecl | None = None
    consts: tuple[ConstDecl, ...] = ()
    inputs: tuple[InputDecl, ...] = ()
    targets: tuple[TargetDecl, ...] = ()
    labels: tuple[LabelDecl, ...] = ()
    latents: tuple[LatentDecl, ...] = ()
    params: tuple[ParamDecl, ...] = ()
    graphs: tuple[GraphDecl, ...] = ()
    lets: tuple[LetDecl, ...] = ()
    pools: tuple[PoolDecl | PoolsDecl, ...] = ()
    encoders: tuple[EncoderDecl, ...] = ()
    energy: tuple[TermDecl, ...] = ()
    energy_span: Span | None = None
    infer: InferDecl | None = None
    train: TrainDecl | None = None


for _model in (KeywordArg, Call, BinOp, Neg, Transpose, ListExpr, Recurrent):
    _model.model_rebuild()
