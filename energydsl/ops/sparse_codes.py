"""Codes with k active units per sample, and the affine maps they are chosen from, at the cost of k.

A TopK sparse auto-encoder computes ``z = topk(relu(E u + c), k)`` and decodes ``D z``.  Written
densely, every product is as wide as the dictionary: the decoder and both weight gradients cost as
much as the encoder's forward product, and a 65,536-unit dictionary pays for 65,536 units on every
sample.  Only the forward product must be dense (every unit competes for the k places); everything
after it needs the k winners only:

* :class:`Affine` is ``W u + c`` not yet computed.  Its dense value without a gradient picks the
  winners; :meth:`Affine.at` recomputes the winners' values with a gradient (k rows of W per
  sample), and :meth:`Affine.columns` a few chosen units for every sample (the dead units of the
  auxiliary loss).
* :class:`SparseCodes` holds each sample's few values and their units (k of them for topk, about k
  for batchtopk).  ``codes @ D.T`` decodes with one ``embedding_bag`` (a weighted sum of k decoder
  columns per sample), whose gradient reaches those columns and values only.

Anything else asked of a :class:`SparseCodes` (an arithmetic operator, a torch function, a method of
tensors) is answered by its dense tensor, so code that knows nothing of sparse codes stays correct;
:attr:`SparseCodes.densified` counts how often that happened, so a test can check that a training
step never did.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = ["Affine", "Pattern", "SparseCodes", "as_dense", "batch_top_k_codes", "codes_above", "firing_counts",
           "nonzero_count", "top_k_codes"]


class Pattern:
    """Where a batch's codes are: for each of B samples, a sorted run of unit indices among ``width``,
    in CSR form — ``columns`` (nnz,) the units, ``crow`` (B + 1,) where each sample's run starts.

    The products of sparse codes are products with this pattern as a (B, width) CSR matrix: a
    weighted sum of a few rows per sample (``embedding_bag``), a few dot products per sample (a
    sampled product), and its transpose times a dense matrix, which adds each sample into the rows of
    its units.  (On the CPU these are 3-10x faster than ``index_add_`` or than gathering the rows of
    each sample and multiplying them.)
    """

    def __init__(self, crow: torch.Tensor, columns: torch.Tensor, width: int):
        self.crow, self.columns, self.width = crow, columns, width

    @classmethod
    def from_rows(cls, indices: torch.Tensor, width: int) -> Pattern:
        """k units per sample, ``indices`` (B, k) sorted in each row."""
        batch, k = indices.shape
        return cls(torch.arange(0, batch * k + 1, k, device=indices.device), indices.flatten(), width)

    @classmethod
    def from_flat(cls, flat: torch.Tensor, batch: int, width: int) -> Pattern:
        """The entries ``flat`` (sorted) of a (batch, width) matrix flattened row after row."""
        rows, columns = flat // width, flat % width
        crow = torch.zeros(batch + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(rows, minlength=batch).cumsum(0)
        return cls(crow, columns, width)

    @property
    def batch(self) -> int:
        return self.crow.shape[0] - 1

    def rows(self) -> torch.Tensor:
        """The sample of each entry, (nnz,)."""
        samples = torch.arange(self.batch, device=self.crow.device)
        return samples.repeat_interleave(self.crow.diff(), output_size=self.columns.shape[0])

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The (B, width) sparse CSR matrix with ``values`` (nnz,) at the pattern's entries."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are not
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.columns, values, (self.batch, self.width),
                                           check_invariants=False)  # fmt: skip

    def gathered_sums(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """out_b = Σ over sample b's entries of weight · rows[unit]: (B, d), from row-major ``rows`` (width, d)."""
        return F.embedding_bag(self.columns, rows, self.crow[:-1], per_sample_weights=weights.to(rows.dtype),
                               mode="sum")  # fmt: skip

    def sampled_dots(self, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per entry (b, unit): ⟨vectors_b, rows[unit]⟩, (nnz,), from ``vectors`` (B, d) and row-major ``rows``."""
        pattern = self.matrix(vectors.new_zeros(self.columns.shape))
        return torch.sparse.sampled_addmm(pattern, vectors, rows.T, beta=0.0).values()

    def scattered_sums(self, weights: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """out_n = Σ over the entries (b, n) at unit n of weight · vectors_b: (width, d), row-major.
        (For a decoder D [d, width] read as D.T, autograd then adds it to D's gradient with one copy,
        2.5x cheaper than the product (vectors.T @ matrix) laid out like D.)"""
        return self.matrix(weights).t() @ vectors


class _Decode(torch.autograd.Function):
    """codes @ rows for codes (values, pattern): each sample's weighted sum of k rows, and its gradient."""

    @staticmethod
    def forward(ctx, values, rows, pattern: Pattern):
        dense_rows = rows.contiguous()  # a decoder D [d, units] is read as D.T: one copy, kept for backward
        ctx.save_for_backward(values, dense_rows)
        ctx.pattern = pattern
        return pattern.gathered_sums(values, dense_rows)

    @staticmethod
    def backward(ctx, grad):
        values, dense_rows = ctx.saved_tensors
        pattern = ctx.pattern
        grad_values = pattern.sampled_dots(grad, dense_rows) if ctx.needs_input_grad[0] else None
        grad_rows = pattern.scattered_sums(values, grad) if ctx.needs_input_grad[1] else None
        return grad_values, grad_rows, None


class _SampledProduct(torch.autograd.Function):
    """(vectors @ rows.T) at the pattern's entries only, (B, k), and its gradient."""

    @staticmethod
    def forward(ctx, rows, vectors, pattern: Pattern, known: torch.Tensor | None):
        dense_rows = rows.contiguous()  # a copy only for an encoder stored transposed
        ctx.save_for_backward(dense_rows, vectors)
        ctx.pattern = pattern
        return known.clone() if known is not None else pattern.sampled_dots(vectors, dense_rows)

    @staticmethod
    def backward(ctx, grad):
        dense_rows, vectors = ctx.saved_tensors
        pattern = ctx.pattern
        grad_rows = pattern.scattered_sums(grad, vectors) if ctx.needs_input_grad[0] else None
        grad_vectors = pattern.gathered_sums(grad, dense_rows) if ctx.needs_input_grad[1] else None
        return grad_rows, grad_vectors, None, None


class Affine:
    """``W @ u + c`` for a batch: ``W`` (units, d), ``u`` (B, d) and ``c`` a scalar or (units,), unevaluated."""

    def __init__(self, weight: torch.Tensor, vector: torch.Tensor, bias: torch.Tensor | float | None = None):
        self.weight, self.vector, self.bias = weight, vector, bias

    @property
    def width(self) -> int:
        return self.weight.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.vector.shape[0], self.width))

    def plus(self, bias, sign: int = 1) -> Affine:
        """This map with ``sign * bias`` added (a scalar or one value per unit)."""
        bias = bias if sign > 0 else -bias
        return Affine(self.weight, self.vector, bias if self.bias is None else self.bias + bias)

    def dense(self) -> torch.Tensor:
        """The (B, units) value, with its gradient."""
        product = self.vector @ self.weight.T
        return product if self.bias is None else product + self.bias

    @torch.no_grad()
    def detached_dense(self) -> torch.Tensor:
        """The (B, units) value without a gradient, the bias added inside the product (one pass over memory)."""
        weight, vector = self.weight.detach(), self.vector.detach()
        if self.bias is None:
            return vector @ weight.T
        bias = torch.as_tensor(self.bias, dtype=vector.dtype, device=vector.device).detach()
        return torch.addmm(bias.expand(weight.shape[0]), vector, weight.T)

    def at(self, pattern: Pattern, known: torch.Tensor | None = None) -> torch.Tensor:
        """The values at the entries of ``pattern`` (nnz,), with their gradient, at the cost of one row of W
        per entry in the backward pass.  ``known``: those values already computed (without a gradient),
        so that the forward pass does not compute them again."""
        bias = self._bias_at(pattern.columns)
        products = None if known is None else known - bias
        return _SampledProduct.apply(self.weight, self.vector, pattern, products) + bias

    def columns(self, units: torch.Tensor) -> torch.Tensor:
        """The values of the units ``units`` (a 1-D index) for every sample, with their gradient."""
        values = self.vector @ self.weight[units].T
        return values + self._bias_at(units)

    def _bias_at(self, indices: torch.Tensor):
        if self.bias is None:
            return 0.0
        bias = torch.as_tensor(self.bias, dtype=self.vector.dtype, device=self.vector.device)
        return bias[indices] if bias.dim() else bias


def top_k_codes(pre: Affine, k: int, relu: bool) -> SparseCodes:
    """``topk(pre, k)`` (``topk(relu(pre), k)`` with ``relu``) of every sample, as sparse codes.

    The winners are chosen on the dense value without a gradient: the one product as wide as the
    dictionary.  relu is monotone, so the k largest of relu(pre) are the k largest of pre (where
    fewer than k are positive, the others are 0 either way); their gradient costs k units.
    """
    dense = pre.detached_dense()
    indices = dense.topk(min(k, pre.width), dim=1, sorted=False).indices.sort(dim=1).values
    return _codes_at(pre, Pattern.from_rows(indices, pre.width), relu, dense)


def batch_top_k_codes(pre: Affine, count: int, relu: bool) -> SparseCodes:
    """The ``count`` largest entries of the whole batch of ``pre`` (of relu(pre) with ``relu``), as sparse
    codes: a sample may keep more or fewer than count / B."""
    dense = pre.detached_dense()
    flat = dense.flatten().topk(min(count, dense.numel()), sorted=False).indices.sort().values
    return _codes_at(pre, Pattern.from_flat(flat, dense.shape[0], pre.width), relu, dense)


def codes_above(pre: Affine, threshold: torch.Tensor, relu: bool, inclusive: bool = False) -> SparseCodes:
    """The entries of ``pre`` (of relu(pre) with ``relu``) above ``threshold`` (or equal to it, with
    ``inclusive``), as sparse codes; with ``relu`` the entries at 0 are not stored."""
    dense = pre.detached_dense()
    kept = dense >= threshold if inclusive else dense > threshold
    if relu:
        kept &= dense > 0
    flat = kept.flatten().nonzero().squeeze(1)  # in order: sorted by sample, then unit
    return _codes_at(pre, Pattern.from_flat(flat, dense.shape[0], pre.width), relu, dense)


def _codes_at(pre: Affine, pattern: Pattern, relu: bool, dense: torch.Tensor) -> SparseCodes:
    """The codes at ``pattern``, their values read off the ``dense`` product that chose them."""
    known = dense.flatten()[pattern.rows() * pre.width + pattern.columns]
    values = pre.at(pattern, known)
    return SparseCodes(torch.relu(values) if relu else values, pattern)


def _densify(value):
    return value.dense() if isinstance(value, SparseCodes) else value


class SparseCodes:
    """A batch of codes: ``values`` (nnz,) at the entries of a :class:`Pattern`.

    Its dense form is the (B, width) tensor with the values at their entries and 0 elsewhere.  An
    entry may be 0 (a relu that cut it): it is then stored but does not fire.
    """

    densified: ClassVar[int] = 0  # how many times any instance was made dense (see the module docstring)

    def __init__(self, values: torch.Tensor, pattern: Pattern):
        self.values, self.pattern = values, pattern

    @classmethod
    def from_indices(cls, values: torch.Tensor, indices: torch.Tensor, width: int) -> SparseCodes:
        """Codes with ``values`` (B, k) at units ``indices`` (B, k), which need not be sorted."""
        indices, order = indices.sort(dim=1)
        return cls(values.gather(1, order).flatten(), Pattern.from_rows(indices, width))

    @property
    def width(self) -> int:
        return self.pattern.width

    # ------------------------------------------------------------ what is cheap

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.pattern.batch, self.width))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def requires_grad(self) -> bool:
        return self.values.requires_grad

    def dim(self) -> int:
        return 2

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return self.pattern.batch

    def detach(self) -> SparseCodes:
        return SparseCodes(self.values.detach(), self.pattern)

    def to(self, *args, **kwargs) -> SparseCodes:
        values = self.values.to(*args, **kwargs)
        if values.device == self.values.device:
            return SparseCodes(values, self.pattern)
        pattern = self.pattern
        return SparseCodes(values, Pattern(pattern.crow.to(values.device), pattern.columns.to(values.device),
                                           pattern.width))  # fmt: skip

    def within(self, start: int, stop: int) -> SparseCodes:
        """The codes of units start..stop-1 only (the others' values 0, the same pattern)."""
        columns = self.pattern.columns
        return SparseCodes(self.values * ((columns >= start) & (columns < stop)), self.pattern)

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """``codes @ rows``: each sample's weighted sum of the k rows (width, d) it selects, (B, d)."""
        return _Decode.apply(self.values.to(rows.dtype), rows, self.pattern)

    def __matmul__(self, other):
        if isinstance(other, torch.Tensor) and other.dim() == 2 and other.shape[0] == self.width:
            return self.decode(other)
        return self.dense() @ _densify(other)

    def dense(self) -> torch.Tensor:
        """The (B, width) tensor, with the gradient of the values."""
        SparseCodes.densified += 1
        entries = self.pattern.rows() * self.width + self.pattern.columns
        return self.values.new_zeros(self.shape).flatten().scatter(0, entries, self.values).view(self.shape)

    # ------------------------------------------------------------ everything else, densely

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("values", "pattern"):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.dense(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        args = tuple(_densify_all(a) for a in args)
        kwargs = {key: _densify_all(value) for key, value in (kwargs or {}).items()}
        return func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"SparseCodes(shape={tuple(self.shape)}, entries={self.values.shape[0]})"


def _densify_all(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_densify(v) for v in value)
    return _densify(value)


def _dense_operator(name: str):
    def operator(self, *others):
        return getattr(self.dense(), name)(*(_densify(o) for o in others))

    operator.__name__ = name
    return operator


for _name in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "pow", "rpow", "neg",
              "abs", "eq", "ne", "lt", "le", "gt", "ge", "getitem", "rmatmul", "iter", "bool", "float"):
    setattr(SparseCodes, f"__{_name}__", _dense_operator(f"__{_name}__"))
SparseCodes.__hash__ = object.__hash__  # defining __eq__ would otherwise remove it


def as_dense(z):
    """``z`` as a tensor (sparse codes made dense)."""
    return _densify(z)


@torch.no_grad()
def firing_counts(z) -> torch.Tensor:
    """Per unit, on how many samples of the batch ``z`` (B, units...) it is nonzero (an int64 vector)."""
    if isinstance(z, SparseCodes):
        return torch.bincount(z.pattern.columns[z.values.detach() != 0], minlength=z.width)
    return (z.detach() != 0).flatten(1).sum(dim=0)


@torch.no_grad()
def nonzero_count(z) -> int:
    """How many entries of the batch ``z`` are nonzero."""
    if isinstance(z, SparseCodes):
        return int((z.values != 0).sum())
    return int((z != 0).sum())
