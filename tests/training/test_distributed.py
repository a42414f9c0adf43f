"""Data-parallel training with torch.distributed: N workers give what one gives.

The global batch is the spec's, whatever the number of workers; every worker
infers on its shard and the gradients are summed, so 2 processes and 1 process
reach the same parameters up to float32 rounding (the order of the sums differs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import SPARSE_ADAM

import energydsl
from energydsl.cli import main
from energydsl.data.streamed import StreamedSamples
from energydsl.training.distributed import Workers
from energydsl.training.feed import epoch_batches, epoch_order, worker_batches
from energydsl.training.loop import Interrupted

# tight inference, so that sharded and whole-batch solves agree to float32 rounding
FISTA_SPEC = SPARSE_ADAM.replace("fista(steps = 100, tol = 1e-5)", "fista(steps = 500, tol = 1e-7)").replace(
    "epochs 4", "epochs 2")
# a BatchTopK SAE: the k·B largest entries of the global batch, whichever worker holds them
BATCHTOPK_SPEC = (Path(__file__).resolve().parents[2] / "specs" / "sae_batchtopk.energy").read_text().replace(
    "count = 60000", "count = 3000").replace("const epochs = 5", "const epochs = 2").replace(
    "const units  = 512", "const units  = 64")  # fmt: skip
# a transcoder inferred by FISTA: each worker's inference and energy read its shard of the targets
TRANSCODER_SPEC = """
data features(dim = 8, features = 12, count = 600, target_dim = 5, seed = 1)
input  x[d]
target y[e]
latent z[12]
param D[e, 12]  init normal(0.3)  constrain col_norm <= 1
param E[12, d]  init normal(0.3)
energy
  recon  : 0.5 * sqerr(y, D @ z)
  fit    : 0.5 * sqerr(z, E @ x)
  sparse : 0.05 * l1(z)
infer z by fista(steps = 500, tol = 1e-7)
train
  optimizer adam(lr = 0.01)
  batch 64
  epochs 2
"""


def final_params(directory) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(directory / "model.safetensors"))


def run_workers(spec, out, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "energydsl.cli", "run", str(spec), "--out", str(out), "--quiet", "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        scale = b[name].abs().max().clamp_min(1e-6)
        assert (value - b[name]).abs().max() <= 2e-5 * scale, name


@pytest.mark.slow
@pytest.mark.parametrize("source", ["fista", "drsae", "transcoder", "batchtopk", "batchtopk_dense"])
def test_two_workers_reach_the_parameters_of_one(tmp_path, source, drsae_source):
    """FISTA inference (sharded solves), an encoder with labels (sharded labels), a transcoder (sharded
    targets), BatchTopK (a selection over the global batch) with sparse and with dense codes."""
    spec = tmp_path / f"{source}.energy"
    dense_batchtopk = BATCHTOPK_SPEC.replace("batchtopk(relu(pre), k)", "batchtopk(relu(pre) * 1, k)")
    spec.write_text({"fista": FISTA_SPEC, "drsae": drsae_source, "transcoder": TRANSCODER_SPEC,
                     "batchtopk": BATCHTOPK_SPEC, "batchtopk_dense": dense_batchtopk}[source])  # fmt: skip
    alone = tmp_path / "one"
    energydsl.train(energydsl.load(spec), out=alone)
    run_workers(spec, tmp_path / "two")
    assert_close(final_params(tmp_path / "two"), final_params(alone))
    written = {p.name for p in (tmp_path / "two").iterdir()}
    assert {"model.safetensors", "metrics.jsonl", "summary.json", "checkpoint.safetensors"} <= written
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes


@pytest.mark.slow
def test_two_workers_resume_a_checkpoint(tmp_path):
    spec = tmp_path / "fista.energy"
    spec.write_text(FISTA_SPEC)
    reference = tmp_path / "reference"
    energydsl.train(energydsl.load(spec), out=reference)
    out = tmp_path / "run"

    def stop_after_first_epoch(metrics):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        energydsl.train(energydsl.load(spec), out=out, on_epoch=stop_after_first_epoch)
    run_workers(spec, out, "--resume")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert_close(final_params(out), final_params(reference))


# A worker's whole life in a group: join, make an optimizer after the group exists (its first
# use imports torch._dynamo and, through it, modules that capture the default group), sum a
# gradient, leave.  Prints what finish() reports: whether the group is really gone.
WORKER_LIFE = """
import sys
import torch
from energydsl.training.distributed import finish, from_environment

workers = from_environment(None)
weight = torch.nn.Parameter(torch.ones(3))
optimizer = torch.optim.Adam([weight])
(weight * (workers.rank + 1)).sum().backward()
workers.sum_gradients_([weight])
optimizer.step()
sys.stdout.write(f"rank {workers.rank}: gradient {weight.grad.tolist()}, group freed {finish(workers)}\\n")
"""  # one write: the workers share the launcher's unbuffered stdout


@pytest.mark.slow
def test_leaving_frees_the_group_and_its_threads(tmp_path):
    """A group that outlives destroy_process_group keeps gloo's threads alive into interpreter
    shutdown, where one of them, still releasing the last collective's tensors, asks for the GIL
    and is ended by std::terminate (SIGABRT now and then, after the run was written)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_LIFE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {rank}: gradient [3.0, 3.0, 3.0], group freed True" for rank in (0, 1)]  # 1 + 2


def test_cuda_without_a_gpu_is_one_line_before_any_worker_starts(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "fista.energy"
    spec.write_text(FISTA_SPEC)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a worker was launched"))
    assert main(["run", str(spec), "--nproc", "2", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "--device cuda: CUDA is not available on this machine\n"


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_global_batch_once(size):
    batch = torch.randperm(23)
    shards = [Workers(rank=r, size=size).shard(batch) for r in range(size)]
    assert torch.equal(torch.cat(shards), batch)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_bad_worker_count_is_a_clear_error(tmp_path, capsys):
    spec = tmp_path / "fista.energy"
    spec.write_text(FISTA_SPEC)
    assert main(["run", str(spec), "--nproc", "0"]) == 2
    assert "--nproc 0: expected at least 1 worker" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_cpu(tmp_path):
    spec = tmp_path / "fista.energy"
    spec.write_text(FISTA_SPEC)
    energydsl.train(energydsl.load(spec), out=tmp_path / "cpu")
    assert main(["run", str(spec), "--out", str(tmp_path / "gpu"), "--device", "cuda", "--quiet"]) == 0
    assert_close(final_params(tmp_path / "gpu"), final_params(tmp_path / "cpu"))


# A TopK auto-encoder on activations streamed from two shards (the last one held out).
SHARDS_SPEC = """
model streamed
data shards("acts", split = "shard", block = 32, window = 2)
input x[12]
latent z[24] >= 0
param D[12, 24] init samples(x) constrain col_norm == 1
param E[24, 12] init 0.1 * D.T
param b[24] init zeros
encoder z = topk(relu(E @ x + b), 3)
energy
  recon : sqerr(x, D @ z)
infer z by encoder
train
  optimizer adam(lr = 1e-2)
  batch 40
  epochs 2
"""


@pytest.mark.slow
def test_two_workers_on_shards_reach_the_held_out_energy_of_one(tmp_path):
    (tmp_path / "acts").mkdir()
    rng = np.random.default_rng(0)
    for part, rows in enumerate((600, 200)):
        np.save(tmp_path / "acts" / f"part_{part}.npy", rng.standard_normal((rows, 12), dtype=np.float32))
    spec = tmp_path / "streamed.energy"
    spec.write_text(SHARDS_SPEC)
    alone = energydsl.train(energydsl.load(spec), out=tmp_path / "one")
    run_workers(spec, tmp_path / "two")
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["energy"] for m in two] == pytest.approx([m["energy"] for m in alone], abs=1e-4)
    assert_close(final_params(tmp_path / "two"), final_params(tmp_path / "one"))


def test_each_worker_reads_only_its_part_of_every_batch():
    read = []

    def reader(positions):
        read.extend(positions.tolist())
        return np.zeros((len(positions), 3), np.float32)

    samples = StreamedSamples("test", 100, (3,), reader, block=10, window=2)
    batches = epoch_batches(epoch_order(samples, torch.Generator().manual_seed(0)), 16, torch.device("cpu"))
    parts = {}
    for rank in (0, 1):
        read.clear()
        fed = list(worker_batches(samples, batches, 0, Workers(rank=rank, size=2), torch.device("cpu")))
        assert [len(x) for _, _, x in fed] == [len(mine) for _, mine, _ in fed] == [8] * 6 + [2]
        parts[rank] = sorted(read)
        assert parts[rank] == sorted(torch.cat([mine for _, mine, _ in fed]).tolist())
    assert sorted(parts[0] + parts[1]) == list(range(100))  # together, every sample once
