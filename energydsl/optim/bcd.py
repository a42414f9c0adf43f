"""Online dictionary learning's update: block-coordinate descent on a surrogate.

``optimizer bcd`` learns a dictionary the way Mairal, Bach, Ponce & Sapiro (2010,
"Online learning for matrix factorization and sparse coding", Algorithm 2) do,
instead of a gradient step.  For a term ``w · sqerr(x, D @ z)`` the energy of all
the samples seen so far, with their codes frozen, is the quadratic surrogate

    ½ tr(Dᵀ D A) − tr(Dᵀ B),   A = Σ z zᵀ,  B = Σ x zᵀ,

so the optimizer keeps A (units × units) and B (inputs × units), adds each
batch's statistics after inference, and minimises the surrogate over one column
of D at a time, exactly, with that column's constraints (``col_norm``,
``nonneg``, ``mask``):

    d_j ← proj(d_j + (b_j − D a_j) / A_jj).

One sweep over the columns per batch is enough (the surrogate changes little
between batches).  Old statistics are down-weighted by β_t = (1 − 1/t)^forget
at step t: forget = 0 keeps a plain sum, larger values forget the codes that
earlier, worse dictionaries produced.  There is no learning rate to tune, and a
fixed gradient step, which must be small for the worst-conditioned direction,
is what makes plain SGD on the dictionary slow.
"""

from __future__ import annotations

import torch

from energydsl.errors import SpecError
from energydsl.optim.base import ColumnProjection, Optimizer

# β_t = (1 − 1/t)^forget.  Codes change fast while the dictionary forms, so old statistics
# must fade quickly: 10 reached a lower held-out energy than 1, 20 and 100 on the
# whitened patches of specs/dictionary_learning.energy (see benchmarks/dictionary_learning.py).
DEFAULT_FORGET = 10.0
# the constraints that bcd can apply to one column at a time
COLUMN_CONSTRAINTS = ("col_norm", "nonneg", "mask")


class BlockCoordinateDictionary(torch.optim.Optimizer):
    """Block-coordinate descent on the dictionary surrogate (see the module docstring).

    ``accumulate(D, codes, targets)`` adds a batch's statistics for decoder D
    (summed over several workers by the caller); ``step()`` then updates every
    decoder that received statistics, column by column.
    """

    def __init__(self, decoders: list[tuple[torch.Tensor, ColumnProjection]], forget: float = DEFAULT_FORGET):
        super().__init__([p for p, _ in decoders], {"forget": forget, "lr": 1.0, "base_lr": 1.0})
        self._project = {id(p): project for p, project in decoders}
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def accumulate(self, decoder: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, scale: float) -> None:
        """Add ``scale · (codesᵀcodes, targetsᵀcodes)`` for this batch; codes (B, m), targets (B, n)."""
        A, B = scale * (codes.T @ codes), scale * (targets.T @ codes)
        if id(decoder) in self._pending:
            previous_A, previous_B = self._pending[id(decoder)]
            A, B = A + previous_A, B + previous_B
        self._pending[id(decoder)] = (A, B)

    def statistics(self) -> list[torch.Tensor]:
        """The pending batch statistics, for the caller to sum over workers in place."""
        return [t for pair in self._pending.values() for t in pair]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for decoder in group["params"]:
                batch = self._pending.pop(id(decoder), None)
                if batch is not None:
                    A, B = self._surrogate(decoder, *batch, group["forget"])
                    self._sweep(decoder, A, B, self._project[id(decoder)])

    def _surrogate(self, decoder, batch_A, batch_B, forget):
        state = self.state[decoder]
        if not state:
            state["t"] = torch.zeros((), dtype=torch.float64)
            state["A"], state["B"] = torch.zeros_like(batch_A), torch.zeros_like(batch_B)
        state["t"] += 1
        beta = (1 - 1 / float(state["t"])) ** forget
        state["A"].mul_(beta).add_(batch_A)
        state["B"].mul_(beta).add_(batch_B)
        return state["A"], state["B"]

    @staticmethod
    def _sweep(D: torch.Tensor, A: torch.Tensor, B: torch.Tensor, project: ColumnProjection) -> None:
        """One pass of exact minimisation over each column (units that never fired are left alone)."""
        diagonal = A.diagonal().tolist()
        never_fired = 1e-12 * max(diagonal)
        for j, a_jj in enumerate(diagonal):
            if a_jj <= never_fired:
                continue
            D[:, j : j + 1] += (B[:, j : j + 1] - D @ A[:, j : j + 1]) / a_jj
            project(D, j)


class BCD(Optimizer):
    """The registry's entry: every learned parameter must be the dictionary D of exactly one
    term ``w * sqerr(target, D @ z)``, a matrix with column-wise constraints only."""

    name = "bcd"
    options = {"forget": DEFAULT_FORGET}  # no learning rate
    description = ("Online dictionary learning (Mairal et al. 2010): block-coordinate descent on the "
                   "reconstruction of every sample seen, one dictionary column at a time; old statistics weigh "
                   f"(1 − 1/t)^forget at step t (default forget = {DEFAULT_FORGET:g}). Every learned parameter must "
                   "be the dictionary D of one sqerr(x, D @ z) term, with col_norm, nonneg or mask constraints")  # fmt: skip

    def check_parameters(self, plans, decoders, latent, span):
        for plan in plans:
            if plan.learn == "fixed":
                continue
            if plan.learn == "ascent" or len(decoders.get(plan.name, ())) != 1:
                found = "is learned by ascent" if plan.learn == "ascent" else (
                    f"decodes {len(decoders[plan.name])} terms" if plan.name in decoders else "is not a decoder")
                raise SpecError(f"optimizer bcd learns dictionaries only: parameter '{plan.name}' {found}", span,
                                hint=f"bcd needs one term 'sqerr(x, {plan.name} @ {latent})' per learned "
                                "parameter; fix the others with 'learn fixed'")  # fmt: skip
            unsupported = [c.kind for c in plan.constraints if c.kind not in COLUMN_CONSTRAINTS]
            if unsupported or len(plan.shape) != 2:
                what = f"constraint '{unsupported[0]}'" if unsupported else f"shape {list(plan.shape)}"
                raise SpecError(f"optimizer bcd updates one column at a time; parameter '{plan.name}' has {what}",
                                plan.span, hint=f"bcd takes matrices with {', '.join(COLUMN_CONSTRAINTS)} constraints")  # fmt: skip
        return tuple((plan.name, decoders[plan.name][0]) for plan in plans if plan.learn != "fixed")

    def make(self, groups, options, lr, maximize, column_projection):
        decoders = [(p, column_projection(p)) for group in groups for p in group["params"]]
        return BlockCoordinateDictionary(decoders, **options)

    def state_values(self, shapes, options):
        return sum(m * m + n * m for n, m in shapes)  # per dictionary D[n, m]: A (m × m) and B (n × m)

    def explain_step(self, latent):
        z = latent
        return (f"each batch: infer {z}* with the dictionaries frozen; add the batch's statistics "
                f"Σ {z}{z}ᵀ and Σ x{z}ᵀ to the forgetful sums; minimise the reconstruction of every sample "
                "seen over one dictionary column at a time (Mairal et al. 2010); then the projections")


bcd = BCD()
