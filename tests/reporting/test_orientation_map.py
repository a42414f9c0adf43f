"""The orientation maps of a run: found on a decoder laid out on a map and on a locally connected
kernel, measured into the summary's figures, and drawn as orientation.png.

The filters are Gabors whose orientations are set by hand from maps with known pinwheels
(tests/ops/test_orientation.py checks the counter itself).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import energydsl
from energydsl.data import Dataset
from energydsl.ops.orientation import wrap
from energydsl.reporting.analysis import run_metrics
from energydsl.reporting.orientation_map import orientation_maps
from energydsl.reporting.report import write_report
from energydsl.reporting.viz import write_pictures

TOPOGRAPHIC = """
data mnist
input x[64]
latent z[36]
graph M = torus(6, 6)
param W[64, 36]
energy
  recon : 0.5 * sqerr(x, W @ z)
infer z by fista(steps = 10)
"""

LOCAL = """
data mnist
input x[1, 8, 8]
latent z[2, 4, 4]
param D[2, 4, 4, 1, 5, 5]
energy
  recon : 0.5 * sqerr(x, local_t(D, z))
infer z by fista(steps = 10)
"""


def load(spec: str, shape: tuple[int, ...]) -> energydsl.EnergyModel:
    x = torch.rand((16, *shape), generator=torch.Generator().manual_seed(0))
    return energydsl.load(spec, data=Dataset("noise", x[:12], x[12:], None, None, None))


def gabors(theta: np.ndarray, size: int) -> np.ndarray:
    """One Gabor per orientation in ``theta`` (stripes at θ, x along columns, y up the rows), ``(n, size, size)``."""
    r, c = np.mgrid[0:size, 0:size]
    x, y = c - (size - 1) / 2, (size - 1) / 2 - r
    alpha = theta.ravel()[:, None, None] - math.pi / 2  # the wave vector, across the stripes
    along = x * np.cos(alpha) + y * np.sin(alpha)
    return np.exp(-(x**2 + y**2) / (2 * (size / 5) ** 2)) * np.cos(2 * math.pi * 0.2 * along)


def lattice(n: int) -> np.ndarray:
    """θ = ½ arg(cos(2πx/n) + i cos(2πy/n)) on an n × n torus: 4 pinwheels, at x, y = n/4 and 3n/4 − ½ … ."""
    r, c = np.mgrid[0:n, 0:n]
    return np.mod(np.angle(np.cos(2 * math.pi * c / n) + 1j * np.cos(2 * math.pi * r / n)) / 2, math.pi)


def test_a_decoder_on_a_torus_gives_its_orientation_map_and_pinwheels(tmp_path):
    model = load(TOPOGRAPHIC, (64,))
    designed = lattice(6)
    with torch.no_grad():
        model.params["W"].copy_(torch.from_numpy(gabors(designed, 8).reshape(36, 64).T))
    (found,) = orientation_maps(model)["M"]
    assert found.periodic and found.theta.shape == (6, 6)
    assert np.degrees(np.abs(wrap(found.theta - designed, math.pi))).max() < 1.0
    metrics = run_metrics(model, torch.zeros(4, 36))
    assert metrics["M.pinwheels"] == 4 and metrics["M.pinwheel_charge"] == 0
    assert metrics["M.orientation_period"] == pytest.approx(6, rel=0.02)
    assert metrics["M.pinwheel_density"] == pytest.approx(4 * metrics["M.orientation_period"] ** 2 / 36)
    assert 0.5 < metrics["M.orientation_smoothness"] < 1 and metrics["M.orientation_selectivity"] > 0.7
    assert "M.neighbour_cosine_ratio" in metrics  # beside the map's other figure


def test_a_locally_connected_kernel_gives_one_map_per_feature_map(tmp_path):
    model = load(LOCAL, (1, 8, 8))
    r, c = np.mgrid[0:4, 0:4]
    pinwheel = np.mod(np.arctan2(-(r - 1.5), c - 1.5) / 2, math.pi)  # +½ in plaquette (1, 1)
    smooth = np.full((4, 4), 0.3) + 0.05 * c
    kernel = np.stack([gabors(theta, 5).reshape(4, 4, 1, 5, 5) for theta in (pinwheel, smooth)])
    with torch.no_grad():
        model.params["D"].copy_(torch.from_numpy(kernel))
    maps = orientation_maps(model)["D"]
    assert [m.measured.count for m in maps] == [1, 0] and not any(m.periodic for m in maps)
    assert maps[0].measured.windings[1, 1] == 1
    metrics = run_metrics(model, torch.zeros(4, 32))
    assert (metrics["D.pinwheels"], metrics["D.pinwheel_charge"]) == (1, 0.5)
    period = np.mean([m.measured.period for m in maps])
    assert metrics["D.pinwheel_density"] == pytest.approx(period**2 / 18, rel=1e-5)  # 2 maps of 3 × 3 plaquettes

    written = write_pictures(model, tmp_path)
    assert tmp_path / "orientation.png" in written
    from matplotlib.image import imread

    image = imread(tmp_path / "orientation.png", format="png")
    assert image.shape[0] > 100 and image[..., :3].std() > 0.05
    page = write_report(tmp_path, {"spec": "s", **metrics}, [], written, "").read_text()
    assert "orientation.png</b>: Orientation map" in page and "<td>D.pinwheels</td><td>1</td>" in page


def test_a_map_of_unpictured_columns_has_no_orientation_map():
    spec = TOPOGRAPHIC.replace("input x[64]", "input x[60]").replace("W[64, 36]", "W[60, 36]")  # 60: not a square
    model = load(spec, (60,))
    assert orientation_maps(model) == {}
    assert not any("pinwheel" in key for key in run_metrics(model, torch.zeros(4, 36)))
