"""Inference on the topographic spec: ADMM on the whole problem vs FISTA with the dual prox.

Same problem for both: 64 held-out patches of ``specs/topographic.energy``, its
overlapping Gaussian windows and λ, and its dictionary — the trained one of a run
directory given as the argument (``energydsl run specs/topographic.energy`` writes
``runs/topographic``), else the spec's initial one.  Both stop at the spec's
tolerance (ADMM also at a tenth of it); the figures are the times and each
result's mean energy relative to a float64 ADMM solution at tol 1e-10 (the
optimum, to ~1e-9).  Both run on one thread (ADMM always does: see
``energydsl.infer``); FISTA takes about 25 s a run.  Prints one JSON line; run
by hand:  python benchmarks/topographic.py [RUN_DIR]
"""

import dataclasses
import functools
import json
import statistics
import sys
import time

import torch

import energydsl
from energydsl.solvers.fista import fista

SPEC = "specs/topographic.energy"


def model_and_inputs(run_dir: str | None, count: int = 64):
    model = energydsl.load(SPEC)
    if run_dir is not None:
        with torch.no_grad():
            model.params["W"].copy_(energydsl.load_run(run_dir).params["W"])
    return model, model.dataset.x_test[:count]


def solve(model, x, by_admm: bool, steps: int, tol: float) -> torch.Tensor:
    problem = model.problem(model.preprocess(x), None, None)
    if not by_admm:  # a prox that is not ExactProx: FISTA does not hand the problem to ADMM
        problem = dataclasses.replace(problem, prox=functools.partial(problem.prox))
    return fista(problem, x.new_zeros(x.shape[0], 256), steps, tol)


@torch.no_grad()
def main(run_dir: str | None = None, repeats: int = 3):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, x = model_and_inputs(run_dir)
    method = model.program.methods[0]
    reference_model = energydsl.load(SPEC).double()
    reference_model.params["W"].copy_(model.params["W"].double())
    optimum = reference_model.energy(x.double(), solve(reference_model, x.double(), True, 20000, 1e-10)).mean()
    # ADMM's residual test is looser than FISTA's step test here: admm_tol/10 compares them at
    # a similar energy
    settings = {"admm": (True, method.tol), "admm_tol/10": (True, method.tol / 10),
                "fista_dual_prox": (False, method.tol)}  # fmt: skip
    timings, gaps = {name: [] for name in settings}, {}
    for _ in range(repeats):
        for name, (by_admm, tol) in settings.items():
            start = time.perf_counter()
            z = solve(model, x, by_admm, method.steps, tol)
            timings[name].append(time.perf_counter() - start)
            energy = reference_model.energy(x.double(), z.double()).mean()
            gaps[name] = float((energy - optimum) / optimum)
    medians = {name: statistics.median(t) for name, t in timings.items()}
    print(json.dumps({
        "benchmark": "topographic",
        "dictionary": "trained" if run_dir else "initial",
        "samples": x.shape[0],
        "seconds": {name: round(t, 3) for name, t in medians.items()},
        "speedup": {name: round(medians["fista_dual_prox"] / medians[name], 1) for name in ("admm", "admm_tol/10")},
        "relative_energy_gap": {name: float(f"{g:.2e}") for name, g in gaps.items()},
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
