"""Convolutional and locally connected models: image operators, their shapes and errors,
pools over code maps, and convolutional sparse coding solved exactly.

The central check: FISTA through a convolutional decoder (no Gram matrix, the step
from power iteration) reaches the optimum of a dense solver that knows nothing of
convolutions — the decoder unrolled into a matrix by applying it to unit vectors,
solved by plain FISTA in float64 with the exact Lipschitz constant.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import energydsl
from energydsl.data import Dataset
from energydsl.errors import SpecError
from energydsl.ops import conv
from energydsl.ops.pools import GroupNorms, maps
from energydsl.solvers import problem as infer
from energydsl.solvers import stepsize

IMAGE = (1, 8, 8)


def image_data(count: int = 40, seed: int = 0, shape=IMAGE) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((count,) + shape, generator=generator)
    return Dataset("images", x[: count - 8], x[count - 8 :], None, None, None)


CONV_SPARSE = """
model conv_sc
data mnist
const lam = 0.05
input x[1, 8, 8]
latent z[4, 8, 8] >= 0
param D[4, 1, 3, 3] init normal(0.3) constrain filter_norm <= 1
pools P = maps(z, 2)
energy
  recon  : 0.5 * sqerr(x, conv_t(D, z, padding = 1))
  sparse : lam * group_l2(z, P)
infer z by fista(steps = 4000, tol = 1e-12)
train optimizer sgd(lr = 0.01) batch 8 epochs 1
"""


def compile_error(source: str) -> str:
    with pytest.raises(SpecError) as info:
        energydsl.compile_program(source, data_info=((1, 8, 8), None))
    return str(info.value)


# ---------------------------------------------------------------- operators


def test_conv_t_is_the_adjoint_of_conv():
    generator = torch.Generator().manual_seed(1)
    K = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 2, 9, 9, generator=generator, dtype=torch.float64)
    geometry = conv.Geometry(stride=2, padding=1)
    shape = conv.output_shape("conv", tuple(K.shape), (2, 9, 9), geometry)
    y = torch.randn((3,) + shape, generator=generator, dtype=torch.float64)
    back = conv.output_shape("conv_t", tuple(K.shape), shape, geometry)
    assert shape == (5, 5, 5) and back == (2, 9, 9)
    forward = conv.apply("conv", K, x, geometry, shape)
    adjoint = conv.apply("conv_t", K, y, geometry, back)
    assert torch.allclose((forward * y).sum(), (x * adjoint).sum(), rtol=1e-12)


def test_local_with_one_filter_everywhere_is_a_convolution_and_local_t_its_adjoint():
    generator = torch.Generator().manual_seed(2)
    K = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    geometry = conv.Geometry(stride=2, padding=1)
    out = conv.output_shape("conv", tuple(K.shape), (2, 10, 10), geometry)  # (3, 5, 5)
    L = K[:, None, None].expand(3, out[1], out[2], 2, 4, 4).contiguous()  # the same filter at every position
    assert conv.output_shape("local", tuple(L.shape), (2, 10, 10), geometry) == out
    x = torch.randn(4, 2, 10, 10, generator=generator, dtype=torch.float64)
    assert torch.allclose(conv.apply("local", L, x, geometry, out), F.conv2d(x, K, stride=2, padding=1))
    L = torch.randn(L.shape, generator=generator, dtype=torch.float64)  # now a filter per position
    y = torch.randn((4,) + out, generator=generator, dtype=torch.float64)
    back = conv.output_shape("local_t", tuple(L.shape), out, geometry)
    assert back == (2, 10, 10)
    forward, adjoint = conv.apply("local", L, x, geometry, out), conv.apply("local_t", L, y, geometry, back)
    assert torch.allclose((forward * y).sum(), (x * adjoint).sum(), rtol=1e-12)


def test_a_spec_computes_its_encoder_with_the_operators_and_per_map_parameters():
    source = """
model enc
data mnist
input x[1, 8, 8]
latent z[3, 8, 8] >= 0
param E[3, 1, 3, 3]
param b[3] init 0.1
param g[3] init 2
encoder z = g * relu(conv(E, x, padding = 1) - b)
energy
  recon : 0.5 * sqerr(x, conv_t(E, z, padding = 1))
  sparse : 0.1 * l1(z)
infer z by encoder
"""
    model = energydsl.load(source, data=image_data())
    x = model.dataset.x_test
    E = model.params["E"].detach()
    expected = 2 * torch.relu(F.conv2d(x, E, padding=1) - 0.1)
    z = model.encode(x)
    assert z.shape == (8, 3 * 64)  # code maps are stored flat, channel-major
    assert torch.allclose(z, expected.flatten(1))
    recon = 0.5 * ((x - F.conv_transpose2d(expected, E, padding=1)) ** 2).flatten(1).sum(1)
    assert torch.allclose(model.terms(x, z)["recon"], recon, rtol=1e-5)


def test_samples_init_cuts_unit_norm_patches_from_training_images():
    source = CONV_SPARSE.replace("init normal(0.3)", "init samples(x)")
    data = image_data()
    D = energydsl.load(source, data=data).params["D"].detach()
    assert torch.allclose(D.flatten(1).norm(dim=1), torch.ones(4))
    patches = data.x_train.unfold(2, 3, 1).unfold(3, 3, 1)  # (N, 1, 6, 6, 3, 3): every 3x3 patch
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 9)
    patches = patches / patches.norm(dim=1, keepdim=True)
    for filter_ in D.flatten(1):
        assert (patches - filter_).norm(dim=1).min() < 1e-6


def test_filter_norm_projects_every_filter():
    model = energydsl.load(CONV_SPARSE.replace("normal(0.3)", "normal(3)"), data=image_data())
    norms = model.params["D"].detach().flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-6)


# ---------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("conv_t(D, z, padding = 1)", "conv_t(D, z)",
         "<spec>:10:18: sqerr() compares [1, 8, 8] with [1, 10, 10]: the shapes differ"),
        ("param D[4, 1, 3, 3]", "param D[5, 1, 3, 3]",
         "<spec>:10:27: conv_t(): the kernel has 5 maps, the value [4, 8, 8] has 4"),
        ("conv_t(D, z, padding = 1)", "conv_t(D, flatten(z), padding = 1)",
         "<spec>:10:37: conv_t() needs a per-sample image [channels, rows, cols], this is a per-sample [256] value"),
        ("param D[4, 1, 3, 3]", "param D[4, 9]",
         ("<spec>:7:42: 'filter_norm' needs a kernel [out, channels, kh, kw] (or a locally connected one), "
          "this parameter is [4, 9]")),
        ("filter_norm", "col_norm",
         ("<spec>:7:48: 'col_norm' needs a matrix, this parameter is [4, 1, 3, 3] "
          "(for the filters of a kernel, write filter_norm)")),
        ("padding = 1", "padding = 1, stride = 0",
         "<spec>:10:62: the stride must be at least 1, got 0"),
        ("latent z[4, 8, 8]", "latent z[256]",
         "<spec>:8:16: maps() needs code maps, e.g. 'latent z[16, 28, 28]'; 'z' is a vector"),
    ],
)
def test_shape_mistakes_are_located_spec_errors(old, new, message):
    assert old in CONV_SPARSE
    text = compile_error(CONV_SPARSE.replace(old, new))
    assert text.splitlines()[0].split(" (declare it")[0] == message


def test_a_latent_must_be_a_vector_or_code_maps():
    text = compile_error(CONV_SPARSE.replace("latent z[4, 8, 8]", "latent z[4, 64]"))
    assert text.splitlines()[0].startswith("<spec>:6:1: the latent is a vector, e.g. z[400], or code maps")


# ---------------------------------------------------------------- pools over code maps


def test_maps_pools_group_maps_at_each_position_and_windows_of_positions():
    family = maps("P", (4, 3, 3), 2)
    assert len(family.members) == 2 * 9 and family.layout() == "disjoint"
    assert family.members[0] == (0, 9)  # maps 0 and 1 at position (0, 0)
    assert family.members[9 + 4] == (2 * 9 + 4, 3 * 9 + 4)  # maps 2 and 3 at position (1, 1)
    windows = maps("Q", (2, 4, 4), 2, window=2)
    assert len(windows.members) == 4 and sorted(u for m in windows.members for u in m) == list(range(32))
    assert windows.members[1] == (2, 3, 6, 7, 18, 19, 22, 23)  # both maps, rows 0-1, columns 2-3


@pytest.mark.parametrize("layout", [(6, 5, 5), (6, 4, 4)], ids=["ragged", "tiling"])
def test_the_fast_block_proxes_equal_the_dense_one(monkeypatch, layout):
    family = maps("P", layout, 3, window=2)
    assert (family.tiling is not None) == (layout == (6, 4, 4))  # pools that tile the maps exactly
    plain = dataclasses.replace(family, tiling=None)
    v = torch.randn(7, family.size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tau = torch.rand(7, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dense = GroupNorms(plain).prox(v, tau, 0.05)
    assert torch.allclose(GroupNorms(family).prox(v, tau, 0.05), dense, atol=1e-14)
    assert torch.allclose(GroupNorms(family).norms(v), GroupNorms(plain).norms(v), atol=1e-14)
    monkeypatch.setattr("energydsl.ops.pools.DENSE_LEVEL_LIMIT", 0)
    indexed = GroupNorms(plain)
    assert indexed.levels[0].dtype == torch.long
    assert torch.allclose(indexed.prox(v, tau, 0.05), dense, atol=1e-14)


# ---------------------------------------------------------------- exact inference


def dense_decoder(D: torch.Tensor, padding: int, maps_shape) -> np.ndarray:
    """The matrix of z ↦ conv_t(D, z): its columns are the images of the unit vectors."""
    m = math.prod(maps_shape)
    units = torch.eye(m, dtype=torch.float64).reshape((m,) + tuple(maps_shape))
    return F.conv_transpose2d(units, D.double(), padding=padding).reshape(m, -1).T.numpy()


def dense_fista(A: np.ndarray, x: np.ndarray, lam: float, pools, iterations: int = 30000) -> np.ndarray:
    """min_z ½‖x − Az‖² + λ Σ‖z_P‖ subject to z ≥ 0, by FISTA on the dense matrix, in float64."""
    L = np.linalg.eigvalsh(A.T @ A)[-1]
    AtA, Atx = A.T @ A, A.T @ x
    index = np.array(pools)  # (pools, units per pool): these pools are disjoint and of one size
    z = y = np.zeros(A.shape[1])
    t = 1.0
    for _ in range(iterations):
        v = np.maximum(y - (AtA @ y - Atx) / L, 0)
        z_next = v.copy()
        norms = np.linalg.norm(v[index], axis=1, keepdims=True)
        z_next[index] = v[index] * np.maximum(0.0, 1 - lam / L / np.maximum(norms, 1e-300))
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = z_next + (t - 1) / t_next * (z_next - z)
        z, t = z_next, t_next
    return z


def dense_objective(A, x, lam, pools, z) -> float:
    return 0.5 * float(np.sum((x - A @ z) ** 2)) + lam * sum(np.linalg.norm(z[list(p)]) for p in pools)


@pytest.mark.slow
def test_convolutional_fista_matches_a_dense_solver(monkeypatch):
    # force the path that code maps take: no Gram matrix, the step from power iteration
    monkeypatch.setattr(stepsize, "DENSE_GRAM_MAX_UNITS", 0)
    model = energydsl.load(CONV_SPARSE, data=image_data()).double()
    monkeypatch.setattr(infer, "affine_gradient", None)  # would fail if called
    x = model.dataset.x_test[:3].double()
    z = model.infer(x)
    A = dense_decoder(model.params["D"].detach(), 1, (4, 8, 8))
    pools = model.program.pools["P"].members
    for sample in range(3):
        xs = x[sample].flatten().numpy()
        reference = dense_fista(A, xs, 0.05, pools)
        ours = dense_objective(A, xs, 0.05, pools, z[sample].numpy())
        best = dense_objective(A, xs, 0.05, pools, reference)
        assert abs(ours - best) <= 1e-5 * best
        assert float(model.energy(x[sample : sample + 1], z[sample : sample + 1]).detach()) == pytest.approx(ours, rel=1e-12)
    assert (z == 0).float().mean() > 0.3  # the pools zero out whole groups


def test_power_iteration_estimates_the_decoders_operator_norm(monkeypatch):
    monkeypatch.setattr(stepsize, "DENSE_GRAM_MAX_UNITS", 0)
    model = energydsl.load(CONV_SPARSE, data=image_data()).double()
    x = model.dataset.x_test.double()
    problem = model.problem(model.preprocess(x), None, None)
    A = dense_decoder(model.params["D"].detach(), 1, (4, 8, 8))
    exact = np.linalg.eigvalsh(A.T @ A)[-1]
    assert torch.allclose(problem.lipschitz, torch.full((8, 1), exact * infer.SAFETY, dtype=torch.float64),
                          rtol=1e-3)  # fmt: skip


def test_power_iteration_gives_each_sample_its_own_step_when_the_hessians_differ():
    generator = torch.Generator().manual_seed(5)
    A = torch.randn(30, 50, generator=generator, dtype=torch.float64)
    scales = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 4.0], dtype=torch.float64)  # sample b: H = s_b·AᵀA

    def smooth(z):
        return 0.5 * scales[: z.shape[0]] * ((z @ A.T) ** 2).sum(1)

    top = torch.linalg.eigvalsh(A.T @ A)[-1]
    z = torch.zeros(6, 50, dtype=torch.float64)
    L = stepsize.PowerIteration()(smooth, smooth, z)
    assert torch.allclose(L.squeeze(1), scales * top * infer.SAFETY, rtol=1e-6)

    def same(v):  # the same Hessian AᵀA for every sample: the iteration runs on a few of them
        return 0.5 * ((v @ A.T) ** 2).sum(1)

    seen = []
    shared = stepsize.PowerIteration()(same, lambda few: seen.append(few.shape[0]) or same(few), z)
    assert torch.allclose(shared, torch.full((6, 1), float(top * infer.SAFETY), dtype=torch.float64), rtol=1e-6)
    assert set(seen) == {stepsize.FEW_SAMPLES}


def test_a_resumed_code_map_run_is_bitwise_identical(tmp_path):
    """Code maps take FISTA's step from a power iteration warm-started across batches; the
    warm vector is part of the checkpoint, so Ctrl-C and resume change nothing."""
    import os
    import signal

    import safetensors.torch

    from energydsl.runs.checkpoint import MODEL_FILE
    from energydsl.training.loop import Interrupted

    spec = """
    model big_maps
    data mnist
    input x[1, 24, 24]
    latent z[8, 24, 24] >= 0
    param D[8, 1, 3, 3] init normal(0.3) constrain filter_norm <= 1
    energy
      recon  : 0.5 * sqerr(x, conv_t(D, z, padding = 1))
      sparse : 0.05 * l1(z)
    infer z by fista(steps = 20, tol = 0)
    train optimizer sgd(lr = 0.01) batch 8 epochs 2
    """
    data = image_data(count=48, shape=(1, 24, 24))
    assert stepsize.uses_power_iteration(energydsl.load(spec, data=data).program.latent)
    energydsl.train(energydsl.load(spec, data=data), out=tmp_path / "whole")

    def press_ctrl_c(metrics):
        if metrics["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled as a flag: the loop saves after the next step

    with pytest.raises(Interrupted):
        energydsl.train(energydsl.load(spec, data=data), out=tmp_path / "resumed", on_epoch=press_ctrl_c)
    energydsl.train(energydsl.load(spec, data=data), out=tmp_path / "resumed", resume=True)
    whole = safetensors.torch.load_file(str(tmp_path / "whole" / MODEL_FILE))
    resumed = safetensors.torch.load_file(str(tmp_path / "resumed" / MODEL_FILE))
    assert torch.equal(whole["D"], resumed["D"])
