"""What the compiler knows each parameter is for: decoder, encoder, classifier, pictured matrices.

Analysis, pictures, export and the memory estimate ask the :class:`Roles` of a program
instead of reading the syntax tree again.
"""

from __future__ import annotations

from dataclasses import dataclass

from energydsl.expr.compiler import ExprCompiler
from energydsl.lang import spec as S
from energydsl.terms import BoundTerm


@dataclass(frozen=True)
class Roles:
    decoder: str | None = None  # W of the reconstruction sqerr(x, W @ z + b), or a term's decoder argument
    kernel_decoder: str | None = None  # K of a convolutional reconstruction sqerr(x, conv_t(K, z)) (or local_t)
    encoder: str | None = None  # E of E @ x or E @ (x - b) in the encoder or a let it reads, mapping inputs to units
    encoder_bias: str | None = None  # b[units] of E @ x + b (or - b) in the encoder, through its lets
    classifier: str | None = None  # C of the classifier's logits C @ f(z)
    recurrent_steps: int = 0  # T of encoder z = recurrent(T) { ... }; 0 for a feed-forward or no encoder
    pictured: tuple[tuple[str, str], ...] = ()  # (parameter, term) a term asks to be drawn as a matrix


def find_roles(spec: S.Spec, terms: list[BoundTerm], reconstruction: BoundTerm | None, classifier: BoundTerm | None,
               shapes: dict[str, tuple[int, ...]], input_name: str, input_size: int, latent_name: str, units: int,
               consts: ExprCompiler) -> Roles:
    """The roles, from the checked spec; ``shapes`` are the parameters' shapes.

    Expressions are read through the lets they name (``let pre = E @ (x - b_dec) + b_enc`` read
    by ``encoder z = topk(relu(pre), k)``)."""
    declared = {decl.name.name: decl.value for decl in spec.energy}
    lets = {decl.name.name: decl.value for decl in spec.lets}
    recon = declared[reconstruction.name] if reconstruction is not None else None
    decoder = _decoder(recon, reconstruction, latent_name, shapes, lets) if recon is not None else None
    kernel = _kernel_decoder(recon, shapes, lets) if recon is not None and decoder is None else None
    encoders = [decl.value for decl in spec.encoders]
    encoder = _matmul_parameter(encoders, input_name, shapes, lets)
    if encoder is not None and shapes[encoder] != (units, input_size):
        encoder = None
    logits = _classifier(declared[classifier.name], shapes, lets) if classifier is not None else None
    steps = consts.integer(encoders[0].steps, "the step count of recurrent(...)") \
        if encoders and isinstance(encoders[0], S.Recurrent) else 0  # fmt: skip
    bias = _encoder_bias(encoders, lets, encoder, shapes, units) if encoder is not None else None
    return Roles(decoder=decoder, kernel_decoder=kernel, encoder=encoder, encoder_bias=bias, classifier=logits,
                 recurrent_steps=steps, pictured=_pictured(terms, declared, shapes))


def _encoder_bias(encoders, lets: dict[str, S.Expr], encoder: str, shapes, units: int) -> str | None:
    """The parameter b of shape [units] added to (or subtracted from) a sum that holds the encoder's
    product ``E @ ...``, following the lets the encoder names: ``relu(E @ x + b)``,
    ``relu(E @ x + S @ z - b)``, ``let pre = E @ (x - b_dec) + b_enc``."""
    for root in encoders:
        for node in _walk(root, lets):
            if not (isinstance(node, S.BinOp) and node.op in "+-"):
                continue
            for side, other in ((node.right, node.left), (node.left, node.right)):
                is_bias = isinstance(side, S.Name) and shapes.get(side.id) == (units,)
                if is_bias and _holds_product(other, encoder, lets):
                    return side.id
    return None


def _holds_product(node: S.Expr, matrix: str, lets) -> bool:
    return any(isinstance(n, S.BinOp) and n.op == "@" and isinstance(n.left, S.Name) and n.left.id == matrix
               for n in _walk(node, lets))  # fmt: skip



def _decoder(node: S.Expr, term: BoundTerm, latent: str, shapes, lets) -> str | None:
    """The term's decoder argument when it has one (matryoshka's D), else P of ``P @ z``."""
    argument = term.term.decoder_argument
    if argument is None:
        return _matmul_parameter([node], latent, shapes, lets)
    written = _written_arguments(_term_call(node, term), term.term.arguments)
    matrix = written.get(argument)
    is_parameter = isinstance(matrix, S.Name) and len(shapes.get(matrix.id, ())) == 2
    return matrix.id if is_parameter else None


def _kernel_decoder(node: S.Expr, shapes, lets) -> str | None:
    for child in _walk(node, lets):
        is_decoder = isinstance(child, S.Call) and child.func in ("conv_t", "local_t") and child.args
        kernel = child.args[0] if is_decoder else None
        if isinstance(kernel, S.Name) and kernel.id in shapes:
            return kernel.id
    return None


def _classifier(node: S.Expr, shapes, lets) -> str | None:
    for child in _walk(node, lets):
        if isinstance(child, S.BinOp) and child.op == "@" and isinstance(child.left, S.Name):
            if len(shapes.get(child.left.id, ())) == 2:
                return child.left.id
    return None


def _matmul_parameter(roots, operand: str, shapes, lets) -> str | None:
    """The first parameter P in ``P @ v`` under the expressions ``roots``, where v is ``operand``
    itself or a shift or scaling of it by parameters and numbers (``x - b_dec``)."""
    for root in roots:
        for node in _walk(root, lets):
            if isinstance(node, S.BinOp) and node.op == "@" and isinstance(node.left, S.Name):
                if node.left.id in shapes and _is_operand(node.right, operand, shapes, lets):
                    return node.left.id
    return None


def _is_operand(node: S.Expr, operand: str, shapes, lets) -> bool:
    """Whether ``node`` is ``operand``, or ``operand`` plus, minus, times or over a parameter or a number
    (``x - b_dec``, ``(x - mu) / sigma``), also through lets."""
    if isinstance(node, S.Name):
        return node.id == operand or (node.id in lets and _is_operand(lets[node.id], operand, shapes, lets))
    if not (isinstance(node, S.BinOp) and node.op in "+-*/"):
        return False
    pairs = [(node.left, node.right)]  # x - b, x / s: the operand on the left
    if node.op in "+*":
        pairs.append((node.right, node.left))
    return any(_is_operand(side, operand, shapes, lets) and _is_fixed(other, shapes) for side, other in pairs)


def _is_fixed(node: S.Expr, shapes) -> bool:
    """A number or a parameter: what shifts or scales an operand without making it another value."""
    return isinstance(node, S.Number) or (isinstance(node, S.Name) and node.id in shapes)


def _term_call(node: S.Expr, term: BoundTerm) -> S.Call | None:
    return next((c for c in _walk(node, {}) if isinstance(c, S.Call) and c.func == term.term.name), None)


def _written_arguments(call: S.Call | None, names: tuple[str, ...]) -> dict[str, S.Expr]:
    """Each argument's expression by its name in the term's signature, positional or by keyword."""
    if call is None:
        return {}
    written = dict(zip(names, call.args))
    written.update({kw.name: kw.value for kw in call.kwargs if kw.name in names})
    return written


def _pictured(terms: list[BoundTerm], declared: dict, shapes) -> tuple[tuple[str, str], ...]:
    found = []
    for term in terms:
        written = _written_arguments(_term_call(declared[term.name], term), term.term.arguments)
        for argument in term.term.pictured:
            node = written.get(argument)
            if isinstance(node, S.Name) and node.id in shapes and node.id not in [name for name, _ in found]:
                found.append((node.id, term.term.name))
    return tuple(found)


def _walk(node, lets: dict[str, S.Expr], seen: frozenset[str] = frozenset()):
    """Every node under ``node``, a let's name followed by the let's expression (each let once per path)."""
    yield node
    if isinstance(node, S.Name) and node.id in lets and node.id not in seen:
        yield from _walk(lets[node.id], lets, seen | {node.id})
    for child in (getattr(node, f, None) for f in ("left", "right", "operand", "body")):
        if child is not None:
            yield from _walk(child, lets, seen)
    for child in [*getattr(node, "args", ()), *(kw.value for kw in getattr(node, "kwargs", ()))]:
        yield from _walk(child, lets, seen)
