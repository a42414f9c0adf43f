"""Training: optimizer, batch, seed, phases and schedules."""

from __future__ import annotations

from dataclasses import replace

from energydsl.compiler.common import _options
from energydsl.compiler.program import (
    DEFAULT_DEAD_ALARM,
    MAX_DEAD_WINDOW,
    Activity,
    Method,
    ParamPlan,
    Phase,
    Resampling,
    Training,
    Variable,
)
from energydsl.compiler.roles import Roles
from energydsl.errors import Span, SpecError, did_you_mean, one_of
from energydsl.expr.compiler import ExprCompiler
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

    def _training(self, terms: list[BoundTerm], params: list[ParamPlan], latent: Variable, roles: Roles,
                  methods: tuple[Method, ...]) -> Training:  # fmt: skip
        decl = self.spec.train or S.TrainDecl(span=Span(line=1, column=1, end_line=1, end_column=2))
        optimizer, options, lr = DEFAULT_OPTIMIZER, {}, OPTIMIZERS[DEFAULT_OPTIMIZER].default_lr
        if decl.optimizer is not None:
            optimizer, options, lr = self._optimizer(decl.optimizer)
        training = replace(self._phases(decl, terms, optimizer, options, lr), **self._dead_units(decl, roles, methods))
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

    # ------------------------------------------------------------ dead units

    def _dead_units(self, decl: S.TrainDecl, roles: Roles, methods: tuple[Method, ...]) -> dict:
        """``dead after N samples``, ``warn dead above S`` and ``resample dead every N steps``, checked."""
        fields: dict = {"dead_alarm": DEFAULT_DEAD_ALARM}
        if decl.dead_after is not None:
            fields["dead_after"] = self.consts.integer(decl.dead_after, "the samples after which a unit is dead")
            if fields["dead_after"] > MAX_DEAD_WINDOW:
                raise SpecError(f"'dead after' takes at most {MAX_DEAD_WINDOW} samples (the largest count kept "
                                f"exactly), got {fields['dead_after']}", decl.dead_after.span)  # fmt: skip
        if decl.dead_alarm is not None:
            share = self.consts.constant(decl.dead_alarm)
            if not 0 <= share <= 1:
                raise SpecError(f"'warn dead above' takes a share of the units, from 0 to 1, got {share:g}",
                                decl.dead_alarm.span, hint="0.5 warns when more than half the units are dead; "
                                "1 never warns")  # fmt: skip
            fields["dead_alarm"] = share
        if decl.resample_every is not None:
            fields["resampling"] = self._resampling(decl.resample_every, roles, methods)
        return fields

    def _resampling(self, every: S.Expr, roles: Roles, methods: tuple[Method, ...]) -> Resampling:
        """What restarts a dead unit: the decoder's column, and the encoder's row and bias when the
        inference runs the encoder (a unit restarted in the decoder alone would stay silent)."""
        steps = self.consts.integer(every, "the steps between resamplings")
        if roles.decoder is None:
            raise SpecError("resampling dead units needs a decoder: a reconstruction term sqerr(x, D @ z)",
                            every.span, hint="remove 'resample dead every ...', or write the reconstruction as "
                            "sqerr(x, D @ z)")  # fmt: skip
        by_encoder = any(method.solver.runs_encoder for method in methods)
        if by_encoder and roles.encoder is None:
            raise SpecError("resampling dead units needs the encoder's matrix: a parameter E[units, inputs] in "
                            "'E @ x'", every.span, hint="write the encoder as e.g. relu(E @ x + b), or remove "
                            "'resample dead every ...'")  # fmt: skip
        encoder = roles.encoder if by_encoder else None
        return Resampling(steps, roles.decoder, encoder, roles.encoder_bias if encoder is not None else None)

    def _activity(self, model: ExprCompiler, latent: Variable, training: Training) -> Activity:
        """The dead-unit tracker's state slots, which every program has."""
        counts = model.declare_state("activity", latent.shape, 0.0, "training samples since each unit last fired")
        window = model.declare_state("dead_window", (), float(training.dead_after or 0),
                                     "training samples without firing that make a unit dead (0: unset)")
        return Activity(counts, window)

    # ------------------------------------------------------------ optimizers

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
