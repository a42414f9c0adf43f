"""Training a TopK SAE on a set of activations far larger than its memory budget (issue 18).

1. **The set.**  An .npy of ``--rows`` × ``--width`` float32 activations (by default 4,194,304 × 512:
   8 GiB), written once a chunk at a time and cached (``--dir``, default /tmp/energydsl-bench):
   a sparse-dictionary signal, x = D z + noise with ``--features`` unit directions, each sample
   the sum of ``--active`` of them with magnitudes in [0.5, 1.5], so that a TopK SAE has
   something to learn.
2. **Loaded whole, refused.**  ``energydsl run specs/sae_topk.energy --data 'file(...)'`` under
   ``ENERGYDSL_MEMORY_LIMIT`` must stop at once, before reading, with a one-line error.
3. **Streamed, trained.**  The same spec with ``--data 'shards(...)'``, ``units``, ``k``, ``batch`` and
   ``epochs`` set, in a child process under the same budget.  Its peak resident memory is its own
   high-water mark (VmHWM of /proc/PID/status, polled until it exits; ru_maxrss would also count
   this parent's peak, which a child that execs inherits), with its wall time and the training
   seconds of its epochs.
4. **Reading against training.**  In this process, the time to read a batch of the epoch's order
   (``x_train[positions]`` of the shards source, page cache as the run left it), next to the
   run's seconds per training step.

Prints a markdown row and writes ``benchmarks/results/big_activations.json``.  Run by hand, once
(it trains for many minutes on a small machine)::

    nice -n 10 python benchmarks/big_activations.py
    python benchmarks/big_activations.py --rows 262144 --units 256 --out /tmp/small.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "sae_topk.energy"
RESULTS = ROOT / "benchmarks" / "results" / "big_activations.json"
CHUNK = 65536  # samples generated and written at a time


def activations_file(folder: Path, rows: int, width: int, features: int, active: int, seed: int) -> Path:
    """The cached .npy of the set (written once: a temporary file, renamed when complete)."""
    path = folder / f"acts_{rows}x{width}_f{features}_a{active}_s{seed}.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, width)}
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((features, width)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, header)
        for start in range(0, rows, CHUNK):
            stream.write(_chunk(min(CHUNK, rows - start), directions, active, rng).tobytes())
    partial.rename(path)
    return path


def _chunk(count: int, directions: np.ndarray, active: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` samples: ``active`` random directions each, magnitudes in [0.5, 1.5], plus 1 % noise."""
    features, width = directions.shape
    support = rng.integers(0, features, (count, active))
    values = rng.uniform(0.5, 1.5, (count, active)).astype(np.float32)
    codes = scipy.sparse.csr_matrix((values.ravel(), support.ravel(), np.arange(0, count * active + 1, active)),
                                    shape=(count, features))  # fmt: skip
    return (codes @ directions + 0.01 * rng.standard_normal((count, width), dtype=np.float32)).astype(np.float32)


def high_water_mark(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def run_child(arguments: list[str], limit: str) -> dict:
    """``energydsl ARGUMENTS`` in a child under the memory budget: exit code, peak memory, wall time, stderr."""
    env = {**os.environ, "ENERGYDSL_MEMORY_LIMIT": limit}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "energydsl.cli", *arguments], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak = 0
    while child.poll() is None:
        peak = max(peak, high_water_mark(child.pid))
        time.sleep(0.05)
    return {"code": child.returncode, "peak_rss": peak, "wall": time.perf_counter() - start,
            "stderr": child.stderr.read().strip()}  # fmt: skip


def read_time_per_batch(data_text: str, batch: int, batches: int) -> float:
    """Median seconds to read one batch of the epoch's order through the shards source."""
    from energydsl.building import compile_program, load_dataset

    x_train = load_dataset(compile_program(SPEC, None, data_text)).x_train
    order = x_train.order(torch.Generator().manual_seed(1)).batches(batch)
    seconds = []
    for i in range(0, len(order), max(1, len(order) // batches))[:batches]:
        start = time.perf_counter()
        x_train[order[i]]
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/energydsl-bench"), help="where the set is cached")
    parser.add_argument("--rows", type=int, default=4_194_304)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--features", type=int, default=4096, help="directions of the signal")
    parser.add_argument("--active", type=int, default=24, help="directions per sample")
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", default="2G", help="ENERGYDSL_MEMORY_LIMIT of the runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.perf_counter()
    path = activations_file(args.dir, args.rows, args.width, args.features, args.active, seed=0)
    generated = time.perf_counter() - started
    run_dir = args.dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    constants = ["--set", f"units={args.units}", "--set", f"k={args.k}", "--set", f"batch={args.batch}",
                 "--set", f"epochs={args.epochs}"]  # fmt: skip

    whole = run_child(["run", str(SPEC), "--data", f'file("{path}")', "--out", str(run_dir), "--force",
                       *constants], args.limit)  # fmt: skip
    streamed_data = f'shards("{path}")'
    streamed = run_child(["run", str(SPEC), "--data", streamed_data, "--out", str(run_dir), "--force", "--quiet",
                          *constants], args.limit)  # fmt: skip
    if streamed["code"] != 0:
        sys.exit(f"the streamed run failed ({streamed['code']}): {streamed['stderr'][-2000:]}")
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_samples = args.rows - -(-args.rows // 5)
    steps = args.epochs * -(-train_samples // args.batch)
    train_seconds = sum(m["seconds"] for m in history)
    read_seconds = read_time_per_batch(streamed_data, args.batch, batches=20)
    result = {
        "file": str(path), "file_bytes": path.stat().st_size, "samples": args.rows, "width": args.width,
        "signal": {"features": args.features, "active": args.active}, "spec": SPEC.name,
        "units": args.units, "k": args.k, "batch": args.batch, "epochs": args.epochs, "steps": steps,
        "memory_limit": args.limit, "threads": torch.get_num_threads(), "generation_seconds": round(generated, 1),
        "file_source": {"exit": whole["code"], "stderr": whole["stderr"], "seconds": round(whole["wall"], 1),
                        "peak_rss_bytes": whole["peak_rss"]},
        "shards_source": {"exit": streamed["code"], "peak_rss_bytes": streamed["peak_rss"],
                          "wall_seconds": round(streamed["wall"], 1), "train_seconds": round(train_seconds, 1),
                          "seconds_per_step": round(train_seconds / steps, 4),
                          "read_seconds_per_batch": round(read_seconds, 4),
                          "final": {key: history[-1].get(key) for key in ("fvu", "l0", "units.dead", "energy")}},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    gib = 2**30
    print("| set | budget | file() | shards(): peak RSS | wall | s/step | read s/batch | FVU |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.rows:,} × {args.width} float32, {path.stat().st_size / gib:.1f} GiB | {args.limit} "
          f"| {'refused' if whole['code'] == 2 else 'exit ' + str(whole['code'])} "
          f"| {streamed['peak_rss'] / gib:.2f} GiB | {streamed['wall']:.0f} s | {train_seconds / steps:.3f} "
          f"| {read_seconds:.4f} | {history[-1].get('fvu')} |")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
