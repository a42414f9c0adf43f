"""Speed-up of data-parallel training: `energydsl run --nproc 2` against one process.

Every configuration trains the same spec with the same global batch and seed, so
they take the same steps (up to rounding; FISTA's stopping test sees a worker's shard);
what differs is who computes them:

- ``1 process x 1 thread``   the baseline;
- ``2 processes x 1 thread`` data-parallel, each worker on half of every batch;
- ``1 process x 2 threads``  the other way to use two cores (PyTorch's intra-op threads).

The figure is the time per epoch the run reports itself (``summary.json``'s seconds
over its epochs): training plus the held-out evaluation that rank 0 alone does after
each epoch, without process start-up, data loading and the final pictures, which
``wall_s`` includes.  Each configuration runs ``--repeats`` times, interleaved so that
a burst of load on a shared machine hits all alike; the medians are reported.  Prints
one JSON line.  The default spec is specs/sparse_coding.energy (FISTA on 144x256,
batch 256) on 6,144 patches, where a step's compute dwarfs its all-reduces (the
37k-float gradient and two scalars).

OpenMP's threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise): with
its default active spinning, two threads on two cores that other programs share are up
to 8x slower than one (35 s against 4.5 s of training here), a figure about the
machine's load rather than about threads.  One-thread configurations are unaffected.

    python benchmarks/distributed.py [SPEC] [--data SOURCE] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from energydsl import api

# (processes, torch threads per process)
CONFIGURATIONS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}


def training_samples(spec: str, data: str | None) -> int:
    return api.load_dataset(api.compile_program(spec, None, data)).x_train.shape[0]


def run_once(spec: str, data: str | None, processes: int, threads: int, out: Path, samples: int) -> dict:
    """One `energydsl run`; its epoch time, training throughput and wall time."""
    command = [sys.executable, "-m", "energydsl.cli", "run", spec, "--out", str(out), "--quiet"]
    command += ["--data", data] if data else []
    command += ["--nproc", str(processes)] if processes > 1 else []
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    seconds_per_epoch = summary["seconds"] / summary["epochs"]
    return {"epoch_s": seconds_per_epoch, "wall_s": wall, "samples_per_s": samples / seconds_per_epoch}


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="specs/sparse_coding.energy")
    parser.add_argument("--data", default="patches(size = 12, count = 6144, whiten = zca)",
                        help="data source for the spec ('' keeps the spec's own)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    samples = training_samples(args.spec, args.data or None)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (processes, threads) in CONFIGURATIONS.items():
                out = Path(tmp) / f"{name}-{repeat}"
                runs[name].append(run_once(args.spec, args.data or None, processes, threads, out, samples))
    epoch = {name: median_of(runs[name], "epoch_s") for name in runs}
    print(json.dumps({
        "spec": args.spec, "data": args.data or None, "training_samples": samples, "cpus": os.cpu_count(),
        "repeats": args.repeats, "load_average_1min": round(os.getloadavg()[0], 2),
        "epoch_s": epoch,
        "samples_per_s": {name: median_of(runs[name], "samples_per_s") for name in runs},
        "wall_s": {name: median_of(runs[name], "wall_s") for name in runs},
        "speedup_2_processes_over_1": round(epoch["1x1"] / epoch["2x1"], 3),
        "speedup_2_threads_over_1": round(epoch["1x1"] / epoch["1x2"], 3),
        "runs_epoch_s": {name: [round(run["epoch_s"], 3) for run in runs[name]] for name in runs},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
