"""Speed-up of data-parallel training: `energydsl run --nproc 2` vs one process.

Both runs train the same spec with the same global batch and seed (so they do the
same arithmetic); the figure is the training time the runs report themselves
(the sum of their epochs' seconds, without process start-up and data loading),
median of several alternating repetitions.  One process gets both cores as
intra-op threads, each of the two workers one.  Prints one JSON line; run by hand:

    python benchmarks/distributed.py [SPEC] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def training_seconds(spec: str, nproc: int, out: Path) -> float:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    command = [sys.executable, "-m", "energydsl.cli", "run", spec, "--out", str(out), "--quiet"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", nargs="?", default="specs/drsae.energy")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for nproc in (1, 2):
                times[nproc].append(training_seconds(args.spec, nproc, Path(tmp) / f"{nproc}-{repeat}"))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(json.dumps({"spec": args.spec, "cores": os.cpu_count(), "one_process_s": one, "two_processes_s": two,
                      "speedup": round(one / two, 3), "runs": times}))  # fmt: skip


if __name__ == "__main__":
    main()
