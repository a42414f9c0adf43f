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
    decoder: str | None = None  # W of the reconstruction sqerr(x, W @ z)
    kernel_decoder: str | None = None  # K of a convolutional reconstruction sqerr(x, conv_t(K, z)) (or local_t)
    encoder: str | None = None  # E of E @ x in the encoder, when it maps inputs to latent units
    encoder_bias: str | None = None  # b[units] of E @ x + b (or - b) in the encoder, through its lets
    classifier: str | None = None  # C of the classifier's logits C @ f(z)
    recurrent_steps: int = 0  # T of encoder z = recurrent(T) { ... }; 0 for a feed-forward or no encoder
    pictured: tuple[tuple[str, str], ...] = ()  # (parameter, term) a term asks to be drawn as a matrix


def find_roles(spec: S.Spec, terms: list[BoundTerm], reconstruction: BoundTerm | None, classifier: BoundTerm | None,
               shapes: dict[str, tuple[int, ...]], input_name: str, input_size: int, latent_name: str, units: int,
               consts: ExprCompiler) -> Roles:
    """The roles, from the checked spec; ``shapes`` are the parameters' shapes."""
    declared = {decl.name.name: decl.value for decl in spec.energy}
    recon = declared[reconstruction.name] if reconstruction is not None else None
    decoder = _matmul_parameter([recon], latent_name, shapes) if recon is not None else None
    kernel = _kernel_decoder(recon, shapes) if recon is not None and decoder is None else None
    encoders = [decl.value for decl in spec.encoders]
    encoder = _matmul_parameter(encoders, input_name, shapes)
    if encoder is not None and shapes[encoder] != (units, input_size):
        encoder = None
    logits = _classifier(declared[classifier.name], shapes) if classifier is not None else None
    steps = consts.integer(encoders[0].steps, "the step count of recurrent(...)") \
        if encoders and isinstance(encoders[0], S.Recurrent) else 0  # fmt: skip
    lets = {decl.name.name: decl.value for decl in spec.lets}
    bias = _encoder_bias(encoders, lets, encoder, shapes, units) if encoder is not None else None
    return Roles(decoder=decoder, kernel_decoder=kernel, encoder=encoder, encoder_bias=bias, classifier=logits,
                 recurrent_steps=steps, pictured=_pictured(terms, declared, shapes))


def _encoder_bias(encoders, lets: dict[str, S.Expr], encoder: str, shapes, units: int) -> str | None:
    """The parameter b of shape [units] added to (or subtracted from) a sum that holds the encoder's
    product ``E @ ...``, following the lets the encoder names: ``relu(E @ x + b)``,
    ``relu(E @ x + S @ z - b)``, ``let pre = E @ (x - b_dec) + b_enc``."""
    for root in encoders:
        for node in _walk_lets(root, lets):
            if not (isinstance(node, S.BinOp) and node.op in "+-"):
                continue
            for side, other in ((node.right, node.left), (node.left, node.right)):
                is_bias = isinstance(side, S.Name) and shapes.get(side.id) == (units,)
                if is_bias and _holds_product(other, encoder, lets):
                    return side.id
    return None


def _holds_product(node: S.Expr, matrix: str, lets) -> bool:
    return any(isinstance(n, S.BinOp) and n.op == "@" and isinstance(n.left, S.Name) and n.left.id == matrix
               for n in _walk_lets(node, lets))  # fmt: skip


def _walk_lets(node, lets: dict[str, S.Expr], seen: frozenset = frozenset()):
    """Every node under ``node``, and under the lets it names (each let once per path)."""
    for child in _walk(node):
        if isinstance(child, S.Name) and child.id in lets and child.id not in seen:
            yield from _walk_lets(lets[child.id], lets, seen | {child.id})
        else:
            yield child


def _kernel_decoder(node: S.Expr, shapes) -> str | None:
    for child in _walk(node):
        is_decoder = isinstance(child, S.Call) and child.func in ("conv_t", "local_t") and child.args
        kernel = child.args[0] if is_decoder else None
        if isinstance(kernel, S.Name) and kernel.id in shapes:
            return kernel.id
    return None


def _classifier(node: S.Expr, shapes) -> str | None:
    for child in _walk(node):
        if isinstance(child, S.BinOp) and child.op == "@" and isinstance(child.left, S.Name):
            if len(shapes.get(child.left.id, ())) == 2:
                return child.left.id
    return None


def _matmul_parameter(roots, operand: str, shapes) -> str | None:
    """The first parameter P in ``P @ operand`` under the expressions ``roots``."""
    for root in roots:
        for node in _walk(root):
            if isinstance(node, S.BinOp) and node.op == "@" and isinstance(node.left, S.Name):
                right = node.right
                if isinstance(right, S.Name) and right.id == operand and node.left.id in shapes:
                    return node.left.id
    return None


def _pictured(terms: list[BoundTerm], declared: dict, shapes) -> tuple[tuple[str, str], ...]:
    found = []
    for term in terms:
        call = next((c for c in _walk(declared[term.name]) if isinstance(c, S.Call) and c.func == term.term.name), None)
        written = dict(zip(term.term.arguments, call.args)) if call is not None else {}
        for argument in term.term.pictured:
            node = written.get(argument)
            if isinstance(node, S.Name) and node.id in shapes and node.id not in [name for name, _ in found]:
                found.append((node.id, term.term.name))
    return tuple(found)


def _walk(node):
    yield node
    for child in (getattr(node, f, None) for f in ("left", "right", "operand", "body")):
        if child is not None:
            yield from _walk(child)
    for child in getattr(node, "args", ()):
        yield from _walk(child)
