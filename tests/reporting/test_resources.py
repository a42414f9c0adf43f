"""The memory guard: the estimate against what the model really allocates, and the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import energydsl
from energydsl.cli import main
from energydsl.reporting import resources
from energydsl.reporting.resources import ResourceError, check_fits, estimate, format_bytes, parse_size
from energydsl.training.loop import make_optimizers, train_step

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30

# W and b learn, S is fixed and masked: 12·20 + 20·20 + 12 = 652 parameter values.
PARAMS_SPEC = """
data synthetic(dim = 12, atoms = 20, count = 200)
input x[12]
latent z[20]
param W[12, 20] init normal(0.3) constrain col_norm <= 1
param b[12]     init 0.1
param S[20, 20] init ones - I constrain mask ones - I learn fixed
energy
  recon   : 0.5 * sqerr(x, W @ z + b)
  sparse  : 0.1 * l1(z)
  inhibit : 0.01 * inhibition(z, S)
infer z by ista(steps = 5)
train
  optimizer {optimizer}
  batch 16
"""
PARAM_VALUES, LEARNING_VALUES, MASKED_VALUES = 652, 252, 400

HUGE_SPEC = """
data mnist
input x[784]
latent z[200000]
param D[784, 200000] constrain col_norm <= 1
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : 0.1 * l1(z)
"""


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(
    ("optimizer", "copies"),
    [("adam(lr = 1e-3)", 2), ("sgd(lr = 0.01, momentum = 0.9)", 1), ("sgd(lr = 0.01)", 0)],
)
def test_parameter_parts_match_what_the_model_and_optimizer_allocate(optimizer, copies):
    model = energydsl.load(PARAMS_SPEC.format(optimizer=optimizer))
    parts = estimate(model.program).parts
    assert parts["parameters"] == PARAM_VALUES * 4 == tensor_bytes(model.params.values())
    assert parts["masks"] == MASKED_VALUES * 4 == tensor_bytes(m for ms in model.masks.values() for m in ms)

    optimizers = make_optimizers(model)
    x = model.dataset.x_train[:16]
    train_step(model, optimizers, x, None, model.term_names)
    grads = [p.grad for p in model.params.values() if p.grad is not None]
    assert parts["gradients"] == LEARNING_VALUES * 4 == tensor_bytes(grads)
    state = [
        value
        for opt in (optimizers.descent, optimizers.ascent)
        if opt is not None
        for param, param_state in opt.state.items()
        for value in param_state.values()
        if torch.is_tensor(value) and value.shape == param.shape  # not Adam's scalar step count
    ]
    assert parts["optimizer state"] == copies * LEARNING_VALUES * 4 == tensor_bytes(state)


def test_parameters_follow_the_dtype():
    program = energydsl.compile_program(PARAMS_SPEC.format(optimizer="adam(lr = 1e-3)"))
    assert estimate(program, dtype=torch.float64).parts["parameters"] == PARAM_VALUES * 8


def test_a_huge_latent_is_refused_before_anything_is_allocated():
    program = energydsl.compile_program(HUGE_SPEC, data_info=((784,), 10))
    needed = estimate(program, 10000)
    assert needed.parts["gram"] == 3 * 200_000**2 * 4  # the (m, m) Gram path: H, the identity, (H + Hᵀ)/2
    assert needed.parts["parameters"] == 784 * 200_000 * 4
    with pytest.raises(ResourceError) as excinfo:
        check_fits(program, samples=10000, available=GiB)
    text = str(excinfo.value)
    assert "\n" not in text
    assert text.startswith(f"spec 'model' needs about {format_bytes(needed.total)} (gram 447.0 GiB, ")
    assert "but 1.0 GiB of memory is available (given); try fewer latent units" in text
    assert text.endswith("or set ENERGYDSL_MEMORY_LIMIT (e.g. 64G) to override")


def test_a_sane_spec_fits(monkeypatch):
    monkeypatch.delenv("ENERGYDSL_MEMORY_LIMIT", raising=False)
    program = energydsl.compile_program(ROOT / "specs" / "sparse_coding.energy")
    needed = check_fits(program, samples=20000, available=8 * GiB)
    assert needed == estimate(program, 20000) and needed.total < 64 * 2**20
    assert needed.parts["dataset"] == 20000 * 144 * 4
    assert check_fits(program, samples=20000) == needed  # against the machine's own memory


def test_the_environment_variable_overrides_the_available_memory(monkeypatch):
    program = energydsl.compile_program(ROOT / "specs" / "sparse_coding.energy")
    monkeypatch.setenv("ENERGYDSL_MEMORY_LIMIT", "1M")
    with pytest.raises(ResourceError, match=r"but 1\.0 MiB of memory is available \(ENERGYDSL_MEMORY_LIMIT\)"):
        check_fits(program, samples=0)
    monkeypatch.setenv("ENERGYDSL_MEMORY_LIMIT", "lots")
    with pytest.raises(ResourceError) as excinfo:
        check_fits(program, samples=0)
    assert str(excinfo.value) == (
        "ENERGYDSL_MEMORY_LIMIT='lots': expected a number of bytes, optionally with a suffix K, M, G or T (e.g. 8G)"
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("8G", 8 * GiB), ("512m", 512 * 2**20), ("1.5GiB", 3 * 2**29), (" 2 KB ", 2048), ("1T", 2**40)],
)
def test_sizes_are_read_in_binary_units(text, size):
    assert parse_size(text) == size


def test_available_memory_reads_meminfo_then_sysconf(tmp_path, monkeypatch):
    monkeypatch.delenv("ENERGYDSL_MEMORY_LIMIT", raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    5242880 kB\n")
    monkeypatch.setattr(resources, "MEMINFO", meminfo)
    assert resources.available_memory() == (5 * GiB, "MemAvailable")

    monkeypatch.setattr(resources, "MEMINFO", tmp_path / "absent")
    fake = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}

    def sysconf(name: str) -> int:
        if name not in fake:
            raise ValueError(f"unrecognized configuration name {name!r}")  # as os.sysconf says
        return fake[name]

    monkeypatch.setattr(os, "sysconf", sysconf)
    assert resources.available_memory() == (4096000, "os.sysconf SC_AVPHYS_PAGES")


def test_load_refuses_a_model_that_does_not_fit(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ENERGYDSL_MEMORY_LIMIT", "64K")  # parameters, state and a batch need more
    source = PARAMS_SPEC.format(optimizer="adam(lr = 1e-3)")
    with pytest.raises(ResourceError, match=r"^spec 'model' needs about .* but 64\.0 KiB of memory is available"):
        energydsl.load(source)
    spec = tmp_path / "small.energy"
    spec.write_text(source)
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spec 'small' needs about ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


POOLS_SPEC = """
data synthetic(dim = 8, atoms = 16, count = 40)
input x[8]
latent z[16]
graph M = torus(4, 4)
pools P = {family}
param W[8, 16]
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : 0.1 * group_l2(z, P)
train
  batch 8
"""


def test_only_overlapping_pools_get_dual_variables():
    overlapping = energydsl.compile_program(POOLS_SPEC.format(family="windows(M, size = 2, stride = 1)"))
    disjoint = energydsl.compile_program(POOLS_SPEC.format(family="blocks(z, 4)"))
    # 16 windows of 4 units; the larger batch is the evaluation's: all 40 samples
    assert estimate(overlapping, 40).parts["dual variables"] == 40 * (8 * 16 * 4 + 4 * 16) * 8
    assert estimate(disjoint, 40).parts["dual variables"] == 0


# Measures the peak resident memory growth (VmHWM after minus VmRSS before) of a fresh
# process across loading MNIST, building DrSAE, 5 training steps and one evaluation.
# A tiny DrSAE runs first so that the growth does not count torch's code pages and
# allocator set-up, which are paid once per process, not per model.
MEASURE = """
import json, sys, torch, energydsl
torch.set_num_threads(1)  # one allocator arena's worth of noise, and fair to a busy machine
from energydsl.data import Dataset
from energydsl.training.loop import evaluate, make_optimizers, train_step

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

def run(model, data, steps):
    optimizers = make_optimizers(model)
    for start in range(0, steps * 64, 64):
        batch = slice(start, start + 64)
        train_step(model, optimizers, data.x_train[batch], data.y_train[batch], model.term_names)
    evaluate(model, data)

g = torch.Generator().manual_seed(0)
x, y = torch.rand(200, 784, generator=g), torch.randint(0, 10, (200,), generator=g)
tiny = Dataset("warm-up", x[:128], x[128:], y[:128], y[128:], 10)
run(energydsl.load(sys.argv[1], set={"units": 16}, data=tiny), tiny, 2)
try:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart VmHWM from the current size
except OSError:
    pass
base = status("VmRSS")
model = energydsl.load(sys.argv[1])
run(model, model.dataset, 5)
print(json.dumps({"growth": status("VmHWM") - base, "samples": len(model.dataset.x_train) + len(model.dataset.x_test)}))
"""


@pytest.mark.slow
def test_drsae_estimate_is_within_three_times_the_measured_peak():
    spec = ROOT / "specs" / "drsae.energy"
    command = [sys.executable, "-c", MEASURE, str(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    needed = estimate(energydsl.compile_program(spec), measured["samples"]).total
    ratio = needed / measured["growth"]
    assert 1 / 3 <= ratio <= 3, f"estimate {needed:,} B, measured growth {measured['growth']:,} B"


def test_lars_counts_its_gram_matrix_and_factor_workspaces():
    program = energydsl.compile_program(ROOT / "tests" / "specs" / "ok" / "lasso_lars.energy")
    m = program.latent.shape[0]
    workspaces = torch.get_num_threads() * m * m * 8  # one float64 Cholesky factor per thread
    assert estimate(program).parts["gram"] == 4 * m * m * 4 + workspaces  # H read off, its copy (float32)


# A small model on a file of 200,000 × 16 float32 samples (12.2 MiB on disk).
FILE_SPEC = """
model acts
data file("acts.npy")
input x[16]
latent z[8]
param D[16, 8] constrain col_norm <= 1
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : 0.1 * l1(z)
infer z by ista(steps = 5)
train
  batch 64
"""


@pytest.fixture
def acts_spec(tmp_path):
    np.save(tmp_path / "acts.npy", np.zeros((200_000, 16), np.float32))
    spec = tmp_path / "acts.energy"
    spec.write_text(FILE_SPEC)
    return spec


def test_data_loaded_whole_is_refused_before_it_is_read_and_shards_are_suggested(acts_spec, monkeypatch, capsys):
    from energydsl.data import formats

    def no_reading(self):
        raise AssertionError(f"{self.name} was read")

    monkeypatch.setattr(formats.ArrayRef, "load", no_reading)
    monkeypatch.setenv("ENERGYDSL_MEMORY_LIMIT", "20M")
    with pytest.raises(ResourceError) as excinfo:
        energydsl.load(acts_spec)
    text = str(excinfo.value)
    assert "\n" not in text and "(dataset 24.4 MiB, " in text  # stored float32, and two float32 copies
    assert 'try fewer samples, or stream the samples from disk with data shards("...")' in text
    assert main(["run", str(acts_spec), "--out", str(acts_spec.parent / "run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.chdir(acts_spec.parent)  # a path in data= starts from the working directory
    streamed = energydsl.load(acts_spec, data='shards("acts.npy")')  # the same samples, streamed, fit
    assert len(streamed.dataset.x_train) == 160_000


def test_the_footprint_of_shards_counts_the_batches_read_ahead_and_the_held_out_samples(acts_spec):
    from energydsl.data import data_footprint
    from energydsl.data.streamed import READ_AHEAD

    def footprint(batch=64, **kwargs):
        return data_footprint("shards", ("acts.npy",), kwargs, base_dir=acts_spec.parent, batch=batch)

    per_sample = 16 * (4 + 8)  # stored, as float32, and the copy in the order asked for
    big = 50_000  # batches whose read-ahead outweighs the sample that initialisers may read
    assert footprint(batch=big + 100) - footprint(batch=big) == (READ_AHEAD + 1) * 100 * per_sample
    assert footprint(batch=64) == footprint(batch=128)  # small batches: the initialisers' sample weighs more
    assert footprint(test_samples=1000) - footprint(test_samples=500) == 500 * per_sample
    assert footprint(test_samples=10**6) == footprint(test_samples=40_000)  # at most every held-out sample
