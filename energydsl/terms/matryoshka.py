"""The energy term ``matryoshka``: the reconstruction error of nested prefixes of a dictionary, summed."""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.ops.sparse_codes import SparseCodes
from energydsl.terms.base import Option, Term, decoder_matrix

PREFIX_TENSORS = 3  # (B, prefixes, d) tensors of one evaluation: partials, their cumulative sums, errors

class matryoshka(Term):
    """The squared error of the reconstruction by each nested prefix of the dictionary, summed:
    Σₘ ‖x − (D[:, :m] z[:m] + b)‖² over the prefix sizes m₁ < m₂ < … (``prefixes``), the whole
    dictionary always the last (Matryoshka SAEs, Bussmann et al. 2025; Nabeshima 2024).  The first
    units must reconstruct x on their own, so they learn general features and later units refine
    them, instead of a general feature splitting into many specific ones.

    Written ``matryoshka(x, D, z, b, prefixes = [64, 256, 1024])``.  The decoder and the code are
    separate arguments, rather than ``D @ z``, because the term takes prefixes of both; the bias
    ``b`` (a vector, or 0) is separate because every prefix's reconstruction adds it whole.  The
    full dictionary need not be listed; a prefix equal to the width counts once.

    One decoder product: the segments between consecutive cuts give partial reconstructions
    D[:, a:e] z[a:e], whose cumulative sum is every prefix's reconstruction, so the cost is that
    of one D z however many prefixes there are.
    """

    name = "matryoshka"
    formula = "Σₘ ‖{x} − ({D}[:, :m] {z}[:m] + {b})‖²"
    arguments = ("x", "D", "z", "b")
    kinds = ("value", "value", "value", "value")
    role = "reconstruction"
    squares = True
    decoder_argument = "D"
    options = {"prefixes": Option(None, "wholes", "the sizes m of the nested prefixes, increasing", required=True)}

    def check(self, values, node):
        x, D, z, b = values
        d, width = decoder_matrix("matryoshka", D, node)
        if not z.batched or z.shape != (width,):
            raise SpecError(f"matryoshka() needs a per-sample code of {width} units for D {D.describe()}, "
                            f"got {z.describe()}", node.span)  # fmt: skip
        if not x.batched or x.shape != (d,):
            raise SpecError(f"matryoshka() reconstructs a per-sample [{d}] for D {D.describe()}, "
                            f"got {x.describe()}", node.span)  # fmt: skip
        if b.batched or not (b.is_scalar or b.shape == (d,)):
            raise SpecError(f"matryoshka() needs a bias b of [{d}] (or 0), got {b.describe()}", node.span)
        self._check_prefixes(width, node)
        self.decoder_shape = (d, width)
        sizes = ", ".join(map(str, self.cuts(width)))
        self.formula = f"Σ_m∈{{{sizes}}} ‖{{x}} − ({{D}}[:, :m] {{z}}[:m] + {{b}})‖²"

    def _check_prefixes(self, width: int, node) -> None:
        prefixes = self.static["prefixes"]
        for i in range(1, len(prefixes)):
            if prefixes[i] <= prefixes[i - 1]:
                raise SpecError(f"matryoshka() prefixes must increase, but {prefixes[i]} follows {prefixes[i - 1]}",
                                self.option_span(node, "prefixes", i))  # fmt: skip
        if prefixes[-1] > width:
            raise SpecError(f"matryoshka() prefix {prefixes[-1]} is larger than the dictionary ({width} units)",
                            self.option_span(node, "prefixes", len(prefixes) - 1))  # fmt: skip

    def is_quadratic(self, values):
        x, D, z, b = values
        return x.degree == D.degree == b.degree == 0 and z.degree <= 1

    def cuts(self, width: int) -> list[int]:
        """The prefix sizes, the whole dictionary last."""
        prefixes = list(self.static["prefixes"])
        return prefixes if prefixes[-1] == width else prefixes + [width]

    def energy(self, x, D, z, b):
        cuts = self.cuts(z.shape[1])
        if isinstance(z, SparseCodes):  # each segment's few entries decoded through the whole D (no slicing)
            segments = [z.within(start, end) @ D.T for start, end in zip([0] + cuts, cuts)]
        else:
            segments = [z[:, start:end] @ D[:, start:end].T for start, end in zip([0] + cuts, cuts)]
        prefixes = torch.stack(segments, dim=1).cumsum(dim=1) + b  # (B, prefixes, d): D[:, :m] z[:m] + b
        return ((x.unsqueeze(1) - prefixes) ** 2).sum(dim=(1, 2))

    def reconstruction(self, x, D, z, b):
        return x, z @ D.T + b

    def memory(self, batch, size, prox):
        # the stacked partial reconstructions, their cumulative sums and the errors: (B, prefixes, d) each
        d, width = self.decoder_shape
        return {"matryoshka prefixes": PREFIX_TENSORS * batch * len(self.cuts(width)) * d * size}
