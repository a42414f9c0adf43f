"""Stacking and export: a layer trained on the L2-pooled output of another run, and the
trained chain as a plain feature extractor (in Python and as TorchScript).

Two tiny convolutional layers on 8x8 images are trained once per module (a second or
two); every expectation is computed again by hand from the saved parameters with
plain torch operations.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import energydsl
from energydsl.cli import main
from energydsl.data import DataError, Description, describe_source, load_data
from energydsl.runs.stacking import ExportError

LAYER1 = """
model layer1
data file("images.npz")
input x[1, 8, 8]
label y
latent z[3, 8, 8] >= 0
param D[3, 1, 3, 3] init normal(0.3) constrain filter_norm <= 1
param E[3, 1, 3, 3] init 0.5 * D
param b[3] init 0.05
param g[3] init ones
pools P = maps(z, 3)
let p = g * relu(conv(E, x, padding = 1) - b)
encoder z = p
energy
  recon   : 0.5 * sqerr(x, conv_t(D, z, padding = 1))
  sparse  : 0.05 * group_l2(z, P)
  predict : sqerr(z, p)
infer z by encoder then fista(steps = 5)
train optimizer adam(lr = 0.01) batch 16 epochs 1
"""

LAYER2 = """
model layer2
data stacked("RUN", spec = "layer1.energy", pooling = 2)
input x
latent z[4, 4, 4] >= 0
param D[4, 3, 3, 3] init normal(0.3) constrain filter_norm <= 1
param E[4, 3, 3, 3] init 0.5 * D
param b[4] init 0.01
let p = relu(conv(E, x, padding = 1) - b)
encoder z = p
energy
  recon   : 0.5 * sqerr(x, conv_t(D, z, padding = 1))
  sparse  : 0.05 * l1(z)
  predict : sqerr(z, p)
infer z by encoder then fista(steps = 5)
train optimizer adam(lr = 0.01) batch 16 epochs 1
"""


def pooled(z: torch.Tensor) -> torch.Tensor:
    """√(Σ z²) over 2x2 windows, written out: (N, C, H, W) → (N, C, H/2, W/2)."""
    n, c, h, w = z.shape
    return (z * z).reshape(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5)).sqrt()


def encode(params: dict, x: torch.Tensor, scale: bool) -> torch.Tensor:
    """The specs' encoders by hand: g * relu(conv(E, x, padding = 1) - b)."""
    code = torch.relu(F.conv2d(x, params["E"], padding=1) - params["b"][:, None, None])
    return code * params["g"][:, None, None] if scale else code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    generator = np.random.default_rng(0)
    images = generator.random((60, 1, 8, 8)).astype(np.float32)
    np.savez(root / "images.npz", x=images, y=generator.integers(0, 3, 60))
    (root / "layer1.energy").write_text(LAYER1)
    (root / "layer2.energy").write_text(LAYER2.replace("RUN", str(root / "run1")))
    first = energydsl.load(str(root / "layer1.energy"))
    energydsl.train(first, out=root / "run1")
    second = energydsl.load(str(root / "layer2.energy"))
    energydsl.train(second, out=root / "run2")
    return root


def params_of(run) -> dict:
    return {name: p.detach() for name, p in energydsl.load_run(run).params.items()}


def test_stacked_data_is_the_pooled_encoder_output_of_the_first_run(runs):
    data = load_data("stacked", (str(runs / "run1"),), {"spec": "layer1.energy", "pooling": 2}, base_dir=runs)
    images = np.load(runs / "images.npz")
    x = torch.from_numpy(images["x"])
    train = x[np.arange(60) % 5 != 0]
    expected = pooled(encode(params_of(runs / "run1"), train, scale=True))
    assert data.x_train.shape == (48, 3, 4, 4)
    assert torch.allclose(data.x_train, expected, atol=1e-6)
    assert torch.equal(data.y_train, torch.from_numpy(images["y"][np.arange(60) % 5 != 0]))
    assert data.num_classes == 3


def test_export_of_the_second_run_is_the_whole_chain(runs):
    network = energydsl.export(runs / "run2")
    assert isinstance(network, torch.nn.Sequential)
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(1))  # raw samples, as the data gives them
    first, second = params_of(runs / "run1"), params_of(runs / "run2")
    layer1 = pooled(encode(first, x.reshape(5, 1, 8, 8), scale=True))
    expected = pooled(encode(second, layer1, scale=False)).flatten(1)  # (5, 4 * 2 * 2)
    with torch.no_grad():
        assert torch.allclose(network(x), expected, atol=1e-6)
        assert torch.allclose(energydsl.export(runs / "run1", runs / "run2")(x), expected, atol=1e-6)
        assert torch.allclose(energydsl.export(runs / "run1")(x), layer1.flatten(1), atol=1e-6)


def test_runs_must_be_listed_from_the_first_layer_up(runs):
    with pytest.raises(ExportError, match="is not stacked on"):
        energydsl.export(runs / "run2", runs / "run1")


def test_the_torchscript_file_runs_without_energydsl(runs, tmp_path, capsys):
    out = tmp_path / "features.pt"
    assert main(["export", str(runs / "run2"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys; sys.modules['energydsl'] = None\n"  # importing energydsl would fail
        "import numpy as np, torch\n"
        f"net = torch.jit.load({str(out)!r})\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, net(x).detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    with torch.no_grad():
        expected = energydsl.export(runs / "run2")(x).numpy()
    assert np.allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6)


def test_the_stacked_spec_checks_before_the_first_layer_is_trained(runs, tmp_path):
    source = LAYER2.replace("RUN", str(tmp_path / "not_trained_yet"))
    spec = runs / "layer2_later.energy"
    spec.write_text(source)
    program = energydsl.compile_program(str(spec))
    assert program.input.shape == (3, 4, 4) and program.sample_shape == (3, 4, 4)
    assert describe_source("stacked", (str(runs / "run1"),), {"pooling": 4}) == Description((3, 2, 2), 3)
    later = (str(tmp_path / "not_trained_yet"), "layer1.energy", 2)
    assert describe_source("stacked", later, base_dir=runs) == Description((3, 4, 4), 3)  # from the spec alone
    with pytest.raises(DataError) as info:
        energydsl.load(str(spec))
    assert str(info.value) == (
        f"data source 'stacked': run directory '{tmp_path / 'not_trained_yet'}' not found (relative to "
        f"{Path.cwd()}); train the first layer with 'energydsl run {(runs / 'layer1.energy').resolve()}'"
    )


def test_a_run_without_an_encoder_cannot_be_exported(tmp_path):
    spec = tmp_path / "fista_only.energy"
    spec.write_text(LAYER1.replace("encoder z = p\n", "").replace("by encoder then fista", "by fista"))
    np.savez(tmp_path / "images.npz", x=np.random.default_rng(1).random((20, 1, 8, 8)).astype(np.float32),
             y=np.zeros(20, dtype=np.int64))  # fmt: skip
    model = energydsl.load(str(spec))
    energydsl.train(model, out=tmp_path / "run")
    with pytest.raises(ExportError, match="run of spec 'layer1' has no encoder to export or stack on"):
        energydsl.export(tmp_path / "run")


VECTOR = """
model vector
data file("images.npz")
input x[64]
latent z[10] >= 0
param D[64, 10] init normal(0.3) constrain col_norm <= 1
param E[10, 64] init 0.5 * D.T
encoder z = relu(E @ x)
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : 0.05 * l1(z)
infer z by encoder
train optimizer adam(lr = 0.01) batch 16 epochs 1
"""


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """A DrSAE-like run with a vector latent (an encoder, no code maps), trained one epoch."""
    root = tmp_path_factory.mktemp("vector")
    np.savez(root / "images.npz", x=np.random.default_rng(2).random((40, 64)).astype(np.float32))
    (root / "vector.energy").write_text(VECTOR)
    energydsl.train(energydsl.load(str(root / "vector.energy")), out=root / "run")
    return root / "run"


def test_export_of_a_vector_latent_does_not_pool_by_default(vector_run):
    network = energydsl.export(vector_run)
    run = energydsl.load_run(vector_run)
    x = torch.rand(5, 64)
    with torch.no_grad():
        expected = torch.relu(x @ run.params["E"].T)
        assert torch.allclose(network(x), expected, atol=1e-6)
    with pytest.raises(ExportError, match="L2 pooling needs code maps, this latent is a vector; use pool = 1"):
        energydsl.export(vector_run, pool=2)  # asked for explicitly: still refused


def test_cli_export_of_a_vector_latent(vector_run, tmp_path, capsys):
    assert main(["export", str(vector_run), "-o", str(tmp_path / "features.pt")]) == 0
    assert "raw samples [64]" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "features.pt"))
    assert scripted(torch.rand(3, 64)).shape == (3, 10)
