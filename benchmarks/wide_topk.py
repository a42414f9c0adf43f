"""Wide TopK dictionaries at the cost of k: a whole training step against its encoder's dense product.

    python benchmarks/wide_topk.py [--units 4096 16384 65536] [--dim 512] [--batch 4096] [--k 32]
                                   [--repeats 5] [--dense]

For each width, ``specs/sae_topk.energy`` (TopK with the auxiliary-K loss, Adam, unit-norm decoder
columns) with ``units`` and ``k`` set, on Gaussian activations of ``--dim`` dimensions, times
side by side in one process:

* ``forward``: the encoder's dense forward product alone, ``addmm(b_enc, x - b_dec, E.T)``, the one
  product as wide as the dictionary that a TopK step cannot avoid;
* ``step``: one whole training step of the generic loop (encoder, top k, decoder, energy, backward,
  Adam, the decoder's projection), as ``energydsl run`` takes it;
* with ``--dense``, ``dense step``: the same step with the codes computed densely
  (``topk(relu(pre) * 1, k)`` defeats the sparse form), what every step cost before.

Medians of ``--repeats`` alternated repetitions after one warm-up; prints one JSON object per width
and writes them all to ``benchmarks/results/wide_topk.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import energydsl
from energydsl.data import Dataset
from energydsl.training.loop import make_optimizers, train_step

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "sae_topk.energy"
RESULTS = ROOT / "benchmarks" / "results" / "wide_topk.json"


def activations(dim: int, count: int) -> Dataset:
    x = torch.randn(count, dim, generator=torch.Generator().manual_seed(0))
    return Dataset("gaussian", x, x[:256], None, None, None)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(units: int, dim: int, batch: int, k: int, repeats: int, dense: bool) -> dict:
    data = activations(dim, batch)
    source = SPEC.read_text()
    spec = source.replace("topk(relu(pre), k)", "topk(relu(pre) * 1, k)") if dense else source
    model = energydsl.load(spec, set={"units": units, "k": k, "batch": batch}, data=data)
    optimizers = make_optimizers(model)
    E, b_enc, b_dec = (model.params[name] for name in ("E", "b_enc", "b_dec"))
    x = data.x_train

    def forward():
        with torch.no_grad():
            torch.addmm(b_enc, x - b_dec, E.T)

    def step():
        with model.batch_scope():
            train_step(model, optimizers, x, None, None)

    step(), forward()  # warm-up
    times = {"forward": [], "step": []}
    for _ in range(repeats):
        times["forward"].append(timed(forward))
        times["step"].append(timed(step))
    forward_s, step_s = (statistics.median(times[key]) for key in ("forward", "step"))
    return {"units": units, "dim": dim, "batch": batch, "k": k, "codes": "dense" if dense else "sparse",
            "forward_s": round(forward_s, 4), "step_s": round(step_s, 4), "ratio": round(step_s / forward_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense", action="store_true", help="also time the step with dense codes")
    args = parser.parse_args()
    rows = []
    for units in args.units:
        for dense in (False, True) if args.dense else (False,):
            row = measure(units, args.dim, args.batch, args.k, args.repeats, dense)
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
