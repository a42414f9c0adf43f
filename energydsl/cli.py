"""``energydsl`` on the command line: a thin layer over :mod:`energydsl.api`.

User mistakes print one clear message (for specs: ``file:line:col: message``,
the source line and a caret) and exit 2; they never show a traceback.

Building the parser imports nothing heavy, so ``energydsl --help`` and ``energydsl fmt``
never load torch: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from energydsl._version import __version__
from energydsl.errors import RunError, UserError

if TYPE_CHECKING:
    import torch

    from energydsl.compiler import Program
    from energydsl.training import distributed

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_CHECKPOINT_EVERY = 200  # = api.DEFAULT_CHECKPOINT_EVERY (test_cli checks), here so that --help needs no torch
RUN_DATA_HELP = ("data in place of the data the run trained on (e.g. when it has moved), "
                 "such as 'file(\"PATH\")'; relative paths start from the current folder")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user mistake
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _overrides(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"--set {pair}: expected NAME=VALUE, e.g. --set lam=0.05")
        values[name.strip()] = value.strip()
    return values


def _positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _device(name: str | None) -> torch.device | None:
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def cmd_run(args) -> int:
    from energydsl import api
    from energydsl.runs import guard
    from energydsl.training import distributed

    overrides = _overrides(args.set)
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every {args.checkpoint_every}: expected a number of steps >= 0")
    device = _device(args.device)
    if args.nproc is not None:
        program = api.compile_program(args.spec, overrides, args.data)  # spec mistakes show here, not once per worker
        out = Path(args.out) if args.out else Path("runs") / program.name
        # so do a run directory in the way, and --force; rank 0 takes the lock when it starts
        _, moved = guard.claim(out, resume=args.resume, force=args.force, hold=False)
        if moved is not None:
            print(guard.moved_note(out, moved), file=sys.stderr)
        return distributed.launch(args.nproc, _worker_argv(args), args.nnodes, args.rdzv_endpoint)
    workers = distributed.from_environment(device)
    if workers.device.type == "cuda":
        device = workers.device
    try:
        code = _run(args, overrides, device, workers)
    except BaseException:
        distributed.finish(workers, together=False)
        raise
    distributed.finish(workers)
    return code


def _run(args, overrides: dict, device, workers: distributed.Workers) -> int:
    from energydsl import api
    from energydsl.errors import NumericalError
    from energydsl.reporting.report import REPORT_FILE
    from energydsl.runs.checkpoint import CHECKPOINT_FILE
    from energydsl.training.loop import Interrupted
    from energydsl.training.progress import ConsoleProgress, TensorBoardLog

    model = api.load(args.spec, overrides, data=args.data, device=device, seed=args.seed)
    for warning in model.program.warnings if workers.main else ():
        print(warning.render(), file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / model.name
    epochs = sum(phase.epochs for phase in model.program.training.phases)
    reporters = [ConsoleProgress(epochs, quiet=args.quiet or not workers.main)]
    if args.tensorboard and workers.main:
        reporters.append(TensorBoardLog(out / "tensorboard"))
    resume_hint = f"resume with: energydsl run {args.spec} --resume --out {out}" + "".join(
        f" --set {pair}" for pair in args.set) + (f" --data '{args.data}'" if args.data else "")  # fmt: skip

    def on_step(done: int, total: int, energy: float) -> None:
        for reporter in reporters:
            reporter.step(done, total, energy)

    def on_epoch(metrics: dict) -> None:
        for reporter in reporters:
            reporter.epoch(metrics)

    try:
        with reporters[0]:
            api.train(model, out=out, seed=args.seed, resume=args.resume, force=args.force, on_epoch=on_epoch,
                      on_step=on_step, checkpoint_every=args.checkpoint_every, workers=workers)  # fmt: skip
    except Interrupted as stop:
        if not workers.main:
            return EXIT_INTERRUPTED
        print(f"interrupted after step {stop.step}; saved {out / CHECKPOINT_FILE}\n{resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NumericalError as error:
        raise NumericalError(f"{error}; the last good checkpoint is in {out}/") from None
    finally:
        for reporter in reporters[1:]:
            reporter.close()
    if not workers.main:
        return 0
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))})")
    print(f"report: {out / REPORT_FILE}")
    return 0


def _worker_argv(args) -> list[str]:
    """The ``run`` command line each worker gets: this one without the launcher's options
    (nor ``--force``: the launcher has moved the old run aside already)."""
    argv = ["run", args.spec, "--checkpoint-every", str(args.checkpoint_every)]
    argv += [f"--set={pair}" for pair in args.set]
    for flag in ("data", "out", "seed", "device"):
        if getattr(args, flag) is not None:
            argv.append(f"--{flag}={getattr(args, flag)}")
    argv += [f"--{flag}" for flag in ("quiet", "resume", "tensorboard") if getattr(args, flag)]
    return argv


def cmd_eval(args) -> int:
    from energydsl import api

    metrics = api.evaluate_run(args.run, data=args.data)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        _print_table(metrics)
    return 0


def _print_table(metrics: dict) -> None:
    width = max(map(len, metrics))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def cmd_gap(args) -> int:
    from energydsl import api

    try:
        metrics = api.gap_run(args.run, data=args.data, samples=args.samples)
    except ValueError as error:  # a run whose energy has no gap to measure (no encoder, no certificate)
        raise RunError(f"{args.run}: {error}") from None
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        _print_table(metrics)
    return 0


def cmd_plot(args) -> int:
    from energydsl import api

    for path in api.plot_run(args.run, data=args.data):
        print(path)
    return 0


def cmd_check(args) -> int:
    from energydsl import api

    status = 0
    overrides = _overrides(args.set)
    for path in args.specs:
        try:
            program = api.compile_program(path, overrides, args.data)
        except UserError as error:
            print(error.render(), file=sys.stderr)
            status = EXIT_USER_ERROR
            continue
        except (MemoryError, RuntimeError) as error:
            if not _out_of_memory(error):
                raise
            print(f"{path}:1:1: out of memory ({_first_line(error)}); the spec's sizes need more memory "
                  "than this machine has", file=sys.stderr)  # fmt: skip
            status = EXIT_USER_ERROR
            continue
        for warning in program.warnings:
            print(warning.render(), file=sys.stderr)
        print(describe(program) if not args.quiet else f"{path}: ok")
    return status


def cmd_explain(args) -> int:
    from energydsl import api
    from energydsl.reporting.explain import explain

    overrides = _overrides(args.set)
    for path in args.specs:
        print(explain(api.compile_program(path, overrides, args.data)))
    return 0


def cmd_docs(args) -> int:
    from energydsl.reporting.reference import reference_markdown

    print(reference_markdown(), end="")
    return 0


def cmd_fmt(args) -> int:
    from energydsl.lang.fmt import format_paths

    return format_paths(args.specs, check=args.check, diff=args.diff)


def cmd_prune(args) -> int:
    from energydsl.runs.prune import prune_run

    report = prune_run(args.run, args.threshold, args.out)
    print(f"kept {report['units_after']} of {report['units_before']} units; wrote {args.out}/")
    return 0


def cmd_export(args) -> int:
    if args.format == "saelens":
        return _export_saelens(args)
    from energydsl.runs.stacking import export, sample_shape, to_torchscript

    network = export(*args.runs, pool=args.pool)
    path = to_torchscript(network, sample_shape(args.runs[-1]), args.output)
    print(f"wrote {path}: raw samples {list(sample_shape(args.runs[-1]))} → features ({len(network)} modules: "
          f"{', '.join(type(m).__name__ for m in network)}); load with torch.jit.load")  # fmt: skip
    return 0


def _export_saelens(args) -> int:
    from energydsl.runs.saelens import export_saelens

    if len(args.runs) != 1 or args.pool is not None:
        raise UserError("--format saelens exports one run (a sparse auto-encoder), without --pool")
    written = export_saelens(args.runs[0], args.output, overwrite=args.force)
    print(f"wrote {written}: load with sae_lens.SAE.load_from_disk({str(args.output)!r})")
    return 0


def describe(program: Program) -> str:
    """A readable summary of a compiled spec."""
    from energydsl.compiler.program import DEFAULT_DEAD_ALARM

    lines = [f"model {program.name}  ({program.spec.path})", f"  data      {program.data.text()}"]
    lines.append(f"  input     {program.input.name}{list(program.input.shape)}"
                 + (f"  normalize {program.normalize}" if program.normalize else ""))  # fmt: skip
    if program.target:
        lines.append(f"  target    {program.target.name}{list(program.target.shape)}")
    if program.label:
        lines.append(f"  label     {program.label.name}: {program.classes} classes")
    latent_shape = list(program.latent.layout or program.latent.shape)
    lines.append(f"  latent    {program.latent.name}{latent_shape}" + ("  >= 0" if program.nonneg else ""))
    for name, structure in program.structures.items():
        lines.append(f"  graph     {name}: {structure.kind}, {structure.size} units")
    for name, family in program.pools.items():
        lines.append(f"  pools     {name}: {len(family.members)} pools ({family.layout()})")
    total = 0
    for plan in program.params:
        count = math.prod(plan.shape)
        total += count
        extras = [plan.learn] + [c.kind + (f" {c.compare} {c.bound:g}" if c.bound else "") for c in plan.constraints]
        lines.append(f"  param     {plan.name}{list(plan.shape)}  {count:,} values  ({', '.join(extras)})")
    lines.append(f"            {total:,} parameter values in all")
    for slot in program.states:
        shape = f"{list(slot.shape)}" if slot.shape else " (a scalar)"
        lines.append(f"  state     {slot.name}{shape}: {slot.description}")
    for term in program.terms:
        lines.append(f"  term      {term.name}: {term.weight_text()} * {term.term.name}"
                     + ("" if term.term.smooth else "  (prox)"))  # fmt: skip
    steps = " then ".join(str(m) for m in program.methods)
    lines.append(f"  infer     {program.latent.name} by {steps}")
    training = program.training
    settings = ", ".join(f"{k}={v:g}" for k, v in training.settings().items())
    lines.append(f"  train     {training.optimizer}({settings}) batch {training.batch} seed {training.seed}")
    for schedule in program.schedules:
        lines.append(f"  ramp      {schedule.describe()}")
    for phase in training.phases:
        extras = ([f"schedule {phase.schedule}"] if phase.schedule != "constant" else []) + (
            [f"lr_scale {phase.lr_scale:g}"] if phase.lr_scale != 1 else [])
        lines.append(f"  phase     {phase.name}: {phase.epochs} epochs, terms {', '.join(phase.terms)}"
                     + "".join(f", {extra}" for extra in extras))  # fmt: skip
    dead = ([f"after {training.dead_after} samples"] if training.dead_after else []) + (
        [f"warn above {training.dead_alarm:g}"] if training.dead_alarm != DEFAULT_DEAD_ALARM else []) + (
        [f"resample every {training.resampling.every} steps"] if training.resampling else [])  # fmt: skip
    if dead:
        lines.append(f"  dead      {', '.join(dead)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="energydsl", description="Energy-based sparse models from .energy specs.")
    parser.add_argument("--version", action="version", version=f"energydsl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="train and evaluate a spec, write a run directory")
    run.add_argument("spec", help="path of a .energy file")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a constant")
    run.add_argument("--data", help="replace the spec's data source, e.g. 'patches(size=8)' or 'file(\"acts.npy\")' "
                                    "(a relative path starts from the working directory)")
    run.add_argument("--out", help="run directory (default: runs/<model name>)")
    run.add_argument("--seed", type=int, help="override the spec's seed")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")
    run.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    run.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="train with N data-parallel workers per node (torch.distributed; gloo on CPU, nccl on GPU)")
    run.add_argument("--nnodes", default="1", help="with --nproc: number of nodes (torchrun's --nnodes)")
    run.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                     help="with --nproc on several nodes: the rendezvous address, the same on every node")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--force", action="store_true",
                     help="start over in a directory that holds a run: the old run moves to OUT.old-N")
    run.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY, metavar="STEPS",
                     help="write the training checkpoint every STEPS steps (0: after each epoch only; "
                          f"default {DEFAULT_CHECKPOINT_EVERY})")  # fmt: skip
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check", help="validate specs and print what they compile to")
    check.add_argument("specs", nargs="+", metavar="SPEC")
    check.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    check.add_argument("--data")
    check.add_argument("--quiet", action="store_true", help="one line per valid spec")
    check.set_defaults(handler=cmd_check)

    explain = commands.add_parser("explain", help="the compiled model: terms, prox, shapes, parameters, FLOPs")
    explain.add_argument("specs", nargs="+", metavar="SPEC")
    explain.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    explain.add_argument("--data")
    explain.set_defaults(handler=cmd_explain)

    fmt = commands.add_parser("fmt", help="rewrite specs in place in the canonical layout (keeps comments)")
    fmt.add_argument("specs", nargs="+", metavar="SPEC")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if a spec is not canonical")
    fmt.add_argument("--diff", action="store_true", help="change nothing; print a unified diff of each spec that would change")
    fmt.set_defaults(handler=cmd_fmt)

    docs = commands.add_parser("docs", help="print the language reference (markdown), generated from the code")
    docs.set_defaults(handler=cmd_docs)

    evaluate = commands.add_parser("eval", help="print the held-out metrics of a trained run, without retraining")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    evaluate.add_argument("--data", metavar="SOURCE", help=RUN_DATA_HELP)
    evaluate.set_defaults(handler=cmd_eval)

    gap = commands.add_parser("gap", help="the amortisation gap of a trained encoder: its codes against the optimal "
                              "codes of the same energy, on held-out samples (adds a section to report.html)")
    gap.add_argument("run", help="run directory")
    gap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    gap.add_argument("--samples", type=_positive, default=2048, metavar="N", help="held-out samples measured (2048)")
    gap.add_argument("--data", metavar="SOURCE", help=RUN_DATA_HELP)
    gap.set_defaults(handler=cmd_gap)

    plot = commands.add_parser("plot", help="rewrite the pictures and report.html of a trained run")
    plot.add_argument("run", help="run directory")
    plot.add_argument("--data", metavar="SOURCE", help=RUN_DATA_HELP)
    plot.set_defaults(handler=cmd_plot)

    export = commands.add_parser("export", help="trained encoders as a TorchScript feature extractor (image → pooled "
                                 "features), or a sparse auto-encoder in SAELens's format")
    export.add_argument("runs", nargs="+", metavar="DIR",
                        help="run directories, first layer first; a stacked run brings the runs below it")
    export.add_argument("-o", "--output", required=True,
                        help="the TorchScript file to write, e.g. features.pt (--format saelens: a directory)")
    export.add_argument("--format", choices=("torchscript", "saelens"), default="torchscript",
                        help="torchscript (default), or saelens: cfg.json + sae_weights.safetensors for "
                             "sae_lens.SAE.load_from_disk")
    export.add_argument("--force", action="store_true", help="--format saelens: replace an existing export")
    export.add_argument("--pool", type=int, default=None,
                        help="L2 pooling window after the last layer (default 2 for code maps, 1 for a vector latent)")
    export.set_defaults(handler=cmd_export)

    prune = commands.add_parser("prune", help="remove rarely active branches of a trained tree")
    prune.add_argument("run", help="run directory of a spec with a tree")
    prune.add_argument("--threshold", type=float, default=0.01,
                       help="keep a branch if one of its units is active on at least this share of samples")  # fmt: skip
    prune.add_argument("--out", required=True, help="run directory for the pruned model")
    prune.set_defaults(handler=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `energydsl check ... | head` ends quietly
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise  # a bug: keep its traceback
        print(f"{getattr(args, 'spec', None) or 'energydsl'}: out of memory ({_first_line(error)}); "
              "the spec's sizes need more memory than this machine has", file=sys.stderr)  # fmt: skip
        return EXIT_USER_ERROR


def _out_of_memory(error: BaseException) -> bool:
    """numpy's MemoryError, torch's allocator failures (CPU and CUDA)."""
    return isinstance(error, MemoryError) or "allocate" in str(error) or "out of memory" in str(error)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
