"""Training: optimizer, batch, seed, phases and schedules."""

from __future__ import annotations



from energydsl.lang import spec as S
from energydsl.optim.bcd import DEFAULT_FORGET
from energydsl.errors import Span, SpecError, did_you_mean, one_of
from energydsl.compiler.common import _options
from energydsl.terms import BoundTerm
from energydsl.compiler.program import Variable, ParamPlan, Phase, Training

OPTIMIZER_DESCRIPTIONS = {
    "sgd": "Stochastic gradient descent (torch.optim.SGD), with optional momentum",
    "adam": "Adam (torch.optim.Adam) with betas (beta1, beta2)",
    "bcd": ("Online dictionary learning (Mairal et al. 2010): block-coordinate descent on the "
            "reconstruction of every sample seen, one dictionary column at a time; old statistics weigh "
            f"(1 − 1/t)^forget at step t (default forget = {DEFAULT_FORGET:g}). Every learned parameter must be the "
            "dictionary D of one sqerr(x, D @ z) term, with col_norm, nonneg or mask constraints"),
}
OPTIMIZERS = {
    "sgd": ("lr", "momentum", "weight_decay", "nesterov"),
    "adam": ("lr", "beta1", "beta2", "weight_decay"),
    "bcd": ("forget",),  # online dictionary learning (energydsl.dictionary): no learning rate
}
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "bcd": 1.0}
# the constraints that optimizer bcd can apply to one column at a time
BCD_CONSTRAINTS = ("col_norm", "nonneg", "mask")
SCHEDULES = {
    "constant": "the optimizer's learning rates throughout the phase",
    "cosine": "rates times ½(1 + cos(π·k/N)) in the phase's epoch k of N: from the full rate down towards 0",
}




class TrainingStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _training(self, terms: list[BoundTerm]) -> Training:
        decl = self.spec.train or S.TrainDecl(span=Span(line=1, column=1, end_line=1, end_column=2))
        optimizer, options, lr = "adam", {}, DEFAULT_LR["adam"]
        if decl.optimizer is not None:
            optimizer, options, lr = self._optimizer(decl.optimizer)
        batch = self.consts.integer(decl.batch, "the batch size") if decl.batch else 64
        seed = self.consts.integer(decl.seed, "the seed", 0) if decl.seed else 0
        all_terms = tuple(t.name for t in terms)
        if decl.phases and decl.epochs is not None:
            raise SpecError("with phases, give epochs per phase", decl.epochs.span)
        if not decl.phases:
            epochs = self.consts.integer(decl.epochs, "epochs", 0) if decl.epochs else 10
            return Training(optimizer, options, lr, batch, seed, (Phase("train", epochs, all_terms),))
        phases, names = [], set()
        for phase in decl.phases:
            if phase.name.name in names:
                raise SpecError(f"phase '{phase.name.name}' is given twice", phase.name.span)
            names.add(phase.name.name)
            if phase.epochs is None:
                raise SpecError(f"phase '{phase.name.name}' needs 'epochs N'", phase.span)
            epochs = self.consts.integer(phase.epochs, "epochs", 0)
            active = all_terms
            if phase.terms is not None:
                for ident in phase.terms:
                    if ident.name not in all_terms:
                        raise SpecError(f"phase '{phase.name.name}' names unknown term '{ident.name}'", ident.span,
                                        hint=did_you_mean(ident.name, all_terms) or one_of(all_terms))  # fmt: skip
                active = tuple(t for t in all_terms if t in {i.name for i in phase.terms})
            lr_scale = self._phase_lr_scale(phase, optimizer)
            phases.append(Phase(phase.name.name, epochs, active, self._schedule(phase), lr_scale))
        return Training(optimizer, options, lr, batch, seed, tuple(phases))

    def _decoders(self, params: list[ParamPlan], latent: Variable) -> tuple[tuple[str, str], ...]:
        """Optimizer bcd's (parameter, term) pairs: every learned parameter must be the
        dictionary D of exactly one term ``w * sqerr(target, D @ z)``."""
        optimizer = self.spec.train.optimizer
        decoders = {}
        for decl in self.spec.energy:
            _, call = self._split_weight(decl.value)
            decoded = call.args[1] if call.func == "sqerr" and len(call.args) == 2 else None
            if (isinstance(decoded, S.BinOp) and decoded.op == "@" and isinstance(decoded.left, S.Name)
                    and isinstance(decoded.right, S.Name) and decoded.right.id == latent.name):  # fmt: skip
                decoders.setdefault(decoded.left.id, []).append(decl)
        for plan in params:
            if plan.learn == "fixed":
                continue
            if plan.learn == "ascent" or len(decoders.get(plan.name, ())) != 1:
                found = "is learned by ascent" if plan.learn == "ascent" else (
                    f"decodes {len(decoders[plan.name])} terms" if plan.name in decoders else "is not a decoder")
                raise SpecError(f"optimizer bcd learns dictionaries only: parameter '{plan.name}' {found}",
                                optimizer.func_span, hint=f"bcd needs one term 'sqerr(x, {plan.name} @ "
                                f"{latent.name})' per learned parameter; fix the others with 'learn fixed'")  # fmt: skip
            unsupported = [c.kind for c in plan.constraints if c.kind not in BCD_CONSTRAINTS]
            if unsupported or len(plan.shape) != 2:
                what = f"constraint '{unsupported[0]}'" if unsupported else f"shape {list(plan.shape)}"
                raise SpecError(f"optimizer bcd updates one column at a time; parameter '{plan.name}' has {what}",
                                plan.span, hint=f"bcd takes matrices with {', '.join(BCD_CONSTRAINTS)} constraints")  # fmt: skip
        return tuple((plan.name, decoders[plan.name][0].name.name) for plan in params if plan.learn != "fixed")

    def _phase_lr_scale(self, phase: S.PhaseDecl, optimizer: str) -> float:
        if phase.lr_scale is None:
            return 1.0
        if optimizer == "bcd":
            raise SpecError(f"phase '{phase.name.name}': optimizer bcd has no learning rate to scale",
                            phase.lr_scale.span, hint="remove 'lr_scale' from the phase")  # fmt: skip
        return self.consts.positive(phase.lr_scale, "lr_scale")

    @staticmethod
    def _schedule(phase: S.PhaseDecl) -> str:
        if phase.schedule is None:
            return "constant"
        if phase.schedule.name not in SCHEDULES:
            raise SpecError(f"unknown schedule '{phase.schedule.name}'", phase.schedule.span,
                            hint=did_you_mean(phase.schedule.name, SCHEDULES) or one_of(SCHEDULES))  # fmt: skip
        return phase.schedule.name

    def _optimizer(self, node: S.Call):
        if node.func not in OPTIMIZERS:
            raise SpecError(f"unknown optimizer '{node.func}'", node.func_span,
                            hint=did_you_mean(node.func, OPTIMIZERS) or one_of(OPTIMIZERS))  # fmt: skip
        options, spans = _options(self.consts, node, OPTIMIZERS[node.func], node.func)
        lr = options.pop("lr", DEFAULT_LR[node.func])
        if lr <= 0:
            raise SpecError(f"lr must be positive, got {lr:g}", spans["lr"])
        for key, value in options.items():
            if value < 0 or (key in ("beta1", "beta2", "momentum") and value >= 1):
                limit = "in [0, 1)" if key in ("beta1", "beta2", "momentum") else ">= 0"
                raise SpecError(f"{key} must be {limit}, got {value:g}", spans[key])
        if "nesterov" in options:
            options["nesterov"] = bool(options["nesterov"])
        return node.func, options, lr
