"""``energydsl explain``: what a compiled spec computes, as a readable report.

The report lists the variables and parameters (shape, value count, how each
learns, its constraints and initial value), each energy term in plain math with
how inference treats it (smooth, or which exact prox), how inference runs, what
one inference step and one training step cost in FLOPs, and the training plan.

The FLOP counts are measured, not modelled: the compiled model is instantiated
at the spec's real shapes (with random samples standing in for the data) and
the very code that infers and trains runs once under
:class:`torch.utils.flop_counter.FlopCounterMode`.  So the counts follow the
expression closures exactly, hoisted encoder products and the Gram-matrix fast
path included.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Callable

import torch

from energydsl.compiler import Method, ParamPlan, Program
from energydsl.compiler.schedules import ramp_readers
from energydsl.errors import Span
from energydsl.expr.syntax import hoist
from energydsl.lang import spec as S
from energydsl.mechanisms import MECHANISMS
from energydsl.model import EnergyModel
from energydsl.ops.pools import memberships_text, nesting_text
from energydsl.reporting.costs import Costs, SolverCost, fista_method, gram_method, measure, stand_in_model
from energydsl.solvers.stepsize import DENSE_GRAM_MAX_UNITS
from energydsl.terms import TERMS, BoundTerm

WIDTH = 100  # prose lines are wrapped to this width

COUNTING_RULE = (
    "FLOPs count matrix products only: an (m×k)·(k×n) product is 2·m·k·n. They are measured with "
    "torch.utils.flop_counter.FlopCounterMode on the compiled model at the spec's shapes, on a random "
    "batch of {batch}; backward passes are measured too (one product per operand that needs a gradient, "
    "so about 2× the forward). Not counted: elementwise work (activations, soft-thresholds, the dual "
    "prox's iterations), eigenvalue solves and the optimizer's update. Inference counts are upper "
    "bounds: FISTA/ISTA stop early once tol is met (checked every 5 steps). The lars homotopy (numba "
    "kernels) and orthogonal matching pursuit are not counted; only their Gram matrix is."
)


def explain(program: Program) -> str:
    """A readable report of what ``program`` computes, learns and costs."""
    model = stand_in_model(program)
    costs = measure(model)
    sections = [
        _header(program),
        _variables(program),
        _parameters(program),
        _states(program),
        _structures(program),
        _energy(program, model),
        _inference(program, costs),
        _costs(program, costs),
        _training(program),
        _wrapped("Note: " + COUNTING_RULE.format(batch=costs.batch), ""),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


# ---------------------------------------------------------------- source text


def _source_text(program: Program, span: Span) -> str:
    """What the user wrote at ``span``, on one line."""
    lines = program.spec.source.splitlines()
    if span.line == span.end_line:
        text = lines[span.line - 1][span.column - 1 : span.end_column - 1]
    else:
        parts = [lines[span.line - 1][span.column - 1 :]]
        parts += lines[span.line : span.end_line - 1]
        parts.append(lines[span.end_line - 1][: span.end_column - 1])
        text = " ".join(parts)
    return " ".join(text.split())


def _wrapped(text: str, indent: str, first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first, subsequent_indent=indent,
                         break_on_hyphens=False)  # fmt: skip


def _shape(name: str, shape: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(map(str, shape))}]"


def _count(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------- the model's parts


def _header(program: Program) -> list[str]:
    return [f"model {program.name}  ({program.spec.path})", f"data  {program.data.text()}"]


def _variables(program: Program) -> list[str]:
    lines = ["Variables"]
    x = program.input
    note = "  normalised to unit l2 norm inside the model" if program.normalize == "l2" else ""
    lines.append(f"  input   {_shape(x.name, x.shape):<14} {_count(math.prod(x.shape))} values per sample{note}")
    if program.target is not None:
        t = program.target
        lines.append(f"  target  {_shape(t.name, t.shape):<14} {_count(math.prod(t.shape))} values per sample, "
                     "reconstructed from the code of the input")  # fmt: skip
    if program.label is not None:
        lines.append(f"  label   {program.label.name:<14} one of {program.classes} classes per sample")
    z = program.latent
    bound = f"  {z.name} ≥ 0" if program.nonneg else ""
    lines.append(f"  latent  {_shape(z.name, z.shape):<14} {_count(z.shape[0])} values per sample{bound}")
    return lines


def _parameters(program: Program) -> list[str]:
    total = sum(math.prod(p.shape) for p in program.params)
    learned = sum(math.prod(p.shape) for p in program.params if p.learn != "fixed")
    lines = [
        f"Parameters  ({_count(total)} values, {_count(learned)} learned)",
        "  after every learning step each is projected onto its constraints, in the order listed",
    ]
    declarations = {d.name.name: d for d in program.spec.params}
    for plan in program.params:
        decl = declarations[plan.name]
        lines.append(f"  {_shape(plan.name, plan.shape):<16} {_count(math.prod(plan.shape)):>12} values   "
                     f"{_learning(program, plan)}")  # fmt: skip
        lines.append(f"  {'':<16} init {_init_text(program, decl, plan)}")
        if plan.constraints:
            lines.append(f"  {'':<16} constrain {_constraints_text(program, decl, plan)}")
    return lines


def _states(program: Program) -> list[str]:
    if not program.states:
        return []
    lines = ["State  (kept beside the parameters, updated by training steps, saved with the model)"]
    for slot in program.states:
        shape = _shape(slot.name, slot.shape) if slot.shape else f"{slot.name} (a scalar)"
        lines += _wrapped(f"{shape}: {slot.description}", "      ", "  ")
    return lines


def _learning(program: Program, plan: ParamPlan) -> str:
    if plan.learn == "fixed":
        return "fixed (not learned)"
    if plan.lr is not None:
        return f"{plan.learn}, lr {plan.lr:g} (its own)"
    lr = program.training.lr * plan.lr_scale
    scale = f" (= {program.training.lr:g} × lr_scale {plan.lr_scale:g})" if plan.lr_scale != 1 else ""
    return f"{plan.learn}, lr {lr:g}{scale}"


def _init_text(program: Program, decl: S.ParamDecl, plan: ParamPlan) -> str:
    if decl.init is not None:
        return _source_text(program, decl.init.span)
    if len(plan.shape) == 1:
        return "zeros (the default for vectors)"
    return f"normal(1/√{plan.shape[-1]}) (the default for matrices: N(0, 1/fan_in))"


def _constraints_text(program: Program, decl: S.ParamDecl, plan: ParamPlan) -> str:
    written = {c.kind: c for c in decl.constraints}
    parts = []
    for constraint in plan.constraints:  # in the order they are projected
        if constraint.masked:
            parts.append(f"{constraint.kind} " + _source_text(program, written[constraint.kind].value.span))
        elif constraint.bound is not None:
            parts.append(f"{constraint.kind} {constraint.compare} {constraint.bound:g}")
        else:
            parts.append(constraint.kind)
    return ", ".join(parts)


def _structures(program: Program) -> list[str]:
    lines = []
    for name, structure in program.structures.items():
        layout = f" {structure.shape[0]}×{structure.shape[1]}" if structure.shape else ""
        lines.append(f"  graph {name}: {structure.kind}{layout}, {structure.size} units")
    for name, family in program.pools.items():
        sizes = sorted({len(m) for m in family.members})
        size = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
        lines.append(f"  pools {name}: {len(family.members)} pools of {size} units, {family.layout()}; "
                     f"{memberships_text(family)}{nesting_text(family)}")  # fmt: skip
    return ["Structures"] + lines if lines else []


# ---------------------------------------------------------------- the energy


def _energy(program: Program, model: EnergyModel) -> list[str]:
    names = " + ".join(t.name for t in program.terms)
    lines = [f"Energy  E = {names}"]
    calls = {d.name.name: _term_call(d.value) for d in program.spec.energy}
    width = max(len(t.name) for t in program.terms)
    for term in program.terms:
        call = calls[term.name]
        written = _arguments_written(call, term.term.arguments)
        formula = _formula(term, {a: _operand(program, node) for a, node in written.items()})
        weight = "" if term.varying is None and term.weight == 1 else f"{term.weight_text()} · "
        indent = " " * (width + 5)
        lines.append(f"  {term.name:<{width}} = {weight}{formula}")
        lines.append(f"{indent}{_source_text(program, call.span)}: {_argument_shapes(program, model, term, written)}")
        lines += _wrapped(_handling(program, term), indent)
    return lines


def _term_call(node: S.Expr) -> S.Call | None:
    """The energy function of ``weight * function(...)``, found as the compiler splits the weight off."""
    if isinstance(node, S.Call) and node.func in TERMS:
        return node
    if isinstance(node, S.BinOp) and node.op in "*/":
        factors = (node.left, node.right) if node.op == "*" else (node.left,)  # a divisor is a weight
        return next((call for call in map(_term_call, factors) if call is not None), None)
    return None


def _arguments_written(call: S.Call, names: tuple[str, ...]) -> dict[str, S.Expr]:
    """Each argument's expression, by its name in the term's signature."""
    written = dict(zip(names, call.args))
    written.update({kw.name: kw.value for kw in call.kwargs})
    return written


def _operand(program: Program, node: S.Expr) -> str:
    """An argument as written, in parentheses where a sum would read wrongly inside the formula."""
    text = _source_text(program, node.span)
    needs_parentheses = isinstance(node, S.Neg) or (isinstance(node, S.BinOp) and node.op in "+-")
    return f"({text})" if needs_parentheses else text


def _formula(term: BoundTerm, texts: dict[str, str]) -> str:
    formula = term.term.formula or f"{term.term.name}({', '.join('{' + a + '}' for a in term.term.arguments)})"
    for name, text in texts.items():
        formula = formula.replace("{" + name + "}", text)
    return formula


def _argument_shapes(program: Program, model: EnergyModel, term: BoundTerm, written: dict) -> str:
    closures = iter(term.args)
    parts = []
    for name, kind in zip(term.term.arguments, term.term.kinds):
        text = _source_text(program, written[name].span)
        if kind == "pools":
            family = term.term.static["pools"]
            parts.append(f"{text}: {len(family.members)} pools")
        elif kind == "structure":
            structure = term.term.static["structure"]
            parts.append(f"{text}: {structure.kind} of {structure.size} units")
        elif kind == "label":
            next(closures)
            parts.append(f"{text}: label")
        else:
            parts.append(f"{text}: {_value_shape(program, model, next(closures))}")
    return "; ".join(parts)


@torch.no_grad()
def _value_shape(program: Program, model: EnergyModel, closure: Callable) -> str:
    """``[784] per sample`` or ``[64, 64]``: evaluated at two batch sizes to tell the two apart."""
    shapes = []
    for batch in (1, 2):
        x = torch.zeros((batch,) + program.input.shape)
        z = torch.zeros((batch,) + program.latent.shape)
        y = torch.zeros(batch, dtype=torch.long) if program.label is not None else None
        target = torch.zeros((batch,) + program.target.shape) if program.target is not None else None
        value = closure(model.env(x, z, y, detach=True, target=target))
        shapes.append(tuple(value.shape if hasattr(value, "shape") else torch.as_tensor(value).shape))
    if shapes[0][:1] == (1,) and shapes[1][:1] == (2,) and shapes[0][1:] == shapes[1][1:]:
        return f"[{', '.join(map(str, shapes[0][1:]))}] per sample"
    return f"[{', '.join(map(str, shapes[0]))}]" if shapes[0] else "a scalar"


def _handling(program: Program, term: BoundTerm) -> str:
    """How inference treats the term: smooth (and how), or which prox."""
    z = program.latent.name
    label = "; left out of inference when the label is unknown (always at test time)" if term.term.needs_label else ""
    if term.degree == 0:
        return f"constant in {z}: shapes learning only, no part in inference{label}"
    gram = gram_method(program)
    if gram is not None:
        return gram.solver.explain_term(term, z) + (label if term.term.smooth else "")
    if fista_method(program) is None:
        kind = "smooth" if term.term.smooth else "nonsmooth"
        return f"{kind} in {z}; inference is by the encoder, so the term shapes learning only"
    if term.term.smooth:
        shape = f"quadratic in {z}" if term.quadratic else f"not quadratic in {z} (so the step size backtracks)"
        return f"smooth, {shape}: part of the gradient step{label}"
    return "nonsmooth: prox = " + _prox_description(program, term)


def _prox_description(program: Program, term: BoundTerm) -> str:
    has_group = any(t.term.prox_kind == "group" and t.degree > 0 for t in program.terms)
    weight = term.weight_text() if term.varying is None or term.fixed_weight == 1 else f"({term.weight_text()})"
    text = term.term.prox_text(f"τ·{weight}", ", inside the group prox" if has_group else "")
    if term.term.prox_kind == "group" and any(t.term.prox_kind == "separable" and t.degree > 0 for t in program.terms):
        text += ", after the per-unit soft-threshold"
    return text


# ---------------------------------------------------------------- inference and cost


def _inference(program: Program, costs: Costs) -> list[str]:
    z = program.latent.name
    steps = " then ".join(str(m) for m in program.methods)
    lines = [f"Inference  {z} by {steps}"]
    if any(m.solver.runs_encoder for m in program.methods):
        lines += _encoder_lines(program)
    method = fista_method(program)
    if method is not None:
        lines += _solver_lines(program, method, costs.solver)
    gram = gram_method(program)
    if gram is not None:
        lines += _gram_lines(program, gram)
    return lines


def _gram_lines(program: Program, method: Method) -> list[str]:
    """How a method that works on the Gram matrix (lars, omp) runs, as the method tells it."""
    active = [t for t in program.terms if t.degree > 0]
    paragraphs = method.solver.explain(program.latent.name, active, program.nonneg, method.own_options)
    return [line for paragraph in paragraphs for line in _wrapped(paragraph, "    ", "  ")]


def _encoder_lines(program: Program) -> list[str]:
    decl = program.spec.encoders[0]
    z = program.latent.name
    text = _source_text(program, decl.value.span)
    if not isinstance(decl.value, S.Recurrent):
        return [f"  encoder: {z} = {text}, one pass"] + _mechanism_lines(program, decl.value)
    steps = program.roles.recurrent_steps
    body = _source_text(program, decl.value.body.span)
    lines = [f"  encoder: {steps} recurrent steps of {z} ← {body}, from {z} = 0 (weights shared across steps)"]
    hoisted = [_source_text(program, node.span) for node in _hoisted(hoist(decl.value.body, z))]
    if hoisted:
        lines.append(f"  computed once, before the steps (they do not read {z}): {', '.join(hoisted)}")
    return lines + _mechanism_lines(program, decl.value)


def _mechanism_lines(program: Program, node: S.Expr) -> list[str]:
    """What each sparsity mechanism the encoder calls (directly or through its lets) does: the first
    paragraph of its reference entry."""
    lets = {decl.name.name: decl.value for decl in program.spec.lets}
    used = dict.fromkeys(call.func for call in _calls(node, lets) if call.func in MECHANISMS)
    lines = []
    for name in used:
        summary = " ".join(_docstring_paragraph(MECHANISMS[name]).replace("``", "").split())
        lines += _wrapped(summary, "      ", "    ")
    return lines


def _calls(node: S.Expr, lets: dict[str, S.Expr], seen: frozenset = frozenset()) -> list[S.Call]:
    """The calls in ``node`` and in the lets it reads, each let once."""
    if isinstance(node, S.Name) and node.id in lets and node.id not in seen:
        return _calls(lets[node.id], lets, seen | {node.id})
    children = [getattr(node, f) for f in ("left", "right", "operand", "body") if hasattr(node, f)]
    children += list(getattr(node, "args", ())) + [kw.value for kw in getattr(node, "kwargs", ())]
    own = [node] if isinstance(node, S.Call) else []
    return own + [call for child in children for call in _calls(child, lets, seen)]


def _docstring_paragraph(obj) -> str:
    return (inspect.getdoc(obj) or "").split("\n\n")[0]


def _hoisted(node: S.Expr) -> list[S.Expr]:
    """The subexpressions the recurrence computes once (marked by :func:`energydsl.expr.hoist`)."""
    if isinstance(node, S.Call) and node.func == "__once__":
        return [node.args[0]]
    children = [getattr(node, f) for f in ("left", "right", "operand") if hasattr(node, f)]
    children += list(getattr(node, "args", ())) + [kw.value for kw in getattr(node, "kwargs", ())]
    return [found for child in children for found in _hoisted(child)]


def _solver_lines(program: Program, method: Method, solver: SolverCost) -> list[str]:
    z = program.latent.name
    active = [t for t in program.terms if t.degree > 0 and not t.term.needs_label]
    smooth = ", ".join(t.name for t in active if t.term.smooth) or "none"
    nonsmooth = ", ".join(t.name for t in active if not t.term.smooth) or "none"
    start = "the encoder's code" if program.methods[0].solver.runs_encoder else f"{z} = 0"
    lines = [
        f"  {method.solver.summary}, from {start}",
        f"  at most {method.steps} steps; {_stopping_rule(z, method.tol, method.gap)}",
        f"  smooth part (gradient step): {smooth}; nonsmooth part (one exact prox): {nonsmooth}",
    ]
    labelled = [t.name for t in program.terms if t.degree > 0 and t.term.needs_label]
    if labelled:
        lines.append(f"  in training, where the label is known, {', '.join(labelled)} joins the smooth part")
    if program.nonneg:
        lines.append(f"  {z} ≥ 0: applied first inside the prox (clamp at 0)")
    indent = " " * 12
    lines += _wrapped(_gradient_verdict(solver), indent, "  gradient: ")
    lines += _wrapped(GRAM_RULE, indent)
    return lines


def _stopping_rule(z: str, tol: float, gap: float = 0.0) -> str:
    if gap > 0:
        return (f"stops when every sample's duality gap (an upper bound on E({z}ₖ) − E*) is at most {gap:g}·E({z}ₖ), "
                "measured every 10 steps")  # fmt: skip
    return f"stops when every sample's ‖{z}ₖ₊₁ − {z}ₖ‖ ≤ {tol:g}·‖{z}ₖ₊₁‖"


GRAM_RULE = (
    "The rule: the Gram fast path applies when every smooth term is at most quadratic in the latent "
    "(decided when the spec compiles) and its Hessian H is the same for every sample (decided on each "
    "batch: H is read off the energy at unit vectors, then checked at a random point)."
)


def _gradient_verdict(solver: SolverCost) -> str:
    if solver.gram:
        return ("Gram fast path: ∇ = c + z·H, one (batch × m)·(m × m) product per step, with H read off the "
                "energy once while the parameters are unchanged (kept across batches); step size 1/λ_max(H). "
                "It applied on a random batch; a batch where "
                "the check fails falls back to autograd.")  # fmt: skip
    if solver.quadratic:
        return ("autograd (forward and backward of the smooth energy): the smooth part is quadratic, but "
                "its Hessian differs between samples (checked on a random batch) or the latent is code maps of "
                f"more than {DENSE_GRAM_MAX_UNITS} units (no dense Gram matrix); step size from power "
                "iterations of Hessian-vector products.")  # fmt: skip
    return (
        "autograd (forward and backward of the smooth energy): the smooth part is not quadratic; "
        "step size by power iteration, then per-sample backtracking on every step."
    )


def _costs(program: Program, costs: Costs) -> list[str]:
    batch = costs.batch
    header = f"Cost in FLOPs (see the note)   {'per sample':>16}   {'per batch of ' + str(batch):>18}"
    rows: list[tuple[str, int]] = []
    if costs.encoder is not None:
        rows.append(("encoder, whole pass", costs.encoder))
    if costs.solver is not None:
        rows += _solver_rows(program, costs.solver)
    rows.append(("inference, in all (at most)", costs.inference))
    for name, phase in costs.phases.items():
        rows.append((f"training step [{name}]: inference", phase.inference))
        rows.append((f"training step [{name}]: energy + gradient", phase.energy_and_gradient))
        rows.append((f"training step [{name}], in all", phase.train_step))
    lines = [header]
    for label, flops in rows:
        per_sample = flops / batch
        sample = _count(int(per_sample)) if per_sample == int(per_sample) else f"{per_sample:,.1f}"
        lines.append(f"  {label:<44} {sample:>16}   {_count(flops):>18}")
    return lines


def _solver_rows(program: Program, solver: SolverCost) -> list[tuple[str, int]]:
    gram = gram_method(program)
    if gram is not None:
        return [(f"{gram.kind} setup, once per batch (Gram matrix)", solver.setup)]
    method = fista_method(program)
    name = method.kind
    rows = [(f"{name} setup, once per batch" + (" (Gram matrix)" if solver.gram else " (step size)"), solver.setup)]
    rows.append((f"{name} step: gradient" + (" z·H" if solver.gram else " by autograd"), solver.gradient))
    if solver.backtracking:
        rows.append((f"{name} step: energy for backtracking (≥ 1)", solver.backtracking))
    rows.append((f"{name} step: prox", solver.prox))
    rows.append((f"{name} step, in all", solver.step))
    if solver.gram:
        rows.append(("  (the same gradient by autograd)", solver.autograd_gradient))
    return rows


# ---------------------------------------------------------------- training


def _training(program: Program) -> list[str]:
    training = program.training
    values = training.settings()
    options = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else f'{v:g}'}" for k, v in values.items())
    lines = [f"Training  {training.optimizer}({options}), batch {training.batch}, seed {training.seed}"]
    z = program.latent.name
    step = training.entry.explain_step(z)  # None: the gradient step, below
    if step is None and all(m.solver.runs_encoder for m in program.methods):
        step = (f"each batch: {z} = encoder(x), kept differentiable so the energy's gradient reaches the "
                "encoder's parameters; one step on every learned parameter; then the projections")  # fmt: skip
    elif step is None:
        step = (f"each batch: infer {z}* with the parameters frozen; one descent step on the parameters that "
                "descend, one ascent step on those that ascend; then the projections")  # fmt: skip
    lines += _wrapped(step, "    ", "  ")
    total = 0
    for phase in training.phases:
        total += phase.epochs
        schedule = f", {phase.schedule} learning-rate schedule" if phase.schedule != "constant" else ""
        schedule += f", learning rates x {phase.lr_scale:g}" if phase.lr_scale != 1 else ""
        lines.append(f"  phase {phase.name}: {phase.epochs} epochs, terms {', '.join(phase.terms)}{schedule}")
    lines.append(f"  {total} epochs in all")
    lines += _wrapped(_dead_units(training), "    ", "  ")
    for schedule in program.schedules:
        lines += _wrapped(f"ramp {schedule.describe()}, from the run's first step; read by "
                          f"{_ramp_readers(program, schedule.name)}. Set before every step; evaluation uses "
                          "the value at each epoch's end, a trained model the final value", "    ", "  ")  # fmt: skip
    return lines


def _dead_units(training) -> str:
    """The dead-unit window, alarm and resampling in words."""
    window = f"{training.dead_after} training samples" if training.dead_after else "one epoch (≤ 10 million samples)"
    text = f"dead units: silent for {window}; warn when more than {training.dead_alarm:.0%} are dead"
    plan = training.resampling
    if plan is not None:
        parts = [f"decoder column {plan.decoder}[:, j]"] + [f"{what} {name}" for what, name in
                 (("encoder row", plan.encoder), ("encoder bias", plan.encoder_bias)) if name is not None]  # fmt: skip
        text += (f"; every {plan.every} steps each restarts on a badly reconstructed training input "
                 f"({', '.join(parts)}, their optimizer state)")  # fmt: skip
    return text


def _ramp_readers(program: Program, name: str) -> str:
    """What reads a ramped constant: the encoder, lets, terms (their arguments or weights)."""
    readers = ramp_readers(program.spec, name) or ["nothing"]
    return readers[0] if len(readers) == 1 else ", ".join(readers[:-1]) + " and " + readers[-1]
