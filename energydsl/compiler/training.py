"""Training: optimizer, batch, seed, phases and schedules."""

from __future__ import annotations

from dataclasses import replace

from energydsl.compiler.common import _options
from energydsl.compiler.program import ParamPlan, Phase, Training, Variable
from energydsl.errors import Span, SpecError, did_you_mean, one_of
from energydsl.lang import spec as S
from energydsl.optim import OPTIMIZERS
from energydsl.terms import TERMS, BoundTerm

DEFAULT_OPTIMIZER = "adam"
SCHEDULES = {
    "constant": "the optimizer's learning rates throughout the phase",
    "cosine": "rates times ½(1 + cos(π·k/N)) in the phase's epoch k of N: from the full rate down towards 0",
}




class TrainingStage:
    """A part of :class:`~energydsl.compiler.compile.Compiler`: see its docstring."""

    def _training(self, terms: list[BoundTerm], params: list[ParamPlan], latent: Variable) -> Training:
        decl = self.spec.train or S.TrainDecl(span=Span(line=1, column=1, end_line=1, end_column=2))
        optimizer, options, lr = DEFAULT_OPTIMIZER, {}, OPTIMIZERS[DEFAULT_OPTIMIZER].default_lr
        if decl.optimizer is not None:
            optimizer, options, lr = self._optimizer(decl.optimizer)
        training = self._phases(decl, terms, optimizer, options, lr)
        if decl.optimizer is None:
            return training
        decoders = OPTIMIZERS[optimizer].check_parameters(params, self._decoders(latent), latent.name,
                                                         decl.optimizer.func_span)  # fmt: skip
        return replace(training, decoders=decoders)

    def _phases(self, decl: S.TrainDecl, terms: list[BoundTerm], optimizer: str, options: dict,
                lr: float) -> Training:  # fmt: skip
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

    def _decoders(self, latent: Variable) -> dict[str, list[str]]:
        """For each parameter D, the energy terms ``w * sqerr(target, D @ z)`` that it decodes
        (what an optimizer such as bcd checks the learned parameters against)."""
        decoders: dict[str, list[str]] = {}
        for decl in self.spec.energy:
            _, _, call = self._split_weight(decl.value)
            reconstructs = TERMS[call.func].role == "reconstruction" and len(call.args) == 2
            decoded = call.args[1] if reconstructs else None
            if (isinstance(decoded, S.BinOp) and decoded.op == "@" and isinstance(decoded.left, S.Name)
                    and isinstance(decoded.right, S.Name) and decoded.right.id == latent.name):  # fmt: skip
                decoders.setdefault(decoded.left.id, []).append(decl.name.name)
        return decoders

    def _phase_lr_scale(self, phase: S.PhaseDecl, optimizer: str) -> float:
        if phase.lr_scale is None:
            return 1.0
        if not OPTIMIZERS[optimizer].has_lr:
            raise SpecError(f"phase '{phase.name.name}': optimizer {optimizer} has no learning rate to scale",
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
        entry = OPTIMIZERS[node.func]
        options, spans = _options(self.consts, node, tuple(entry.options), node.func)
        # an optimizer without a learning rate still gives its groups a base rate of 1 (schedules multiply it)
        lr = options.pop("lr", entry.default_lr if entry.has_lr else 1.0)
        if lr <= 0:
            raise SpecError(f"lr must be positive, got {lr:g}", spans["lr"])
        return node.func, entry.check_options(options, spans), lr
