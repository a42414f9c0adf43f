"""The amortisation gap of every shipped encoder spec: the README's table.

For each spec and seed: ``energydsl run specs/<spec>.energy --seed S --out runs/gap/<spec>-S``,
then ``energydsl gap runs/gap/<spec>-S`` (through the Python API: :func:`energydsl.api.train`
and :func:`energydsl.api.gap_run`), each spec as it ships (its own data, sizes and epochs).
Prints a markdown table, each figure the mean ± standard deviation over the seeds, and writes
``benchmarks/results/gap_table.json``.  Run by hand::

    python benchmarks/gap_table.py                          # every encoder spec, seeds 0 1 2
    python benchmarks/gap_table.py --specs drsae,psd --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# One numba thread: once the lasso homotopy (numba, parallel over samples) has run in a process, its
# idle worker threads spin, and on a 2-core machine every later training step in that process took
# about 20 times longer (DrSAE: 50 s an epoch against 2.9 s).  Issue 20 is about making the package
# immune; until then this script, which trains after each measurement, keeps numba to one thread.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import energydsl  # noqa: E402  (after the environment above)
from energydsl.api import gap_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gap_table.json"
SPECS = ("drsae", "drsae_sgd", "lista", "psd", "sae_relu", "sae_topk", "sae_batchtopk", "sae_jumprelu", "sae_gated",
         "sae_matryoshka", "transcoder")  # fmt: skip
COLUMNS = (("encoder.gap.mean", "gap (mean)"), ("encoder.gap.p90", "gap (p90)"),
           ("refined.closed", "closed by refining"), ("encoder.recon_error", "error, encoder"),
           ("optimal.recon_error", "error, optimal"), ("support.precision", "support precision"),
           ("support.recall", "support recall"), ("encoder.f1", "F1, encoder"), ("optimal.f1", "F1, optimal"))  # fmt: skip


def measure(spec: str, seed: int, runs: Path) -> dict:
    """Train the spec with this seed, then measure its gap; the figures, with the training time."""
    out = runs / f"{spec}-{seed}"
    model = energydsl.load(ROOT / "specs" / f"{spec}.energy", seed=seed)
    start = time.perf_counter()
    energydsl.train(model, out=out, force=True)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    try:
        figures = gap_run(out)
    except ValueError as error:  # an energy energydsl has no optimum for: the table says why
        return {"error": str(error), "train_seconds": round(trained, 1)}
    return {**figures, "train_seconds": round(trained, 1), "gap_seconds": round(time.perf_counter() - start, 1)}


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.1g}" if len(values) > 1 else ""
    return f"{mean:.3g}{spread}"


def table(results: dict[str, list[dict]]) -> str:
    head = "| spec | optimum | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for spec, runs in results.items():
        if "error" in runs[0]:
            lines.append(f"| `{spec}` | {runs[0]['error']} |" + " |" * len(COLUMNS))
            continue
        certified = "certified" if runs[0]["amortisation.certified"] else "OMP, not certified"
        cells = [cell([run[f"amortisation.{key}"] for run in runs if f"amortisation.{key}" in run]) for key, _ in COLUMNS]
        lines.append(f"| `{spec}` | {certified} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=",".join(SPECS), help="comma-separated spec names")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "gap", help="where the runs are written")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file the figures are added to")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for spec in args.specs.split(","):
        results[spec] = []
        for seed in args.seeds:
            results[spec].append(measure(spec, seed, args.runs))
            print(f"{spec} seed {seed}: {results[spec][-1]}", flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(table({spec: results[spec] for spec in results}))


if __name__ == "__main__":
    main()
