"""The compiled model: a :class:`torch.nn.Module` holding the spec's parameters.

Every public method takes raw inputs ``x`` as the data gives them (a batch of
samples); the preprocessing the spec declares (reshape, ℓ2-normalisation) is part
of the model, so callers never repeat it.  A transcoder's spec (``target y``) also reads
each sample's target, given as ``target=`` (raw, as the data give it); the methods whose
names end in ``_prepared`` or ``_of``, and :meth:`EnergyModel.env`, take preprocessed
inputs and targets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from energydsl.compiler import Program
from energydsl.data import Samples
from energydsl.errors import InferenceCapWarning
from energydsl.expr.compiler import Across, Env
from energydsl.ops.sparse_codes import as_dense
from energydsl.solvers import Batch, Convergence, Problem
from energydsl.solvers.certificate import Certificate, certify
from energydsl.solvers.problem import GramCache, Stamp
from energydsl.solvers.prox import make_prox, uncertified
from energydsl.solvers.stepsize import FEW_SAMPLES, PowerIteration, uses_power_iteration
from energydsl.terms import BoundTerm

STATE_PREFIX = "state_"  # the buffers holding the program's state slots


class EnergyModel(nn.Module):
    """A spec compiled to PyTorch: energy, inference, prediction, constraints.

    ``model.params["W"]`` is the parameter named ``W`` in the spec.
    """

    def __init__(self, program: Program, train_x: torch.Tensor | Samples | None = None, seed: int | None = None):
        super().__init__()
        self.program = program
        self.params = nn.ParameterDict()
        self.masks: dict[str, list[torch.Tensor]] = {}
        self.step_size_estimate = PowerIteration()  # FISTA's step for code maps, warm across batches
        self.learning = False  # inside a training step: the functions of the spec may update their state
        self._across: Across | None = None  # inside a training step shared by several workers: the global batch
        self._shared: dict | None = None  # inside a batch scope: the latent-free values computed so far
        self._grams: dict[tuple, GramCache] = {}  # the Hessians of quadratic smooth parts, by terms (see _gram)
        for slot in program.states:  # buffers: they follow the model's device and dtype
            self.register_buffer(STATE_PREFIX + slot.name, torch.full(slot.shape, float(slot.fill)))
        generator = torch.Generator().manual_seed(program.training.seed if seed is None else seed)
        self._initialize(train_x, generator)

    # ------------------------------------------------------------ construction

    def _initialize(self, train_x: torch.Tensor | Samples | None, generator: torch.Generator) -> None:
        """Evaluate every init expression, in declaration order, then project.

        Without data (``train_x`` None, e.g. when loading a checkpoint) an
        initialiser that draws samples cannot run; parameters are then zeros,
        to be overwritten by the loaded values.  Of samples on disk, an initialiser
        that reads the data reads a bounded sample of them.
        """
        reference = torch.zeros(())
        for plan in self.program.params:
            env = self._init_env(reference, generator, train_x)
            if train_x is None:
                value = torch.zeros(plan.shape)
            else:
                # row-major whatever the initialiser's layout (init 0.03 * D.T would keep D.T's strides, and a
                # transposed parameter makes every product, gradient and optimizer step read it strided)
                value = torch.as_tensor(plan.init(env), dtype=reference.dtype).expand(plan.shape)
                value = value.clone(memory_format=torch.contiguous_format)
            self.params[plan.name] = nn.Parameter(value, requires_grad=plan.learn != "fixed")
            self.masks[plan.name] = [(torch.as_tensor(mask(env)) != 0).to(value.dtype).expand(plan.shape).clone()
                                     for mask in plan.masks]  # fmt: skip
        self.project_()

    def _init_env(self, reference, generator, train_x) -> Env:
        tensors = {"reference": reference, "generator": generator, "train_x": train_x}
        tensors.update({name: p.detach() for name, p in self.params.items()})
        return Env(tensors)

    def _apply(self, fn, recurse=True):
        # keep the masks (plain tensors, not buffers) on the parameters' device
        super()._apply(fn, recurse)
        self.masks = {name: [fn(m) for m in masks] for name, masks in self.masks.items()}
        self._grams.clear()  # stale anyway (the parameters' addresses changed); frees the old Hessians now
        return self

    # ------------------------------------------------------------ basics

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The state the spec's functions keep beside the parameters (see :class:`StateSlot`), by slot name."""
        return {slot.name: getattr(self, STATE_PREFIX + slot.name) for slot in self.program.states}

    def dead_units(self) -> torch.Tensor:
        """A bool per latent unit: True where the unit has not fired (a nonzero code) on any of the last
        ``dead after N`` training samples (see :mod:`energydsl.training.activity`); none before a window is set."""
        activity = self.program.activity
        window = getattr(self, STATE_PREFIX + activity.window)
        return (getattr(self, STATE_PREFIX + activity.counts) >= window) & (window > 0)

    @contextmanager
    def batch_scope(self):
        """Within the block — one batch's encoding, inference and energy — the lets that do not read the
        latent (``let pre = E @ (x - b_dec) + b_enc``) are computed once, not once by the encoder and
        again by the energy terms that read them.  Every evaluation in the block must be of the same
        inputs and parameters."""
        outer, self._shared = self._shared, {}
        try:
            yield
        finally:
            self._shared = outer

    @contextmanager
    def learning_step(self, across: Across | None = None):
        """Within the block, the spec's functions update their state (a training step's forward pass);
        it is a :meth:`batch_scope` too.  ``across``: the global batch, when several workers share it."""
        self.learning, self._across = True, across
        try:
            with self.batch_scope():
                yield
        finally:
            self.learning, self._across = False, None

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device if self.params else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype if self.params else torch.float32

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.program.terms)

    def preprocess(self, x) -> torch.Tensor:
        """Raw samples ``(B, ...)`` → what the spec's input variable holds."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        shape = self.program.input.shape
        if x.dim() == 0 or x[0].numel() != math.prod(shape):
            raise ValueError(f"expected a batch of samples with {math.prod(shape)} values each "
                             f"(input '{self.program.input.name}' is {list(shape)}), got shape {list(x.shape)}")  # fmt: skip
        x = x.reshape((x.shape[0],) + shape)
        if self.program.normalize == "l2":
            flat = x.flatten(1)
            x = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(x)
        return x

    def preprocess_target(self, target) -> torch.Tensor | None:
        """Raw targets ``(B, ...)`` → what the spec's target variable holds (reshaped, as they are
        otherwise); None stays None."""
        declared = self.program.target
        if target is None:
            return None
        if declared is None:
            raise ValueError(f"spec '{self.name}' declares no target (a transcoder's 'target y')")
        target = torch.as_tensor(target, dtype=self.dtype, device=self.device)
        size = math.prod(declared.shape)
        if target.dim() == 0 or target[0].numel() != size:
            raise ValueError(f"expected a batch of targets with {size} values each (target '{declared.name}' "
                             f"is {list(declared.shape)}), got shape {list(target.shape)}")  # fmt: skip
        return target.reshape((target.shape[0],) + declared.shape)

    def _needs_target(self, target, what: str) -> None:
        """A transcoder's energy reads its target: refuse to evaluate it without one."""
        if target is None and self.program.target is not None:
            raise ValueError(f"{what} of spec '{self.name}' reads its target '{self.program.target.name}': "
                             "pass target=... (one per sample)")  # fmt: skip

    def env(self, x: torch.Tensor, z: torch.Tensor | None, y=None, detach: bool = False, target=None) -> Env:
        """The values an expression of the spec reads: parameters (detached with ``detach``), the
        preprocessed input ``x``, the code ``z``, the label ``y`` and the preprocessed target when given;
        ``dead``, the units the tracker counts as dead (:meth:`dead_units`)."""
        program = self.program
        tensors = {name: (p.detach() if detach else p) for name, p in self.params.items()}
        tensors.update({program.input.name: x, "batch_size": x.shape[0], "reference": x, "detached": detach,
                        "state": self.state, "training": self.learning, "dead": self.dead_units(),
                        "across": self._across})  # fmt: skip
        if z is not None:
            tensors[program.latent.name] = z
        if y is not None and program.label is not None:
            tensors[program.label.name] = torch.as_tensor(y, device=x.device).long()
        if target is not None and program.target is not None:
            tensors[program.target.name] = target
        return Env(tensors, shared=self._shared)

    def active_terms(self, names: Iterable[str] | None, labelled: bool) -> list[BoundTerm]:
        """The terms ``names`` (None: all), less those that need a label when there is none."""
        chosen = self.program.terms if names is None else [t for t in self.program.terms if t.name in set(names)]
        return [t for t in chosen if labelled or not t.term.needs_label]

    # ------------------------------------------------------------ energy

    def terms(self, x, z, y=None, *, target=None) -> dict[str, torch.Tensor]:
        """Each term's weighted energy per sample; terms needing a label are left out without ``y``;
        a transcoder's needs the samples' ``target``."""
        self._needs_target(target, "the energy")
        env = self.env(self.preprocess(x), z, y, target=self.preprocess_target(target))
        return {t.name: t.energy(env) for t in self.active_terms(None, y is not None)}

    def energy(self, x, z, y=None, *, target=None) -> torch.Tensor:
        """Total energy per sample, ``(B,)``."""
        return torch.stack(list(self.terms(x, z, y, target=target).values())).sum(dim=0)

    def energy_of(self, xp, z, y=None, names=None, detach=False, target=None) -> torch.Tensor:
        """The energy per sample of the active terms ``names`` on preprocessed inputs ``xp`` (and targets)."""
        env = self.env(xp, z, y, detach, target)
        return sum(t.energy(env) for t in self.active_terms(names, y is not None))

    # ------------------------------------------------------------ inference

    def encode(self, x) -> torch.Tensor:
        """The encoder's prediction of z (specs with an encoder)."""
        if self.program.encoder is None:
            raise ValueError(f"spec '{self.name}' declares no encoder")
        xp = self.preprocess(x)
        with torch.no_grad():
            return as_dense(self.program.encoder(self.env(xp, None, None)))

    def infer(self, x, y=None, *, target=None, steps: int | None = None, tol: float | None = None,
              gap: float | None = None, certify: bool = False) -> torch.Tensor | Certificate:  # fmt: skip
        """z* for a batch of raw samples, by the spec's inference method.

        A transcoder's inference that minimises the energy (not its encoder alone) needs the
        samples' ``target``, which the energy reads.  ``steps`` and ``tol`` override those of
        the spec's FISTA/ISTA stage (``lars`` and ``omp`` have neither, so they leave them unchanged);
        ``gap`` makes that stage stop once each sample's relative duality gap is at most ``gap``
        (a certified distance to the optimum), whatever the spec says.  Where the method stops at
        its step cap first on some samples, one :class:`~energydsl.errors.InferenceCapWarning` says
        how many and how far.  With ``certify``, the result is a :class:`Certificate`: the codes,
        their energy and an upper bound on each sample's distance to the optimal energy
        (:meth:`certificate`).
        """
        reports: list[Convergence] = []
        with torch.no_grad():  # not a decorator: the warning's stacklevel points at the caller
            z = self.infer_prepared(self.preprocess(x), y, None, steps=steps, tol=tol, gap=gap, convergence=reports,
                                    target=self.preprocess_target(target))  # fmt: skip
        messages = [message for message in (report.warning() for report in reports) if message is not None]
        if messages:
            warnings.warn("; ".join(messages), InferenceCapWarning, stacklevel=2)
        z = as_dense(z)
        return self.certificate(x, z, y, target=target) if certify else z

    def certificate(self, x, z, y=None, *, target=None, names=None) -> Certificate:
        """How far the codes ``z`` of raw samples ``x`` are from the optimum of the energy inference minimises
        (the terms ``names``, default: the spec's inference terms; those needing a label left out without ``y``):
        a :class:`~energydsl.solvers.certificate.Certificate` with each sample's energy and duality gap.
        Raises ``ValueError`` with the reason where that energy has no duality gap (an inhibition or
        classification term, an encoder-only energy with a term that is not a sum of squares)."""
        xp = self.preprocess(x)
        problem = self.problem(xp, y, names, self.preprocess_target(target))
        z = torch.as_tensor(z, dtype=self.dtype, device=self.device).reshape((xp.shape[0],) + self.program.latent.shape)
        return certify(problem, z)

    def infer_prepared(self, xp, y=None, names=None, *, differentiable=False, steps=None, tol=None, gap=None,
                       convergence: list[Convergence] | None = None, target=None) -> torch.Tensor:  # fmt: skip
        """Inference on preprocessed inputs ``xp`` (and targets), with the terms ``names`` active (None: all).

        Each method of the spec's chain (``encoder then fista(...)``) starts from the previous
        one's code.  With ``differentiable`` (training a spec inferred by its encoder alone) the
        code keeps its graph, so the loss reaches the encoder's parameters.  Each iterative
        method appends to ``convergence`` (when given) how it ended on each sample.
        """
        encode_graph = differentiable and torch.is_grad_enabled()
        if not all(method.solver.runs_encoder for method in self.program.methods):
            self._needs_target(target, "the inference")

        def encode():
            with torch.set_grad_enabled(encode_graph):
                return self.program.encoder(self.env(xp, None, None))

        batch = Batch(encode=encode, problem=lambda: self.problem(xp, y, names, target),
                      zeros=lambda: xp.new_zeros((xp.shape[0],) + self.program.latent.shape), steps=steps, tol=tol)  # fmt: skip
        z = None
        for method in self.program.methods:
            if not method.solver.runs_encoder:  # an iterative method refines a dense code
                z = None if z is None else as_dense(z)
            target_gap = gap if gap is not None else 0.0 if tol is not None else method.gap
            z = method.solver.solve(replace(batch, gap=target_gap), z, steps or method.steps,
                                    method.tol if tol is None else tol, **method.own_options)  # fmt: skip
        if convergence is not None:
            convergence.extend(batch.reports)
        return z

    def problem(self, xp, y=None, names=None, target=None) -> Problem:
        """The composite problem min_z of the active terms on preprocessed inputs ``xp`` (and targets;
        parameters frozen): what the iterative solvers minimise."""
        chosen = self.program.inference_terms
        active = [t for t in self.active_terms(names, y is not None) if t.degree > 0 and (chosen is None or t.name in chosen)]
        smooth = [t for t in active if t.term.smooth]
        nonsmooth = [t for t in active if not t.term.smooth]

        def smooth_of(xs, ys, ts):
            def smooth_energy(z):
                env = self.env(xs, z, ys, detach=True, target=ts)
                return sum((t.energy(env) for t in smooth), z.new_zeros(z.shape[0]))

            return smooth_energy

        smooth_energy = smooth_of(xp, y, target)

        def nonsmooth_energy(z):
            env = self.env(xp, z, y, detach=True, target=target)
            return sum((t.energy(env) for t in nonsmooth), z.new_zeros(z.shape[0]))

        fixed = self.env(xp, None, y, detach=True, target=target)  # the nonsmooth terms' other arguments (S)
        parts = [(t, (t.unit_weights(fixed).abs(),) if t.unit_weights else tuple(arg(fixed) for arg in t.args[1:]))
                 for t in nonsmooth]  # fmt: skip
        prox, curvature = make_prox(parts, self.program.nonneg)
        quadratic = all(t.quadratic for t in smooth)
        L = None
        if quadratic and uses_power_iteration(self.program.latent):  # large code maps: no Gram matrix
            few = smooth_of(*(None if v is None else v[:FEW_SAMPLES] for v in (xp, y, target)))
            L = self.step_size_estimate(smooth_energy, few, xp.new_zeros((xp.shape[0],) + self.program.latent.shape))
        gram = self._gram(smooth, xp) if quadratic and L is None else None
        return Problem(smooth_energy, prox, quadratic, curvature, lipschitz=L, nonsmooth=nonsmooth_energy,
                       uncertified=uncertified(smooth, nonsmooth, self.program.latent.name), gram=gram)  # fmt: skip

    def _gram(self, smooth: list[BoundTerm], xp: torch.Tensor):
        """Where the Hessian of the smooth terms ``smooth`` is kept across batches: valid while no parameter
        or state buffer has changed (a :class:`~energydsl.solvers.problem.Stamp` of them all, taken now)."""
        key = (tuple((t.name, t.weight) for t in smooth), xp.dtype, xp.device, self.learning)  # a weight may ramp
        cache = self._grams.setdefault(key, GramCache())
        return cache.at(Stamp([*self.parameters(), *self.buffers()]))

    # ------------------------------------------------------------ classification

    def logits(self, x) -> torch.Tensor:
        """The classifier's logits (the first argument of the spec's xent term)."""
        term = self._classifier()
        xp = self.preprocess(x)
        with torch.no_grad():
            z = self.infer_prepared(xp)
            return term.args[0](self.env(xp, z, None))

    def predict(self, x) -> torch.Tensor:
        """Predicted class per sample (specs with an xent term)."""
        return self.logits(x).argmax(dim=1)

    def _classifier(self) -> BoundTerm:
        if self.program.classifier is None:
            raise ValueError(f"spec '{self.name}' has no classifier term (xent)")
        return self.program.classifier

    # ------------------------------------------------------------ constraints

    @torch.no_grad()
    def project_(self) -> None:
        """Project every parameter onto its constraints, in place."""
        for plan in self.program.params:
            p = self.params[plan.name]
            masks = iter(self.masks[plan.name])
            for constraint in plan.constraints:
                constraint.project(p, next(masks) if constraint.masked else None)


